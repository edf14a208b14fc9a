"""The local endpoint's binary tensor data extension, its Unix socket listener and its
keep-alive connections, against a real server on a loopback port and a real socket file."""

from __future__ import annotations

import http.client
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet import schema
from edgefleet.agent.config import parse_config
from edgefleet.agent.inference.binary import HEADER
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, OnnxRuntime
from edgefleet.agent.inference.server import InferenceServer
from edgefleet.tensors import ModelSignature, encode_tensor
from edgefleet_demo.digits import DigitsModel

INFER = "/v2/models/digits/infer"
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


class UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix socket: how an application on the device calls."""

    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.socket_path))


@pytest.fixture(scope="module")
def server(
    digits: DigitsModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InferenceServer]:
    tmp = tmp_path_factory.mktemp("binary")
    (tmp / "model.onnx").write_bytes(digits.onnx_bytes)
    model = ActiveModel(
        name="digits",
        version="3",
        platform="onnxruntime_onnx",
        runtime=OnnxRuntime(tmp / "model.onnx", SIGNATURE),
        bundle_id="digits-3",
        release=3,
    )
    running = InferenceServer(
        ModelHolder(model), port=0, max_body_bytes=1 << 20, unix_socket=tmp / "run" / "agent.sock"
    )
    running.start()
    yield running
    running.stop()


def binary_request(
    header: dict[str, Any], tail: bytes, *, header_length: int | str | None = None
) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    length = len(head) if header_length is None else header_length
    return head + tail, {HEADER: str(length), "Content-Type": "application/octet-stream"}


def binary_input(x: np.ndarray, **parameters: Any) -> dict[str, Any]:
    return {
        "name": "input",
        "datatype": "FP32",
        "shape": list(x.shape),
        "parameters": {"binary_data_size": x.nbytes, **parameters},
    }


def exchange(
    connection: http.client.HTTPConnection, body: bytes, headers: dict[str, str]
) -> tuple[int, http.client.HTTPResponse, bytes]:
    connection.request("POST", INFER, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response, response.read()


def split_answer(response: http.client.HTTPResponse, data: bytes) -> dict[str, np.ndarray]:
    """The outputs of a binary answer, read as a Triton client reads them."""
    length = int(response.getheader(HEADER) or len(data))
    header = json.loads(data[:length])
    offset = length
    outputs = {}
    for out in header["outputs"]:
        dtype = {"FP32": "<f4", "INT64": "<i8"}[out["datatype"]]
        if "data" in out:
            outputs[out["name"]] = np.asarray(out["data"], dtype=dtype).reshape(out["shape"])
            continue
        size = out["parameters"]["binary_data_size"]
        blob = data[offset : offset + size]
        offset += size
        outputs[out["name"]] = np.frombuffer(blob, dtype=dtype).reshape(out["shape"])
    assert offset == len(data), "the answer's bytes are exactly the outputs' binary_data_size"
    return outputs


def json_answer(server: InferenceServer, x: np.ndarray) -> dict[str, np.ndarray]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    body = json.dumps({"inputs": [encode_tensor("input", x)]}).encode()
    status, _, data = exchange(connection, body, {"Content-Type": "application/json"})
    connection.close()
    assert status == 200, data
    outputs = json.loads(data)["outputs"]
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in outputs}


def test_a_binary_request_and_binary_answer_equal_the_json_round_trip(
    server: InferenceServer, digits: DigitsModel
) -> None:
    x = digits.holdout_x[:5].astype(np.float32)
    header = {"inputs": [binary_input(x)], "parameters": {"binary_data_output": True}}
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, response, data = exchange(connection, *binary_request(header, x.tobytes()))
    connection.close()
    assert status == 200, data
    assert response.getheader("Content-Type") == "application/octet-stream"
    outputs = split_answer(response, data)
    expected = json_answer(server, x)
    np.testing.assert_array_equal(outputs["label"], expected["label"])
    np.testing.assert_array_equal(outputs["probabilities"], expected["probabilities"])
    assert outputs["probabilities"].dtype == np.float32


def test_outputs_come_back_binary_only_when_asked_for_by_name(
    server: InferenceServer, digits: DigitsModel
) -> None:
    x = digits.holdout_x[:2].astype(np.float32)
    header = {
        "inputs": [binary_input(x)],
        "outputs": [
            {"name": "label"},
            {"name": "probabilities", "parameters": {"binary_data": True}},
        ],
    }
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, response, data = exchange(connection, *binary_request(header, x.tobytes()))
    connection.close()
    assert status == 200, data
    head = json.loads(data[: int(response.getheader(HEADER) or 0)])
    label, probabilities = head["outputs"]
    assert "data" in label and "parameters" not in label
    assert "data" not in probabilities
    assert probabilities["parameters"] == {"binary_data_size": 2 * 10 * 4}
    outputs = split_answer(response, data)
    np.testing.assert_array_equal(outputs["probabilities"], json_answer(server, x)["probabilities"])


def test_a_binary_input_without_binary_outputs_gets_a_plain_json_answer(
    server: InferenceServer, digits: DigitsModel
) -> None:
    x = digits.holdout_x[:1].astype(np.float32)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, response, data = exchange(
        connection, *binary_request({"inputs": [binary_input(x)]}, x.tobytes())
    )
    connection.close()
    assert status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader(HEADER) is None
    assert json.loads(data)["outputs"][0]["data"] == json_answer(server, x)["label"].tolist()


X = np.zeros((1, 64), np.float32)
GOOD = {"inputs": [binary_input(X)]}
MALFORMED = {
    "header length not a number": (binary_request(GOOD, X.tobytes(), header_length="12a"), HEADER),
    "header length negative": (binary_request(GOOD, X.tobytes(), header_length="-1"), HEADER),
    "header length beyond the body": (
        binary_request(GOOD, X.tobytes(), header_length=10**12),
        "exceeds the body",
    ),
    "header length cutting the JSON": (
        binary_request(GOOD, X.tobytes(), header_length=20),
        "not valid JSON",
    ),
    "size not dtype x shape": (
        binary_request({"inputs": [{**binary_input(X), "shape": [1, 32]}]}, X.tobytes()),
        "binary_data_size 256 != 128 bytes",
    ),
    "truncated body": (binary_request(GOOD, X.tobytes()[:100]), "only 100 bytes"),
    "bytes left over": (binary_request(GOOD, X.tobytes() + b"xx"), "2 bytes of binary data"),
    "huge declared size": (
        binary_request(
            {
                "inputs": [
                    {
                        **binary_input(X),
                        "shape": [2**40, 64],
                        "parameters": {"binary_data_size": 2**48},
                    }
                ]
            },
            X.tobytes(),
        ),
        "binary_data_size 281474976710656 but only 256 bytes",
    ),
    "size of the wrong type": (
        binary_request({"inputs": [binary_input(X, binary_data_size=True)]}, X.tobytes()),
        "binary_data_size must be a non-negative integer",
    ),
    "data and binary both": (
        binary_request({"inputs": [{**binary_input(X), "data": [0] * 64}]}, X.tobytes()),
        "both 'data' and binary_data_size",
    ),
    "binary size without the header": (
        (json.dumps(GOOD).encode() + X.tobytes(), {"Content-Type": "application/json"}),
        "not valid JSON",
    ),
    "binary size in a JSON-only request": (
        (json.dumps(GOOD).encode(), {"Content-Type": "application/json"}),
        f"has no {HEADER} header",
    ),
    "NaN in a binary input": (
        binary_request(GOOD, np.full((1, 64), np.nan, np.float32).tobytes()),
        "non-finite",
    ),
    "parameters not an object": (
        binary_request({"inputs": [{**binary_input(X), "parameters": [1]}]}, X.tobytes()),
        "'parameters' must be an object",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_binary_requests_are_refused_with_400_and_a_reason(
    server: InferenceServer, case: str
) -> None:
    (body, headers), reason = MALFORMED[case]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    status, _, data = exchange(connection, body, headers)
    assert status == 400, data
    assert reason in json.loads(data)["error"]
    # The refusal left the connection in step: the next request on it is served.
    status, _, data = exchange(connection, *binary_request(GOOD, X.tobytes()))
    connection.close()
    assert status == 200, data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header_length=st.one_of(st.integers(-5, 400), st.text(max_size=8)),
    size=st.one_of(st.integers(-1, 600), st.floats(), st.text(max_size=3), st.none()),
    shape=st.lists(st.integers(0, 2**33), max_size=3),
    tail=st.binary(max_size=600),
)
def test_any_binary_request_is_answered_with_json_2xx_or_4xx(
    server: InferenceServer, header_length: int | str, size: Any, shape: list[int], tail: bytes
) -> None:
    header = {
        "inputs": [{**binary_input(X), "shape": shape, "parameters": {"binary_data_size": size}}]
    }
    body, headers = binary_request(header, tail, header_length=header_length)
    headers[HEADER] = headers[HEADER].replace("\r", "").replace("\n", "") or "x"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        status, _, data = exchange(connection, body, headers)
    except ValueError:  # http.client itself refuses some header values: nothing was sent
        connection.close()
        return
    connection.close()
    assert 200 <= status < 500
    if status >= 400:
        assert json.loads(data)["error"]


def test_the_unix_socket_serves_infer_with_mode_0660(
    server: InferenceServer, digits: DigitsModel
) -> None:
    path = server.unix_socket
    assert path is not None
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660
    x = digits.holdout_x[:3].astype(np.float32)
    connection = UnixConnection(path)
    header = {"inputs": [binary_input(x)], "parameters": {"binary_data_output": True}}
    status, response, data = exchange(connection, *binary_request(header, x.tobytes()))
    assert status == 200, data
    np.testing.assert_array_equal(
        split_answer(response, data)["label"], json_answer(server, x)["label"]
    )
    connection.request("GET", "/v2/models")  # the same routes as over TCP
    listed = connection.getresponse()
    assert listed.status == 200
    assert [m["name"] for m in json.loads(listed.read())["models"]] == ["digits"]
    connection.close()


def test_a_keep_alive_connection_serves_many_requests_on_one_socket(
    server: InferenceServer,
) -> None:
    for connection in (
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=10),
        UnixConnection(server.unix_socket or Path()),
    ):
        body, headers = binary_request(GOOD, X.tobytes())
        exchange(connection, body, headers)
        first = connection.sock  # http.client opens a new socket if the server closed it
        for _ in range(50):
            status, response, _ = exchange(connection, body, headers)
            assert status == 200
            assert not response.will_close
        assert connection.sock is first
        connection.close()


def test_a_stale_socket_file_is_replaced_and_removed_on_stop(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays behind, as after a crash
    running = InferenceServer(ModelHolder(), port=0, unix_socket=path)
    running.start()
    connection = UnixConnection(path)
    connection.request("GET", "/v2/health/live")
    assert connection.getresponse().status == 200
    connection.close()
    running.stop()
    assert not path.exists()


def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    path.write_text("not a socket")
    with pytest.raises(FileExistsError):
        InferenceServer(ModelHolder(), port=0, unix_socket=path)
    assert path.read_text() == "not a socket"


def test_the_unix_socket_is_read_from_the_inference_config() -> None:
    base = 'device_id = "dev-abcdefgh"\nprofile = "p"\ndata_dir = "/d"\ntrust_root = "/r"\n'
    assert parse_config(base).inference.unix_socket is None
    config = parse_config(base + '[inference]\nunix_socket = "/run/edgefleet/agent.sock"\n')
    assert config.inference.unix_socket == "/run/edgefleet/agent.sock"
