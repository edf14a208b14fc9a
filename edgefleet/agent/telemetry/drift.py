"""Drift detection on the device, kept off the inference path.

The inference path only puts its input batch on a bounded queue (a dropped batch
is counted, never waited for); a background thread feeds the detector and
publishes one ``drift`` telemetry event per full window through the spool.
Memory stays bounded: the queue holds at most ``max_queued_rows`` rows and the
detector one count per reference bin per feature.

When the bundle's reference holds the model's outputs on the holdout, the monitor also
counts the model's answers (predicted classes, or the first score) and each window
reports them apart from the inputs (``output`` in the ``drift`` event).

Ground truth (``edgefleet.agent.inference.feedback``): labels joined to the answers
they correct reach the monitor serving that bundle (``observe_labels``); each window's
``drift`` event carries the accuracy of the labels that arrived during it
(``accuracy``: ``labelled``, ``correct``, ``value``), so drift is read beside accuracy.

Field samples, optional and off by default (``[drift] sample_size``): a capped
reservoir sample (Algorithm R, uniform over every row seen) of the inputs and the
model's top-1 answers since the previous window, sent as a ``sample`` event of the
lowest priority only when that window drifted (inputs or outputs), together with the
rows labelled during the window (sent from any window: labels are rare and what a
retraining learns most from). A per-device byte budget per UTC day
(``[drift] sample_budget_kib_per_day``, ``edgefleet.agent.telemetry.budget``) caps
them: labelled rows go first, and rows past the budget are withheld and counted in
the event (``withheld_rows``); nothing is queued for the next day. The control plane
keeps them per model version (``edgefleet.control_plane.services.field_data``).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.errors import AgentError, SlotError
from edgefleet.agent.inference.feedback import LabelledAnswer
from edgefleet.agent.inference.runtime import ActiveModel
from edgefleet.agent.install.slots import SlotStore, read_slot_manifest
from edgefleet.agent.telemetry.budget import ByteBudget
from edgefleet.bundle import BundleError, Manifest
from edgefleet.drift import DriftDetector, DriftReport, DriftThresholds, OutputKind, Reference
from edgefleet.messages import TelemetryEvent, TelemetryKind
from edgefleet.tensors import top1_classes

logger = logging.getLogger(__name__)

DRIFT_PRIORITY = 1
SAMPLE_PRIORITY = 3  # dropped first when the spool is full


class Reservoir:
    """A uniform sample of at most ``size`` (input row, answer) pairs of all offered."""

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self.seen = 0
        self._rows: list[tuple[np.ndarray, int | None]] = []
        self._random = random.Random(seed)

    def offer(self, inputs: np.ndarray, answers: np.ndarray | None) -> None:
        for i, row in enumerate(inputs):
            self.seen += 1
            answer = None if answers is None else int(answers[i])
            if len(self._rows) < self.size:
                self._rows.append((row, answer))
            else:
                j = self._random.randrange(self.seen)
                if j < self.size:
                    self._rows[j] = (row, answer)

    def take(self) -> tuple[list[tuple[np.ndarray, int | None]], int]:
        """The sample and how many rows it was drawn from; starts afresh."""
        rows, seen = self._rows, self.seen
        self._rows, self.seen = [], 0
        return rows, seen


@dataclass
class Labels:
    """Labels joined during one window: counts, and labelled rows kept for the sample."""

    labelled: int = 0
    correct: int = 0
    rows: list[tuple[np.ndarray, int, int]] | None = None  # (input row, answer, label)

    def accuracy(self) -> dict[str, Any]:
        value = self.correct / self.labelled if self.labelled else None
        return {"labelled": self.labelled, "correct": self.correct, "value": value}


def _row_bytes(row: list[float], answer: int | None, label: int | None) -> int:
    """What one row adds to a ``sample`` event's JSON at most (with its separators)."""
    return len(json.dumps(row)) + len(json.dumps(answer)) + len(json.dumps(label)) + 6


