"""The local Open Inference Protocol endpoint, over real HTTP on a loopback port."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.runtime import ActiveModel, ModelHolder, OnnxRuntime
from agent.server import InferenceServer
from agent.telemetry import InferenceStats
from control_plane.digits import DigitsModel, train_digits_model
from edgefleet import schema
from edgefleet.tensors import ModelSignature, encode_tensor

SIGNATURE = schema.convert(
    {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    },
    ModelSignature,
)


@pytest.fixture(scope="session")
def digits() -> DigitsModel:
    return train_digits_model()


@pytest.fixture(scope="session")
def digits_model(digits: DigitsModel, tmp_path_factory: pytest.TempPathFactory) -> ActiveModel:
    path: Path = tmp_path_factory.mktemp("model") / "model.onnx"
    path.write_bytes(digits.onnx_bytes)
    return ActiveModel(
        name="digits",
        version="3",
        platform="onnxruntime_onnx",
        runtime=OnnxRuntime(path, SIGNATURE),
        bundle_id="digits-3",
        release=3,
    )


@pytest.fixture
def holder(digits_model: ActiveModel) -> ModelHolder:
    return ModelHolder(digits_model)


@contextmanager
def serving(holder: ModelHolder, **kwargs: Any) -> Iterator[InferenceServer]:
    server = InferenceServer(holder, host="127.0.0.1", port=0, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(holder: ModelHolder) -> Iterator[InferenceServer]:
    with serving(holder) as running:
        yield running


def request(
    server: InferenceServer, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def infer_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"inputs": [encode_tensor("input", x)], **extra}


def test_live_is_200(server: InferenceServer) -> None:
    assert request(server, "GET", "/v2/health/live")[0] == 200


def test_ready_is_200_with_a_model(server: InferenceServer) -> None:
    assert request(server, "GET", "/v2/health/ready")[0] == 200


def test_ready_is_503_without_a_model() -> None:
    with serving(ModelHolder()) as server:
        assert request(server, "GET", "/v2/health/ready")[0] == 503
        status, body = request(
            server, "POST", "/v2/models/digits/infer", infer_body(np.zeros((1, 64), np.float32))
        )
        assert status == 503
        assert "no model" in body["error"]


def test_model_metadata_lists_signature_and_version(server: InferenceServer) -> None:
    status, body = request(server, "GET", "/v2/models/digits")
    assert status == 200
    assert body["name"] == "digits"
    assert body["versions"] == ["3"]
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in body["outputs"]] == ["label", "probabilities"]


def test_infer_returns_the_models_predictions(
    server: InferenceServer, digits: DigitsModel, digits_model: ActiveModel
) -> None:
    x = digits.holdout_x[:4]
    status, body = request(server, "POST", "/v2/models/digits/infer", infer_body(x, id="req-1"))
    assert status == 200
    assert body["model_name"] == "digits"
    assert body["model_version"] == "3"
    assert body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    expected = digits_model.runtime.infer({"input": x})
    assert outputs["label"]["datatype"] == "INT64"
    assert outputs["label"]["shape"] == [4]
    assert outputs["label"]["data"] == expected["label"].tolist()
    assert outputs["probabilities"]["shape"] == [4, 10]
    np.testing.assert_allclose(
        np.array(outputs["probabilities"]["data"]).reshape(4, 10),
        expected["probabilities"],
        rtol=1e-6,
    )


def test_infer_returns_only_requested_outputs(server: InferenceServer, digits: DigitsModel) -> None:
    body = infer_body(digits.holdout_x[:1], outputs=[{"name": "label"}])
    status, answer = request(server, "POST", "/v2/models/digits/infer", body)
    assert status == 200
    assert [o["name"] for o in answer["outputs"]] == ["label"]


def test_infer_rejects_wrong_dtype_with_400(server: InferenceServer) -> None:
    body = {"inputs": [encode_tensor("input", np.zeros((1, 64), dtype=np.float64))]}
    status, answer = request(server, "POST", "/v2/models/digits/infer", body)
    assert status == 400
    assert "FP64" in answer["error"]


def test_infer_rejects_wrong_shape_with_400(server: InferenceServer) -> None:
    status, answer = request(
        server, "POST", "/v2/models/digits/infer", infer_body(np.zeros((2, 63), np.float32))
    )
    assert status == 400
    assert "shape" in answer["error"]


def test_infer_rejects_missing_input_with_400(server: InferenceServer) -> None:
    status, answer = request(server, "POST", "/v2/models/digits/infer", {"inputs": []})
    assert status == 400
    assert "missing input 'input'" in answer["error"]


def test_infer_rejects_unknown_input_with_400(server: InferenceServer) -> None:
    body = {"inputs": [encode_tensor("pixels", np.zeros((1, 64), np.float32))]}
    status, answer = request(server, "POST", "/v2/models/digits/infer", body)
    assert status == 400
    assert "pixels" in answer["error"]


def test_infer_rejects_bad_json_with_400(server: InferenceServer) -> None:
    status, answer = request(server, "POST", "/v2/models/digits/infer", raw=b"{nope")
    assert status == 400
    assert "JSON" in answer["error"]


def test_infer_rejects_data_that_does_not_fill_shape_with_400(server: InferenceServer) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1.0]}]}
    assert request(server, "POST", "/v2/models/digits/infer", body)[0] == 400


def test_unknown_model_name_is_404(server: InferenceServer) -> None:
    status, answer = request(
        server, "POST", "/v2/models/other/infer", infer_body(np.zeros((1, 64), np.float32))
    )
    assert status == 404
    assert "other" in answer["error"]
    assert request(server, "GET", "/v2/models/other")[0] == 404


def test_oversized_body_is_413(holder: ModelHolder) -> None:
    with serving(holder, max_body_bytes=1024) as server:
        body = infer_body(np.zeros((10, 64), np.float32))
        status, answer = request(server, "POST", "/v2/models/digits/infer", body)
        assert status == 413
        assert "exceeds" in answer["error"]


class _BlockingRuntime:
    """A runtime whose infer waits until released, to fill the concurrency limit."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    @property
    def signature(self) -> ModelSignature:
        return SIGNATURE

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.release.wait(10)
        n = feeds["input"].shape[0]
        return {
            "label": np.zeros(n, np.int64),
            "probabilities": np.zeros((n, 10), np.float32),
        }


