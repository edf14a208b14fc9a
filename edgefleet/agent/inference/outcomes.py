"""``POST /v2/models/{name}/outcome``: a number the application measured after an answer.

An A/B experiment compares two model versions on what matters to the application (a
conversion, a correction rate, a dwell time), not only on errors and latency. The
application posts ``{"value": <number>}`` after it acted on an answer; the recorder adds
it to the running count, sum and sum of squares of the bundle serving the model now,
and each telemetry window hands those sums over as one ``outcome`` event per bundle
(``{"model", "count", "sum", "sum_sq"}``), which the control plane's experiments read
(``edgefleet.control_plane.services.experiments.outcomes``). Sums, not values: memory
and telemetry stay constant however many outcomes are posted.

In an A/B experiment in ``requests`` mode two bundles answer one model's requests
(``edgefleet.agent.inference.split``). The application then posts the answer's ``id``
with the value, ``{"value": <number>, "id": "<the answer's id>"}``, and the outcome is
counted for the bundle that served that answer (``resolve``); without an ``id``, or with
one no longer remembered, it counts for the active model.

Refusals are answers with a reason, never exceptions: a body that is not a JSON object
with a finite number ``value`` (booleans are not numbers here) is a 400, a body above
``MAX_BODY`` a 413, and a model that is not served a 404 (from the server's lookup).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from edgefleet.agent.inference.protocol import RequestError, decode_json_body
from edgefleet.agent.inference.runtime import ActiveModel
from edgefleet.agent.telemetry.counters import INFERENCE_PRIORITY
from edgefleet.messages import TelemetryEvent

MAX_BODY = 4096
MAX_MAGNITUDE = 1e12
"""Values beyond this are refused: a sum of squares of them would lose every smaller one."""


Resolver = Callable[[ActiveModel, str], ActiveModel]
"""(the active model, an answer's id) -> the model that served that answer."""


class OutcomeRecorder:
    """Running sums of posted outcomes per (model, bundle), taken once per telemetry window."""

    def __init__(self, resolve: Resolver | None = None) -> None:
        self._resolve = resolve
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, str, int], list[float]] = {}

    def handle(self, model: ActiveModel, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        """Record the outcome in ``body`` for ``model``; the answer the endpoint sends."""
        if len(body) > MAX_BODY:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"outcome body of {len(body)} bytes exceeds the limit of {MAX_BODY}",
            )
        request = decode_json_body(body)
        if not isinstance(request, dict):
            raise RequestError(HTTPStatus.BAD_REQUEST, 'outcome body must be {"value": number}')
        value = request.get("value")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RequestError(HTTPStatus.BAD_REQUEST, "outcome value must be a number")
        number = float(value)
        if not math.isfinite(number) or abs(number) > MAX_MAGNITUDE:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"outcome value must be finite and within ±{MAX_MAGNITUDE:g}",
            )
        answer_id = request.get("id")
        if answer_id is not None and not isinstance(answer_id, str):
            raise RequestError(HTTPStatus.BAD_REQUEST, "outcome id must be the answer's id string")
        if answer_id and self._resolve is not None:
            model = self._resolve(model, answer_id)
        self.record(model, number)
        return HTTPStatus.OK, {
            "model_name": model.name,
            "model_version": model.version,
            "bundle_id": model.bundle_id,
            "recorded": True,
        }

    def record(self, model: ActiveModel, value: float) -> None:
        key = (model.name, model.bundle_id, model.release)
        with self._lock:
            sums = self._sums.setdefault(key, [0.0, 0.0, 0.0])
            sums[0] += 1
            sums[1] += value
            sums[2] += value * value

    def take_events(self) -> list[TelemetryEvent]:
        """One ``outcome`` event per bundle that had outcomes since the last call."""
        with self._lock:
            taken, self._sums = self._sums, {}
        return [
            TelemetryEvent(
                kind="outcome",
                priority=INFERENCE_PRIORITY,
                bundle_id=bundle_id or None,
                release=release or None,
                data={"model": name, "count": int(s[0]), "sum": s[1], "sum_sq": s[2]},
            )
            for (name, bundle_id, release), s in taken.items()
        ]
