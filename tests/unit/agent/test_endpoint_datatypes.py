"""The OIP endpoint with models that are not one float matrix: every datatype the
signature can name goes in and comes back as itself, several inputs and outputs per
request, a datatype other than the signature's is a 400 naming the input, and a model
exported with a fixed batch takes any number of rows."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgefleet import schema
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, OnnxRuntime
from edgefleet.agent.inference.server import InferenceServer
from edgefleet.tensors import OIP_TO_NUMPY, ModelSignature, encode_tensor
from tests.support.signature_models import fixed_batch_model, three_input_model

DATATYPES = {
    "FP32": TensorProto.FLOAT,
    "FP16": TensorProto.FLOAT16,
    "INT8": TensorProto.INT8,
    "UINT8": TensorProto.UINT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "BOOL": TensorProto.BOOL,
}


def _identity_model() -> bytes:
    """One input ``in_<DT>`` [batch, 3] per datatype, each passed to ``out_<DT>``."""
    inputs = [
        helper.make_tensor_value_info(f"in_{dt}", elem, ["batch", 3])
        for dt, elem in DATATYPES.items()
    ]
    outputs = [
        helper.make_tensor_value_info(f"out_{dt}", elem, ["batch", 3])
        for dt, elem in DATATYPES.items()
    ]
    nodes = [helper.make_node("Identity", [f"in_{dt}"], [f"out_{dt}"]) for dt in DATATYPES]
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _signature(
    inputs: list[tuple[str, str, list[int]]], outputs: list[tuple[str, str, list[int]]], **kw: Any
) -> ModelSignature:
    def specs(items: list[tuple[str, str, list[int]]]) -> list[dict[str, Any]]:
        return [{"name": n, "datatype": d, "shape": s} for n, d, s in items]

    return schema.convert(
        {"inputs": specs(inputs), "outputs": specs(outputs), **kw}, ModelSignature
    )


def _serve(tmp_path: Path, model: bytes, signature: ModelSignature) -> InferenceServer:
    path = tmp_path / "model.onnx"
    path.write_bytes(model)
    active = ActiveModel(
        name="m", version="1", platform="onnxruntime_onnx", runtime=OnnxRuntime(path, signature)
    )
    server = InferenceServer(ModelHolder(active), host="127.0.0.1", port=0)
    server.start()
    return server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[InferenceServer] = []

    def start(model: bytes, signature: ModelSignature) -> InferenceServer:
        servers.append(_serve(tmp_path, model, signature))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def infer(server: InferenceServer, inputs: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(
            "POST",
            "/v2/models/m/infer",
            body=json.dumps({"inputs": inputs}).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_every_datatype_goes_in_and_comes_back_as_itself(serve: Any) -> None:
    tensors = [(f"in_{dt}", dt, [-1, 3]) for dt in DATATYPES]
    outputs = [(f"out_{dt}", dt, [-1, 3]) for dt in DATATYPES]
    server = serve(_identity_model(), _signature(tensors, outputs))
    signed = np.array([[-2, -1, 0], [1, 2, 100]])
    values: dict[str, np.ndarray] = {
        "FP32": np.array([[0.1, -2.5, 3e38], [0.0, 1.0, -7.0]], np.float32),
        "INT8": signed.astype(np.int8),
        "UINT8": np.array([[0, 1, 2], [200, 254, 255]], np.uint8),
        "INT16": (signed * 300).astype(np.int16),
        "INT32": (signed * 20_000_000).astype(np.int32),
        "INT64": (signed * 2**40).astype(np.int64),
        "BOOL": np.array([[True, False, True], [False, False, True]]),
    }
    values["FP16"] = np.array([[0.5, -1.25, 2.0], [3.0, 0.0, -0.125]], np.float16)
    status, body = infer(server, [encode_tensor(f"in_{dt}", v) for dt, v in values.items()])
    assert status == 200, body
    returned = {o["name"]: o for o in body["outputs"]}
    for dt, value in values.items():
        out = returned[f"out_{dt}"]
        assert out["datatype"] == dt and out["shape"] == [2, 3]
        np.testing.assert_array_equal(
            np.asarray(out["data"], OIP_TO_NUMPY[dt]).reshape(2, 3), value
        )


def test_three_inputs_with_an_int64_scalar_are_answered_with_both_outputs(serve: Any) -> None:
    signature = _signature(
        [("audio", "FP32", [-1, 16]), ("state", "FP32", [-1, 8]), ("sr", "INT64", [])],
        [("score", "FP32", [-1, 4]), ("state_out", "FP32", [-1, 8])],
    )
    server = serve(three_input_model(), signature)
    audio = np.ones((2, 16), np.float32)
    state = np.zeros((2, 8), np.float32)
    inputs = [
        encode_tensor("audio", audio),
        encode_tensor("state", state),
        encode_tensor("sr", np.asarray(16000, np.int64)),
    ]
    status, body = infer(server, inputs)
    assert status == 200, body
    assert [(o["name"], o["datatype"], o["shape"]) for o in body["outputs"]] == [
        ("score", "FP32", [2, 4]),
        ("state_out", "FP32", [2, 8]),
    ]
    wrong = [*inputs[:2], encode_tensor("sr", np.asarray(16000, np.int32))]
    status, body = infer(server, wrong)
    assert status == 400
    assert body["error"] == "input 'sr': datatype \"INT32\" != expected INT64"


def test_a_fixed_batch_model_answers_any_number_of_rows(serve: Any) -> None:
    signature = _signature([("x", "FP32", [4, 10])], [("y", "FP32", [4, 3])], batch=4)
    server = serve(fixed_batch_model(4), signature)
    rows = np.random.default_rng(0).normal(size=(6, 10)).astype(np.float32)
    status, body = infer(server, [encode_tensor("x", rows)])
    assert status == 200, body
    assert body["outputs"][0]["shape"] == [6, 3]
    status, body = infer(server, [encode_tensor("x", rows[:, :9])])
    assert status == 400 and "does not fit [4, 10]" in body["error"]
