"""The request split of an A/B experiment: a challenger answers a share of a model's requests.

An experiment in ``requests`` mode compares two bundles on the same devices, under the
same traffic, instead of on two halves of a cohort (where a difference between the
devices is mixed into the difference between the models). The control plane delivers
arm B as a shadow (``shadow_start``: signed, verified, smoke-tested and loaded beside the
active model, ``edgefleet.agent.install.shadow``) and names the experiment and arm B's
share in the command's ``split`` argument; the shadow runner then hands the model here
as the *challenger* instead of comparing it off the request path.

Which arm answers a request is decided by its id (the client's ``id``, or the fresh one
the endpoint gives it): ``sha256("<experiment id>:<request id>")`` read as a fraction
below ``share`` is arm B. So a client that retries with the same id gets the same arm,
the split is exact in the long run without any state, and anyone can recompute it. Arm A
is the active model, which stays active: the challenger never touches the slots.

Every answer says which arm served it (``parameters``: ``arm``, ``bundle_id``,
``experiment_id``). The request runs on the chosen model, so the endpoint's telemetry
windows (one per bundle) count each arm's requests, errors and latency apart; an outcome
or a label posted later with the answer's ``id`` is counted for the bundle that served
it (``served_by``, from a bounded book of recent answers).

The challenger is held in a ``ModelHolder`` like any served model: a request counts it
in flight, and ``stop`` waits until the last request on it is answered before the shadow
runner deletes its files.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder

logger = logging.getLogger(__name__)

MAX_REMEMBERED = 8192
"""Answers whose arm is remembered for outcomes posted later (the oldest are forgotten)."""


def check_share(value: Any) -> float:
    """Arm B's share as a float in [0, 1].

    Raises:
        ValueError: not a finite number in [0, 1] (booleans are not numbers here).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"split share must be a number, not {type(value).__name__}")
    share = float(value)
    if not math.isfinite(share) or not 0.0 <= share <= 1.0:
        raise ValueError(f"split share must be within [0, 1], not {share}")
    return share


def request_fraction(experiment_id: int, request_id: str) -> float:
    """Where a request falls in [0, 1) for the experiment: its first 8 hash bytes."""
    digest = hashlib.sha256(f"{experiment_id}:{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class RequestSplit:
    """The challenger of one model and arm B's share of that model's requests."""

    def __init__(self, max_remembered: int = MAX_REMEMBERED) -> None:
        self.holder = ModelHolder()
        self._lock = threading.Lock()
        self._share = 0.0
        self._experiment_id = 0
        self._served: OrderedDict[str, str] = OrderedDict()  # request id -> bundle id
        self._max_remembered = max_remembered
        self._compatible: dict[tuple[str, str], bool] = {}

    @property
    def share(self) -> float:
        return self._share

    @property
    def experiment_id(self) -> int:
        return self._experiment_id

    def challenger(self) -> ActiveModel | None:
        """The model answering arm B's requests, or None."""
        return self.holder.current()

    def start(self, model: ActiveModel, *, share: float, experiment_id: int) -> None:
        """Answer ``share`` of ``model.name``'s requests with ``model`` from now on."""
        with self._lock:
            self._share, self._experiment_id = check_share(share), experiment_id
            self._served.clear()
        previous = self.holder.swap(model)
        self.holder.drain(previous)
        logger.info(
            "challenger serving bundle_id=%s share=%.3f experiment_id=%d",
            model.bundle_id,
            share,
            experiment_id,
        )

    def set_share(self, share: float, experiment_id: int) -> None:
        """Move arm B's share (bandit mode) without touching the challenger."""
        with self._lock:
            self._share, self._experiment_id = check_share(share), experiment_id
        logger.info("challenger share=%.3f experiment_id=%d", share, experiment_id)

    def stop(self) -> ActiveModel | None:
        """Stop answering with the challenger; returns once no request runs on it."""
        previous = self.holder.swap(None)
        if not self.holder.drain(previous):
            logger.warning("challenger still busy after the drain timeout")
        with self._lock:
            self._share = 0.0
        return previous

    def arm_of(self, request_id: str) -> str:
        """``"B"`` when the request falls within arm B's share, else ``"A"``."""
        return "B" if request_fraction(self._experiment_id, request_id) < self._share else "A"

    @contextmanager
    def serve(
        self, active: ActiveModel, request_id: str
    ) -> Iterator[tuple[ActiveModel, dict[str, Any] | None]]:
        """The model that answers ``request_id`` and the parameters the answer carries.

        Without a challenger for ``active``'s model (or with one whose inputs differ from
        the active model's), the active model and None. The challenger is counted in
        flight until the block ends.
        """
        with self.holder.serve() as challenger:
            if challenger is None or not self._pairs(active, challenger):
                yield active, None
                return
            arm = self.arm_of(request_id)
            served = challenger if arm == "B" else active
            with self._lock:
                self._served[request_id] = served.bundle_id
                if len(self._served) > self._max_remembered:
                    self._served.popitem(last=False)
            yield (
                served,
                {
                    "arm": arm,
                    "bundle_id": served.bundle_id,
                    "experiment_id": self._experiment_id,
                },
            )

    def served_by(self, active: ActiveModel, request_id: str) -> ActiveModel:
        """The model that answered ``request_id`` (for an outcome posted after it): the
        challenger when it did and still serves, else ``active``."""
        challenger = self.holder.current()
        if challenger is None or challenger.name != active.name:
            return active
        with self._lock:
            bundle_id = self._served.get(request_id)
        return challenger if bundle_id == challenger.bundle_id else active

    def _pairs(self, active: ActiveModel, challenger: ActiveModel) -> bool:
        """Whether ``challenger`` may answer ``active``'s requests: the same model, another
        bundle, the same inputs (a request is decoded against the active model's)."""
        if challenger.name != active.name or challenger.bundle_id == active.bundle_id:
            return False
        key = (active.bundle_id, challenger.bundle_id)
        known = self._compatible.get(key)
        if known is None:
            known = active.runtime.signature.inputs == challenger.runtime.signature.inputs
            if not known:
                logger.warning(
                    "challenger inputs differ from the active model's bundle_id=%s",
                    challenger.bundle_id,
                )
            self._compatible = {key: known}
        return known