def test_infer_answers_503_busy_when_concurrency_is_exhausted() -> None:
    runtime = _BlockingRuntime()
    model = ActiveModel(name="digits", version="1", platform="test", runtime=runtime)
    with serving(ModelHolder(model), max_concurrency=1) as server:
        body = infer_body(np.zeros((1, 64), np.float32))
        first: list[int] = []

        def call_first(server: InferenceServer = server) -> None:
            first.append(request(server, "POST", "/v2/models/digits/infer", body)[0])

        thread = threading.Thread(target=call_first)
        thread.start()
        assert runtime.entered.wait(10)
        status, answer = request(server, "POST", "/v2/models/digits/infer", body)
        runtime.release.set()
        thread.join(10)
        assert status == 503
        assert "busy" in answer["error"]
        assert first == [200]


def test_swapping_the_model_changes_what_is_served(
    holder: ModelHolder, server: InferenceServer, digits_model: ActiveModel
) -> None:
    newer = ActiveModel(
        name="digits", version="4", platform="onnxruntime_onnx", runtime=digits_model.runtime
    )
    holder.swap(newer)
    status, body = request(
        server, "POST", "/v2/models/digits/infer", infer_body(np.zeros((1, 64), np.float32))
    )
    assert status == 200
    assert body["model_version"] == "4"


def test_the_onnx_runtime_calls_the_compiled_session_with_the_public_apis_answers(
    digits_model: ActiveModel, digits: DigitsModel
) -> None:
    runtime = digits_model.runtime
    assert isinstance(runtime, OnnxRuntime)
    session = runtime._session
    # onnxruntime's Python-level feed checks are skipped (the feed was checked already);
    # this fails when an onnxruntime release drops the binding and the fallback runs.
    assert runtime._run == session._sess.run
    x = digits.holdout_x[:25].astype(np.float32)
    label, probabilities = session.run(["label", "probabilities"], {"input": x})
    outputs = runtime.infer({"input": x})
    np.testing.assert_array_equal(outputs["label"], label)
    np.testing.assert_array_equal(outputs["probabilities"], probabilities)


def test_every_answered_request_is_recorded_once_for_telemetry(
    holder: ModelHolder, digits: DigitsModel
) -> None:
    stats = InferenceStats()
    with serving(holder, observer=stats.record) as server:
        for i in range(5):
            body = infer_body(digits.holdout_x[i : i + 1].astype(np.float32))
            status, _ = request(server, "POST", "/v2/models/digits/infer", body)
            assert status == 200
        status, _ = request(server, "POST", "/v2/models/digits/infer", raw=b"{bad json")
        assert status == 400  # refused before the model ran: not an inference
    window = stats.take_window()
    assert (window.count, window.errors) == (5, 0)
    assert stats.take_window().count == 0