def fit_sample(
    labelled: list[tuple[np.ndarray, int, int]],
    drawn: list[tuple[np.ndarray, int | None]],
    budget: int,
) -> tuple[list[list[float]], list[int | None], list[int | None], int]:
    """The rows of a sample that fit ``budget`` bytes, labelled rows first.

    Returns the inputs, answers and labels (None for unlabelled rows) kept, and how many
    rows were withheld for want of budget.
    """
    inputs: list[list[float]] = []
    answers: list[int | None] = []
    labels: list[int | None] = []
    spent = 0
    offered: list[tuple[np.ndarray, int | None, int | None]] = [
        (row, answer, label) for row, answer, label in labelled
    ]
    offered += [(row, answer, None) for row, answer in drawn]
    for index, (row, answer, label) in enumerate(offered):
        values = np.round(row.astype(np.float64), 6).tolist()
        cost = _row_bytes(values, answer, label)
        if spent + cost > budget:
            return inputs, answers, labels, len(offered) - index
        spent += cost
        inputs.append(values)
        answers.append(answer)
        labels.append(label)
    return inputs, answers, labels, 0


class DriftMonitor:
    """Scores the inputs of one installed bundle against the bundle's reference."""

    def __init__(
        self,
        *,
        reference: Reference,
        manifest: Manifest,
        publish: Callable[[TelemetryEvent], None],
        thresholds: DriftThresholds | None = None,
        max_queued_rows: int = 10_000,
        sample_size: int = 0,
        budget: ByteBudget | None = None,
    ) -> None:
        self._detector = DriftDetector(reference, thresholds)
        self._manifest = manifest
        self._publish = publish
        self._reservoir = Reservoir(sample_size) if sample_size > 0 else None
        self._sample_size = sample_size
        self._budget = budget
        self._labels = Labels(rows=[])
        self._labels_lock = threading.Lock()
        self._queue: queue.Queue[tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None] = (
            queue.Queue()
        )
        self._queued_rows = 0
        self._max_queued_rows = max_queued_rows
        self._lock = threading.Lock()
        self.dropped_rows = 0
        self.reports = 0
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)

    @classmethod
    def for_slot(
        cls,
        manifest: Manifest,
        slot_dir: Path,
        publish: Callable[[TelemetryEvent], None],
        thresholds: DriftThresholds | None = None,
        sample_size: int = 0,
        budget: ByteBudget | None = None,
    ) -> DriftMonitor | None:
        """A monitor for an installed slot, or None when its bundle ships no reference."""
        if not manifest.reference_stats:
            return None
        try:
            data = json.loads((Path(slot_dir) / manifest.reference_stats).read_text())
            reference = Reference.from_json(data)
        except (OSError, ValueError, KeyError, TypeError) as e:
            logger.error("drift reference unusable bundle_id=%s reason=%s", manifest.bundle_id, e)
            return None
        return cls(
            reference=reference,
            manifest=manifest,
            publish=publish,
            thresholds=thresholds,
            sample_size=sample_size,
            budget=budget,
        )

    @property
    def bundle_id(self) -> str:
        return self._manifest.bundle_id

    @property
    def sampling(self) -> bool:
        return self._reservoir is not None

    @property
    def input_name(self) -> str:
        return self._detector.reference.input_name

    @property
    def output_kind(self) -> OutputKind | None:
        """What of the model's answers the reference holds (None: output drift is off)."""
        outputs = self._detector.reference.outputs
        return None if outputs is None else outputs.kind

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(
        self,
        inputs: np.ndarray,
        answers: np.ndarray | None = None,
        scored_outputs: np.ndarray | None = None,
    ) -> None:
        """Queue a batch for scoring; drops it (counted) when the queue is full.

        Args:
            inputs: The batch, [n, features].
            answers: Its top-1 answers, for the sample (when sampling).
            scored_outputs: The answers output drift counts (see ``output_kind``).
        """
        rows = len(inputs)
        with self._lock:
            if self._queued_rows + rows > self._max_queued_rows:
                self.dropped_rows += rows
                return
            self._queued_rows += rows
        self._queue.put((np.array(inputs, copy=True), answers, scored_outputs))

    def observe_labels(self, labelled: LabelledAnswer) -> None:
        """Count a joined label for the open window (any thread; a lock, no queue)."""
        rows = labelled.feeds.get(self.input_name)
        with self._labels_lock:
            self._labels.labelled += len(labelled.labels)
            self._labels.correct += labelled.correct
            kept = self._labels.rows
            if self._reservoir is None or kept is None or rows is None or rows.ndim != 2:
                return
            for row, answer, label in zip(rows, labelled.predicted, labelled.labels, strict=False):
                if len(kept) >= self._sample_size:
                    break
                kept.append((np.array(row, copy=True), int(answer), int(label)))

    def _take_labels(self) -> Labels:
        with self._labels_lock:
            labels, self._labels = self._labels, Labels(rows=[])
        return labels

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch, answers, scored_outputs = item
            with self._lock:
                self._queued_rows -= len(batch)
            try:
                if self._reservoir is not None:
                    self._reservoir.offer(batch, answers)
                for report in self._detector.observe(batch, scored_outputs):
                    labels = self._take_labels()
                    self._emit(report, labels)
                    self._emit_sample(report, labels)
            except Exception:  # top of the monitor loop: bad input must not stop it
                logger.exception("drift scoring failed bundle_id=%s", self._manifest.bundle_id)

    def _emit(self, report: DriftReport, labels: Labels) -> None:
        self.reports += 1
        data = {
            **report.to_data(),
            "accuracy": labels.accuracy(),
            "model": self._manifest.model.name,
            "model_version": self._manifest.model.version,
            "input": self.input_name,
            "dropped_rows": self.dropped_rows,
        }
        logger.info(
            "drift window bundle_id=%s drifted=%s share=%.3f reasons=%s output_drifted=%s",
            self._manifest.bundle_id,
            report.drifted,
            report.share_drifted,
            ",".join(report.reasons) or "-",
            None if report.output is None else report.output.drifted,
        )
        self._publish(self._event("drift", DRIFT_PRIORITY, data))

    def _emit_sample(self, report: DriftReport, labels: Labels) -> None:
        """The window's field sample: its reservoir when the window drifted, and the
        rows labelled during it, cut to the day's byte budget (labelled rows first)."""
        if self._reservoir is None:
            return
        drawn, seen = self._reservoir.take()
        drifted = report.drifted or (report.output is not None and report.output.drifted)
        if not drifted:
            drawn = []
        labelled = labels.rows or []
        if not drawn and not labelled:
            return
        data: dict[str, Any] = {
            "model": self._manifest.model.name,
            "model_version": self._manifest.model.version,
            "input": self.input_name,
            "drawn_from": seen if drifted else 0,
            "drifted": drifted,
            "reasons": list(report.reasons),
            "withheld_rows": 0,
        }
        # The budget pays for the whole event: what is left after its envelope is for rows.
        envelope = len(json.dumps(data)) + 64
        budget = self._budget.remaining() - envelope if self._budget is not None else 2**62
        inputs, answers, truths, withheld = fit_sample(labelled, drawn, max(budget, 0))
        data.update(inputs=inputs, outputs=answers, labels=truths, withheld_rows=withheld)
        if withheld:
            logger.warning(
                "field sample cut at the daily budget bundle_id=%s withheld_rows=%d",
                self._manifest.bundle_id,
                withheld,
            )
        if not inputs:
            data["budget_exhausted"] = True
        encoded = len(json.dumps(data))
        if self._budget is not None and inputs:
            self._budget.spend(encoded)
        self._publish(self._event("sample", SAMPLE_PRIORITY, data))

    def _event(self, kind: TelemetryKind, priority: int, data: dict[str, Any]) -> TelemetryEvent:
        """A telemetry event about this monitor's bundle."""
        return TelemetryEvent(
            kind=kind,
            priority=priority,
            bundle_id=self._manifest.bundle_id,
            release=self._manifest.release,
            data=data,
        )


