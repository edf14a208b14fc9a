"""Shadow mode: a candidate model runs beside the active one on live inputs.

For a rollout with the ``shadow`` strategy the control plane sends ``shadow_start``;
the installer verifies and smoke-tests the bundle exactly as for an install, but
unpacks it into ``<data_dir>/shadow`` and hands it here instead of switching to it.
Clients keep getting the active model's answers. Each request's inputs and the
active model's outputs go on a bounded queue (a full queue drops the request and
counts it, never waits); a background thread runs the shadow model on them and
compares top-1 classes. Every telemetry window becomes one ``shadow`` event: how
many inputs were compared, the agreement, the shadow model's errors and latency.
``shadow_stop`` (the rollout ended, aborted or was rolled back) discards it.

An A/B experiment in ``requests`` mode delivers its arm B the same way, with a
``split`` (experiment id and arm B's share) in the command: the shadow is then a
*challenger* that answers that share of the model's requests itself
(``edgefleet.agent.inference.split``) instead of being compared off the request path.
A later ``shadow_start`` for the same bundle only moves the share (bandit mode).
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgefleet.agent.inference.runtime import ActiveModel
from edgefleet.agent.inference.split import RequestSplit
from edgefleet.agent.telemetry.counters import INFERENCE_PRIORITY, LatencyWindow
from edgefleet.messages import TelemetryEvent
from edgefleet.tensors import top1_classes

logger = logging.getLogger(__name__)

SHADOW_DIR = "shadow"
MAX_QUEUED = 256
"""Requests waiting for the shadow model; beyond this they are dropped and counted."""


def _shadow_dir(data_dir: Path) -> Path:
    return Path(data_dir) / SHADOW_DIR


@dataclass
class ShadowWindow:
    """Comparisons since the last telemetry window."""

    compared: int = 0
    agreed: int = 0
    dropped: int = 0
    latency: LatencyWindow = field(default_factory=LatencyWindow)


class ShadowRunner:
    """Holds the shadow model and compares it with the active one, off the request path."""

    def __init__(
        self,
        data_dir: Path,
        publish: Callable[[TelemetryEvent], None],
        split: RequestSplit | None = None,
    ) -> None:
        self.directory = _shadow_dir(data_dir)
        self._publish = publish
        self.split = split
        self._challenger = False
        self._lock = threading.Lock()
        self._model: ActiveModel | None = None
        self._rollout_id: int | None = None
        self._window = ShadowWindow()
        self._queue: queue.Queue[tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None] = (
            queue.Queue(MAX_QUEUED)
        )
        self._thread: threading.Thread | None = None

    @property
    def bundle_id(self) -> str | None:
        """The bundle being shadowed, or None."""
        model = self._model
        return model.bundle_id if model else None

    @property
    def challenger(self) -> bool:
        """Whether the shadow answers a share of requests (an experiment's arm B)."""
        return self._challenger

    def start(
        self,
        model: ActiveModel,
        *,
        rollout_id: int | None,
        split: tuple[int, float] | None = None,
    ) -> None:
        """Shadow ``model`` from now on (replacing any earlier shadow).

        Args:
            model: the loaded, smoke-tested shadow model.
            rollout_id: the rollout that delivered it.
            split: (experiment id, arm B's share): make it the challenger of an
                experiment in ``requests`` mode instead of comparing it.
        """
        previous_challenger = self._challenger
        with self._lock:
            self._model, self._rollout_id = model, rollout_id
            self._window = ShadowWindow()
            self._challenger = split is not None and self.split is not None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)
                self._thread.start()
        if self.split is not None:
            if split is not None:
                self.split.start(model, share=split[1], experiment_id=split[0])
            elif previous_challenger:
                self.split.stop()
        logger.info(
            "shadowing bundle_id=%s rollout_id=%s challenger=%s",
            model.bundle_id,
            rollout_id,
            self._challenger,
        )

    def set_split(self, experiment_id: int, share: float) -> None:
        """Make the running shadow the challenger, or move its share (bandit mode)."""
        model = self._model
        if model is None or self.split is None:
            return
        if self._challenger:
            self.split.set_share(share, experiment_id)
            return
        self.split.start(model, share=share, experiment_id=experiment_id)
        self._challenger = True

    def stop(self, reason: str) -> None:
        """Publish the last window, then discard the shadow model and its files."""
        with self._lock:
            model, self._model = self._model, None
            challenger, self._challenger = self._challenger, False
        if model is None:
            return
        if challenger and self.split is not None:
            self.split.stop()  # waits until no request runs on it: then its files may go
        self.flush(window_s=0.0, model=model)
        shutil.rmtree(self.directory, ignore_errors=True)
        logger.info("shadow stopped bundle_id=%s reason=%s", model.bundle_id, reason)

    def close(self) -> None:
        """Stop the comparison thread (agent shutdown)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None

    def observe(
        self, active: ActiveModel, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        """Request path: queue the inputs and the active model's answer, never wait."""
        shadow = self._model
        if shadow is None or active.name != shadow.name or active.bundle_id == shadow.bundle_id:
            return
        if self._challenger:
            return  # it answers requests itself: its own windows count it
        try:
            self._queue.put_nowait((feeds, outputs))
        except queue.Full:
            with self._lock:
                self._window.dropped += 1

    def flush(self, window_s: float, *, model: ActiveModel | None = None) -> None:
        """Publish the window so far as a ``shadow`` event (nothing when it is empty).

        Args:
            window_s: the window's length in seconds, as reported (0 for the last,
                partial window).
            model: the shadow model the window belongs to; default the current one
                (``stop`` passes the one it has just let go).
        """
        with self._lock:
            model = model or self._model
            window, self._window = self._window, ShadowWindow()
            rollout_id = self._rollout_id
        if model is None or (window.compared == 0 and window.dropped == 0):
            return
        latency = window.latency
        event = TelemetryEvent(
            kind="shadow",
            priority=INFERENCE_PRIORITY,
            bundle_id=model.bundle_id,
            release=model.release,
            data={
                "bundle_id": model.bundle_id,
                "rollout_id": rollout_id,
                "window_s": window_s,
                "count": window.compared,
                "agreement": window.agreed / window.compared if window.compared else None,
                "errors": latency.errors,
                "dropped": window.dropped,
                "latency_ms": latency.to_data(window_s)["latency_ms"],
            },
        )
        self._publish(event)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            shadow = self._model
            if shadow is None:
                continue
            self._compare(shadow, *item)

    def _compare(
        self, shadow: ActiveModel, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        started = time.perf_counter()
        try:
            shadow_classes = top1_classes(shadow.runtime.infer(feeds))
            ok = True
        except Exception as e:  # the shadow model's own failure is what we measure
            logger.warning("shadow inference failed bundle_id=%s error=%s", shadow.bundle_id, e)
            shadow_classes, ok = None, False
        latency_ms = (time.perf_counter() - started) * 1000.0
        rows = len(next(iter(feeds.values())))
        agreed = 0
        if shadow_classes is not None:
            try:
                agreed = int(np.sum(shadow_classes == top1_classes(outputs)))
            except ValueError:
                agreed = 0
        with self._lock:
            if self._model is not shadow:
                return  # stopped or replaced while this ran
            window = self._window
            window.latency.add(latency_ms, ok)
            window.compared += rows if ok else 0
            window.agreed += agreed
