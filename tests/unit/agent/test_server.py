"""The local Open Inference Protocol endpoint, over real HTTP on a loopback port."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet import schema
from edgefleet.agent.config import parse_config
from edgefleet.agent.errors import ConfigError
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, OnnxRuntime
from edgefleet.agent.inference.server import InferenceServer
from edgefleet.agent.telemetry.counters import InferenceStats
from edgefleet.tensors import ModelSignature, encode_tensor
from edgefleet_demo.digits import DigitsModel

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


# -- hostile and malformed requests: always a 4xx with a JSON reason -------------------

INFER = "/v2/models/digits/infer"
GET_ROUTES = ["/v2", "/v2/health/live", "/v2/health/ready", "/v2/models/digits"]
GET_ROUTES += ["/v2/models/digits/ready", "/v2/nowhere"]


def tensor(data: Any, datatype: str = "FP32", shape: Any = (1, 64)) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": datatype, "shape": list(shape), "data": data}]}


@pytest.mark.parametrize("depth", [40, 900, 100_000])
def test_deeply_nested_json_is_refused_with_400_on_every_route(
    server: InferenceServer, depth: int
) -> None:
    nested = b"[" * depth + b"]" * depth
    status, answer = request(server, "POST", INFER, raw=nested)
    assert status == 400
    assert "nested too deeply" in answer["error"]
    deep_data = tensor(json.loads("[" * 35 + "]" * 35) if depth < 1000 else [])
    assert request(server, "POST", INFER, deep_data)[0] == 400
    for path in GET_ROUTES:
        assert request(server, "GET", path, raw=nested)[0] in (200, 404)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (["NaN"] * 64, 'got a string "NaN"'),
        (["1.5"] * 64, 'got a string "1.5"'),
        ([True] * 64, "got true"),
        ([None] * 64, "got null"),
        ([{"v": 1}] * 64, "got an object"),
        ([[0.0] * 32, [0.0] * 31], "ragged"),
        ([0.0] * 63, "63 values do not fill shape [1, 64]"),
        ("0" * 64, "'data' must be a list"),
    ],
)
def test_non_numbers_in_a_numeric_tensor_are_refused_with_400_naming_the_input(
    server: InferenceServer, data: Any, fragment: str
) -> None:
    status, answer = request(server, "POST", INFER, tensor(data))
    assert status == 400
    assert "'input'" in answer["error"]
    assert fragment in answer["error"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (tensor([0.0] * 64, datatype="FP99"), "input 'input': unknown datatype \"FP99\""),
        (tensor([0.0] * 64, datatype=None), "input 'input': unknown datatype null"),
        (tensor([0] * 64, datatype="INT64"), "input 'input': datatype \"INT64\" != expected FP32"),
        (tensor([0.0] * 64, shape=(64,)), "input 'input': shape [64] does not fit [-1, 64]"),
        (tensor([0.0] * 64, shape=(True, 64)), "'shape' must be a list"),
        (tensor([], shape=(0, 64)), "input 'input': shape [0, 64] holds no values"),
        ({"inputs": [5]}, "inputs[0] must be a JSON object"),
        ({"inputs": [{"datatype": "FP32"}]}, "inputs[0] needs a non-empty 'name'"),
        ({"inputs": "input"}, "an 'inputs' list"),
        ({**tensor([0.0] * 64), "outputs": "label"}, "'outputs' must be a list"),
        ({**tensor([0.0] * 64), "outputs": [{"name": "logits"}]}, 'no output "logits"'),
    ],
)
def test_malformed_tensors_are_refused_with_400_and_a_reason(
    server: InferenceServer, body: Any, fragment: str
) -> None:
    status, answer = request(server, "POST", INFER, body)
    assert status == 400
    assert fragment in answer["error"]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b'{"inputs": "\xc3\x28"}',
        b"[]",
        b"5",
        b'"x"',
        b"null",
        b"1" * 5000,
        b'{"inputs": [] ,}',
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused_with_400(
    server: InferenceServer, raw: bytes
) -> None:
    status, answer = request(server, "POST", INFER, raw=raw)
    assert status == 400
    assert answer["error"]


def test_non_finite_inputs_are_refused_by_default_naming_the_input(
    server: InferenceServer,
) -> None:
    for value in ("NaN", "Infinity", "-Infinity", "1e400"):
        raw = json.dumps(tensor([0.0] * 63 + ["X"])).replace('"X"', value).encode()
        status, answer = request(server, "POST", INFER, raw=raw)
        assert status == 400, value
        assert "tensor 'input': non-finite value" in answer["error"]


def test_non_finite_inputs_reach_a_model_whose_policy_allows_them(holder: ModelHolder) -> None:
    raw = json.dumps(tensor([0.0] * 63 + ["X"])).replace('"X"', "NaN").encode()
    with serving(holder, nan_policy="allow") as server:
        assert request(server, "POST", INFER, raw=raw)[0] == 200
        # a string is never a number, whatever the policy
        assert request(server, "POST", INFER, tensor(["NaN"] * 64))[0] == 400
    with serving(holder, nan_policy="allow", nan_policy_by_model={"digits": "reject"}) as server:
        assert request(server, "POST", INFER, raw=raw)[0] == 400
    with serving(holder, nan_policy_by_model={"digits": "allow"}) as server:
        assert request(server, "POST", INFER, raw=raw)[0] == 200


def test_the_nan_policy_is_read_from_the_agent_config_per_model() -> None:
    base = 'device_id = "dev-abcdefgh"\nprofile = "p"\ndata_dir = "/d"\ntrust_root = "/r"\n'
    assert parse_config(base).inference.nan_policy == "reject"
    config = parse_config(
        base + '[inference]\nnan_policy = "allow"\n[inference.nan_policy_by_model]\n'
        'digits = "reject"\n'
    )
    assert config.inference.nan_policy == "allow"
    assert config.inference.nan_policy_by_model == {"digits": "reject"}
    with pytest.raises(ConfigError) as caught:
        parse_config(base + '[inference]\nnan_policy = "ignore"\n')
    assert caught.value.field == "inference.nan_policy"


def test_a_refused_request_never_reaches_the_model(holder: ModelHolder) -> None:
    stats = InferenceStats()
    with serving(holder, observer=stats.record) as server:
        body = {**tensor([0.0] * 64), "outputs": [{"name": "logits"}]}
        assert request(server, "POST", INFER, body)[0] == 400
        assert request(server, "POST", INFER, tensor(["NaN"] * 64))[0] == 400
    assert stats.take_window().count == 0


def test_oversized_body_is_413_on_get_routes_too(holder: ModelHolder) -> None:
    with serving(holder, max_body_bytes=1024) as server:
        status, answer = request(server, "GET", "/v2/models/digits", raw=b" " * 2048)
        assert status == 413
        assert "exceeds" in answer["error"]


def raw_exchange(server: InferenceServer, data: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``data`` as it is, half-close, and read the one answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while block := sock.recv(65536):
            received += block
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_body_shorter_than_its_content_length_is_400(server: InferenceServer) -> None:
    status, answer = raw_exchange(
        server, b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 100\r\n\r\n{}"
    )
    assert status == 400
    assert "ended after 2 of 100 bytes" in answer["error"]


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"PUT /v2/models/digits/infer HTTP/1.1\r\nContent-Length: 0", 405),
        (b"BREW /v2 HTTP/1.1", 405),
        (b"GET /v2/models/digits/infer HTTP/1.1", 405),
        (b"GET /v2 HTTP/1.1\r\nX-Long: " + b"a" * 70_000, 431),
        (b"GET /v2 FOO/1.1", 400),
        (b"POST /v2/models/digits/infer HTTP/1.1\r\nTransfer-Encoding: chunked", 411),
        (b"POST /v2/models/digits/infer HTTP/1.1\r\nContent-Length: -5", 411),
    ],
)
def test_requests_http_itself_refuses_get_a_json_reason(
    server: InferenceServer, head: bytes, status: int
) -> None:
    got, answer = raw_exchange(server, head + b"\r\n\r\n")
    assert got == status
    assert answer["error"]


def test_a_get_with_a_body_keeps_a_keep_alive_connection_in_step(
    server: InferenceServer,
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", "/v2/health/live", body=b"GET /v2/nowhere HTTP/1.1\r\n\r\n")
        first = connection.getresponse()
        assert (first.status, json.loads(first.read())) == (200, {"live": True})
        connection.request("GET", "/v2/models/digits")
        second = connection.getresponse()
        assert second.status == 200
        assert json.loads(second.read())["name"] == "digits"
    finally:
        connection.close()


# -- fuzzing every route of a live server ---------------------------------------------

FUZZ_MAX_BODY = 4096
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)
TENSORS = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["input", "pixels", ""]) | JSON_SCALARS,
        "datatype": st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT8", "BOOL", "fp32"])
        | JSON_SCALARS,
        "shape": st.sampled_from([[1, 64], [2, 64], [0, 64], [64], [-1, 64], [True, 64]])
        | st.lists(st.integers(-2, 70), max_size=4)
        | JSON_VALUES,
        "data": st.sampled_from([[0.5] * 64, [[0.5] * 64], [0.5] * 128, [], [1] * 64])
        | st.lists(JSON_SCALARS, min_size=60, max_size=70)
        | JSON_VALUES,
    },
    optional={"parameters": JSON_VALUES},
)
INFER_REQUESTS = st.fixed_dictionaries(
    {"inputs": st.lists(TENSORS, max_size=3) | JSON_VALUES},
    optional={
        "id": JSON_VALUES,
        "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(["label", "x"])}))
        | JSON_VALUES,
        "parameters": JSON_VALUES,
    },
)


def _deep(depth: int, opener: bytes, closer: bytes) -> bytes:
    return opener * depth + closer * depth


BODIES = st.one_of(
    st.none(),
    st.binary(max_size=600),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    INFER_REQUESTS.map(lambda v: json.dumps(v).encode()),  # NaN and Infinity tokens included
    INFER_REQUESTS.map(lambda v: json.dumps(v).encode()[: len(json.dumps(v)) // 2]),
    st.builds(_deep, st.integers(1, 3000), st.just(b"["), st.just(b"]")),
    st.builds(_deep, st.integers(1, 3000), st.just(b'{"inputs":'), st.just(b"}")),
    st.integers(FUZZ_MAX_BODY + 1, FUZZ_MAX_BODY + 100_000).map(lambda n: b" " * n),
    st.text(max_size=200).map(lambda t: t.encode("utf-16")),
)
PATHS = st.sampled_from(
    [*GET_ROUTES, INFER, "/v2/models/other/infer", "/v2/models/digits/infer?x=1", "/", "/v2//"]
) | st.lists(st.sampled_from(["v2", "models", "digits", "infer", "ready", "%ff", ".."])).map(
    lambda parts: "/" + "/".join(parts)
)


@pytest.fixture(scope="module")
def fuzz_server(digits_model: ActiveModel) -> Iterator[InferenceServer]:
    with serving(ModelHolder(digits_model), max_body_bytes=FUZZ_MAX_BODY) as running:
        yield running


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    method=st.sampled_from(["GET", "POST", "POST", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=PATHS,
    body=BODIES,
)
def test_every_route_answers_any_body_with_a_json_2xx_or_4xx_and_keeps_serving(
    fuzz_server: InferenceServer, method: str, path: str, body: bytes | None
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", fuzz_server.port, timeout=30)
    try:
        connection.request(method, path, body=body)
        response = connection.getresponse()
        answer = json.loads(response.read())
        assert 200 <= response.status < 500, (response.status, answer)
        assert response.getheader("Content-Type") == "application/json"
        assert isinstance(answer, dict)
        if response.status >= 400:
            assert isinstance(answer["error"], str) and answer["error"]
        # The same connection (or a new one, when the server closed it) still serves.
        valid = json.dumps(infer_body(np.zeros((1, 64), np.float32))).encode()
        connection.request("POST", INFER, body=valid)
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["model_name"] == "digits"
    finally:
        connection.close()