def scored_outputs(outputs: dict[str, np.ndarray], kind: OutputKind) -> np.ndarray | None:
    """What output drift counts of one answer: the predicted class of each row, or the
    first value of the first float output; None when the outputs hold neither."""
    if kind == "classes":
        try:
            return top1_classes(outputs)
        except ValueError:
            return None
    for value in outputs.values():
        if np.issubdtype(value.dtype, np.floating) and value.ndim >= 1 and len(value):
            return value.reshape(len(value), -1)[:, 0]
    return None


class DriftSupervisor:
    """Keeps one ``DriftMonitor`` per hosted model, for whichever bundle of it is serving.

    The monitor of a newly active bundle is built on its first input, from the
    reference its slot holds; that model's old monitor is stopped then. Models hosted
    side by side each keep their own monitor.
    """

    def __init__(
        self,
        slots: SlotStore | Callable[[str], SlotStore],
        publish: Callable[[TelemetryEvent], None],
        thresholds: DriftThresholds | None = None,
        sample_size: int = 0,
        budget: ByteBudget | None = None,
    ) -> None:
        self._slots_for: Callable[[str], SlotStore] = (
            (lambda _name: slots) if isinstance(slots, SlotStore) else slots
        )
        self._publish = publish
        self._thresholds = thresholds
        self._sample_size = sample_size
        self._budget = budget
        self.unmatched_labels = 0
        self._lock = threading.Lock()
        self._monitors: dict[str, tuple[str, DriftMonitor | None]] = {}

    def observe(
        self,
        model: ActiveModel,
        feeds: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Pass one request's inputs (and answers, when sampling) to the model's monitor."""
        monitor = self._monitor_for(model.name, model.bundle_id)
        if monitor is None:
            return
        inputs = feeds.get(monitor.input_name)
        if inputs is None or inputs.ndim != 2:
            return
        answers = None
        if monitor.sampling and outputs is not None:
            try:
                answers = top1_classes(outputs)
            except ValueError:
                answers = None
        scored = None
        if monitor.output_kind is not None and outputs is not None:
            scored = scored_outputs(outputs, monitor.output_kind)
        monitor.submit(inputs, answers, scored)

    def reconfigure(self, thresholds: DriftThresholds | None, sample_size: int) -> None:
        """New window rule and sample size (remote configuration): each model's serving
        bundle's monitor is rebuilt with them on its next input, its open window dropped."""
        with self._lock:
            self._thresholds, self._sample_size = thresholds, sample_size
            # No bundle matches "": the next observe stops the old monitor, builds anew.
            self._monitors = {name: ("", m) for name, (_b, m) in self._monitors.items()}

    def observe_labels(self, labelled: LabelledAnswer) -> None:
        """A joined label, for the monitor of the bundle that gave the answer (its
        model's); a label for a bundle no longer serving is dropped (counted): its
        window is gone."""
        with self._lock:  # never switches monitors: the answer's bundle already has one
            known = self._monitors.get(labelled.model)
            monitor = known[1] if known is not None and known[0] == labelled.bundle_id else None
        if monitor is None:
            self.unmatched_labels += 1
            return
        monitor.observe_labels(labelled)

    def _monitor_for(self, name: str, bundle_id: str) -> DriftMonitor | None:
        with self._lock:
            known = self._monitors.get(name)
            if known is not None and known[0] == bundle_id:
                return known[1]
            if known is not None and known[1] is not None:
                known[1].stop()
            self._monitors[name] = (bundle_id, None)
            try:
                slots = self._slots_for(name)
                record = slots.read_active()
                if record is None or record.bundle_id != bundle_id:
                    return None
                slot_dir = slots.slot_dir(record.slot)
                manifest = read_slot_manifest(slot_dir)
            except (SlotError, BundleError, OSError, AgentError) as e:
                logger.error("no drift monitor bundle_id=%s reason=%s", bundle_id, e)
                return None
            monitor = DriftMonitor.for_slot(
                manifest,
                slot_dir,
                self._publish,
                self._thresholds,
                self._sample_size,
                self._budget,
            )
            if monitor is not None:
                monitor.start()
                logger.info("drift monitor started bundle_id=%s", bundle_id)
            self._monitors[name] = (bundle_id, monitor)
            return monitor

    def stop(self) -> None:
        with self._lock:
            for _bundle_id, monitor in self._monitors.values():
                if monitor is not None:
                    monitor.stop()
            self._monitors = {}
