"""``POST /v2/models/{name}/outcome`` over real HTTP: sums per bundle, refusals with reasons."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any, cast

import pytest

from edgefleet.agent.inference.outcomes import MAX_BODY, OutcomeRecorder
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder
from edgefleet.agent.inference.server import InferenceServer

# The outcome route never runs the model: no runtime is needed behind it.
MODEL = ActiveModel(
    name="digits",
    version="3",
    platform="onnxruntime_onnx",
    runtime=cast(Any, None),
    bundle_id="digits-3",
    release=3,
)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[InferenceServer, OutcomeRecorder]]:
    recorder = OutcomeRecorder()
    server = InferenceServer(
        ModelHolder(MODEL), host="127.0.0.1", port=0, outcome_route=recorder.handle
    )
    server.start()
    try:
        yield server, recorder
    finally:
        server.stop()


def post(server: InferenceServer, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("POST", path, body=raw, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_posted_outcomes_become_one_event_of_sums_per_bundle(
    served: tuple[InferenceServer, OutcomeRecorder],
) -> None:
    server, recorder = served
    recorder.take_events()
    for value in (1, 0, 1, 2.5):
        status, body = post(
            server, "/v2/models/digits/outcome", json.dumps({"value": value}).encode()
        )
        assert status == 200 and body["recorded"] is True
    (event,) = recorder.take_events()
    assert event.kind == "outcome" and event.bundle_id == "digits-3" and event.release == 3
    assert event.data == {"model": "digits", "count": 4, "sum": 4.5, "sum_sq": 8.25}
    assert recorder.take_events() == []  # handed over once


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"[1]", 400, "must be"),
        (b'{"value": true}', 400, "must be a number"),
        (b'{"value": "3"}', 400, "must be a number"),
        (b'{"value": NaN}', 400, "finite"),
        (b'{"value": 1e300}', 400, "within"),
        (b"{" * 2000, 400, "JSON"),
        (b"[" * 1500 + b"]" * 1500, 400, "nested too deeply"),
        (b'{"value": 1, "pad": "' + b"x" * MAX_BODY + b'"}', 413, "exceeds"),
        (b"\xff\xfe", 400, "not valid JSON"),
    ],
)
def test_a_bad_outcome_is_refused_with_its_reason_and_not_counted(
    served: tuple[InferenceServer, OutcomeRecorder], raw: bytes, status: int, reason: str
) -> None:
    server, recorder = served
    recorder.take_events()
    got, body = post(server, "/v2/models/digits/outcome", raw)
    assert got == status and reason in body["error"]
    assert recorder.take_events() == []


def test_an_outcome_for_a_model_not_served_is_a_404(
    served: tuple[InferenceServer, OutcomeRecorder],
) -> None:
    got, body = post(served[0], "/v2/models/other/outcome", b'{"value": 1}')
    assert got == 404 and "not served" in body["error"]
