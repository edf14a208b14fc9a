"""The local inference endpoint: Open Inference Protocol (KServe v2) REST on stdlib HTTP.

Applications on the device call ``POST /v2/models/{name}/infer``. The server is
``http.server.ThreadingHTTPServer`` so the agent stays light (no web framework).
Concurrency is bounded by a semaphore: when every slot is busy the request gets
503 at once instead of queueing behind the model, and bodies above a bound get 413.
It reads the model from a ``ModelHolder`` per request, so it keeps answering with the
old model during an install and switches the instant the holder is swapped.

Whatever arrives, every route answers with a status and a JSON body, ``{"error": reason}``
for a refusal, never a dropped connection: a body above ``max_body_bytes`` gets 413;
one that is not UTF-8 JSON, not an object or nested deeper than ``MAX_NESTING`` gets
400, and so does a tensor with a wrong name, datatype, shape or element count, an empty
one, or one with strings, booleans, nulls or objects among its numbers
(``edgefleet.tensors``), the reason naming the input. http.server's own refusals (a bad
request line, a method no route takes) come in the same JSON shape.

Non-finite inputs (NaN, ±Inf) are a policy per model: ``"reject"`` (the default) answers
400 naming the input, ``"allow"`` passes them to the model. JSON has no NaN; they can
only arrive as the non-standard tokens ``NaN``, ``Infinity`` and ``-Infinity`` (which
Python's ``json`` reads) or as numbers beyond the datatype's range (``1e400``, or
``70000`` in FP16); the strings ``"NaN"`` or ``"Infinity"`` are refused in any numeric
tensor whatever the policy. Outputs go back as the model computed them, non-finite
values as those same tokens.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import perf_counter
from typing import Any, Literal

import numpy as np

from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder
from edgefleet.tensors import (
    OIP_TO_NUMPY,
    ModelSignature,
    TensorSpec,
    decode_tensor,
    encode_tensor,
    shown,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 * 1024 * 1024
DRAIN_LIMIT = 1024 * 1024
MAX_NESTING = 32
"""Deepest nesting of JSON arrays and objects in a request body: an infer request takes
three levels (request, ``inputs``, tensor) plus one per dimension of nested data."""
READ_TIMEOUT_S = 60.0
"""How long a connection may stall, mid-body or idle between keep-alive requests."""

NanPolicy = Literal["reject", "allow"]

_CONTAINERS = frozenset({list, dict})


class RequestError(Exception):
    """A request the server answers with an error status and ``{"error": reason}``."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(model: ActiveModel) -> dict[str, Any]:
    """OIP model metadata for ``model``."""
    signature = model.runtime.signature
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": model.platform,
        "inputs": [_spec_json(s) for s in signature.inputs],
        "outputs": [_spec_json(s) for s in signature.outputs],
    }


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when JSON arrays and objects in decoded ``value`` nest more than ``limit``
    deep. Level by level, descending only into containers: a long flat list costs one
    pass in C, never a Python loop over its numbers."""
    if type(value) not in _CONTAINERS:
        return False
    level = [value]
    for _ in range(limit):
        inner: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            if not _CONTAINERS.isdisjoint(map(type, children)):
                inner.extend(c for c in children if type(c) in _CONTAINERS)
        if not inner:
            return False
        level = inner
    return True


def decode_json_body(body: bytes) -> Any:
    """The JSON value of a request body; ``RequestError`` (400) when it is not valid
    UTF-8 JSON or nests deeper than ``MAX_NESTING``."""
    try:
        value = json.loads(body)
    except RecursionError as e:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"request body nested too deeply (limit {MAX_NESTING})"
        ) from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise RequestError(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {e}") from e
    # Fewer opening brackets than the limit cannot nest past it (the usual request).
    brackets = body.count(b"[") + body.count(b"{")
    if brackets > MAX_NESTING and nested_deeper_than(value, MAX_NESTING):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"request body nested too deeply (limit {MAX_NESTING})"
        )
    return value


def _check_input(index: int, obj: Any, specs: dict[str, TensorSpec]) -> TensorSpec:
    """The spec ``obj`` feeds, once its name and datatype are the model's."""
    if not isinstance(obj, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"inputs[{index}] must be a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"inputs[{index}] needs a non-empty 'name'")
    spec = specs.get(name)
    if spec is None:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"model has no input {shown(name)}")
    datatype = obj.get("datatype")
    if datatype != spec.datatype:
        known = isinstance(datatype, str) and datatype in OIP_TO_NUMPY
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"input {name!r}: datatype {shown(datatype)} != expected {spec.datatype}"
            if known
            else f"input {name!r}: unknown datatype {shown(datatype)}",
        )
    return spec


def _wanted_outputs(request: dict[str, Any], signature: ModelSignature) -> list[str] | None:
    """The output names the request asks for (None: all of them)."""
    wanted = request.get("outputs")
    if wanted is None or wanted == []:
        return None
    if not isinstance(wanted, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "'outputs' must be a list of objects with a 'name'"
        )
    known = {spec.name for spec in signature.outputs}
    names = [str(o["name"]) for o in wanted]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"model has no output {shown(unknown[0])}")
    return names


def parse_infer_request(
    body: bytes, signature: ModelSignature, *, allow_non_finite: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, Any], list[str] | None]:
    """Decode and check an OIP infer request before the model sees it.

    Returns the feeds, the request object and the output names asked for (None: all);
    ``RequestError`` (400) says what is wrong, naming the input.
    """
    request = decode_json_body(body)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "request must be an object with an 'inputs' list"
        )
    specs = {spec.name: spec for spec in signature.inputs}
    feeds: dict[str, np.ndarray] = {}
    for index, obj in enumerate(request["inputs"]):
        spec = _check_input(index, obj, specs)
        if spec.name in feeds:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"input {spec.name!r} given twice")
        try:
            _, array = decode_tensor(obj, allow_non_finite=allow_non_finite)
        except ValueError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from e
        if not spec.accepts_shape(array.shape):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"input {spec.name!r}: shape {list(array.shape)} does not fit {spec.shape}",
            )
        if array.size == 0:  # runtimes fail on these, and a failure counts against the model
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"input {spec.name!r}: shape {list(array.shape)} holds no values to infer on",
            )
        feeds[spec.name] = array
    missing = sorted(set(specs) - set(feeds))
    if missing:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"missing input {missing[0]!r}")
    return feeds, request, _wanted_outputs(request, signature)


Observer = Callable[[tuple[str, float, bool]], None]
"""Called after every inference with one (bundle_id, latency in ms, succeeded) tuple;
on the request path, so it must be cheap (``InferenceStats.record``: a deque append)."""
InputObserver = Callable[[ActiveModel, dict[str, np.ndarray], dict[str, np.ndarray]], None]
"""Called after every successful inference with the model, its inputs and its outputs
(drift scoring, shadow comparison); must not block."""


def run_inference(
    model: ActiveModel, feeds: dict[str, np.ndarray], observer: Observer | None = None
) -> dict[str, np.ndarray]:
    """The in-process inference path: the runtime call, timed for telemetry and probation."""
    started = perf_counter()
    ok = False
    try:
        outputs = model.runtime.infer(feeds)
        ok = True
        return outputs
    finally:
        if observer is not None:
            observer((model.bundle_id, (perf_counter() - started) * 1000.0, ok))


class InferenceServer:
    """Serves the current model of ``holder`` on ``host:port`` in a background thread.

    ``nan_policy`` says whether non-finite input values reach a model; a model named in
    ``nan_policy_by_model`` follows its own entry instead.
    """

    def __init__(
        self,
        holder: ModelHolder,
        *,
        host: str = "127.0.0.1",
        port: int = 8501,
        max_concurrency: int = 4,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        observer: Observer | None = None,
        input_observer: InputObserver | None = None,
        nan_policy: NanPolicy = "reject",
        nan_policy_by_model: Mapping[str, NanPolicy] | None = None,
    ) -> None:
        self.holder = holder
        self.observer = observer
        self.input_observer = input_observer
        self.max_body_bytes = max_body_bytes
        self.nan_policy = nan_policy
        self.nan_policy_by_model = dict(nan_policy_by_model or {})
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="inference-http", daemon=True
        )
        self._thread.start()
        logger.info("inference endpoint listening url=%s", self.url)

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    # -- request handling (one HTTP thread per request) -------------------------------

    def allows_non_finite(self, model_name: str) -> bool:
        """Whether NaN and ±Inf inputs reach the model named ``model_name``."""
        return self.nan_policy_by_model.get(model_name, self.nan_policy) == "allow"

    def handle_get(self, path: str) -> tuple[HTTPStatus, dict[str, Any]]:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        model = self.holder.current()
        if parts == ["v2", "health", "live"]:
            return HTTPStatus.OK, {"live": True}
        if parts == ["v2", "health", "ready"]:
            if model is None:
                return HTTPStatus.SERVICE_UNAVAILABLE, {
                    "ready": False,
                    "error": "no model installed",
                }
            return HTTPStatus.OK, {"ready": True}
        if parts == ["v2"]:
            from edgefleet.agent import __version__

            return HTTPStatus.OK, {"name": "edgefleet-agent", "version": __version__}
        if len(parts) in (3, 4) and parts[:2] == ["v2", "models"]:
            model = self._model_named(parts[2])
            if len(parts) == 3:
                return HTTPStatus.OK, model_metadata(model)
            if parts[3] == "ready":
                return HTTPStatus.OK, {"name": model.name, "ready": True}
            if parts[3] == "infer":
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, "infer takes POST")
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {shown(path, 200)}")

    def handle_post(self, path: str, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if len(parts) != 4 or parts[:2] != ["v2", "models"] or parts[3] != "infer":
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {shown(path, 200)}")
        model = self._model_named(parts[2])
        feeds, request, names = parse_infer_request(
            body, model.runtime.signature, allow_non_finite=self.allows_non_finite(model.name)
        )
        if not self.slots.acquire(blocking=False):
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "busy: too many concurrent requests")
        try:
            outputs = run_inference(model, feeds, self.observer)
        except Exception as e:  # the runtime's own errors: answer 500, keep serving
            logger.exception("inference failed model=%s", model.name)
            raise RequestError(HTTPStatus.INTERNAL_SERVER_ERROR, f"inference failed: {e}") from e
        finally:
            self.slots.release()
        if self.input_observer is not None:
            self.input_observer(model, feeds, outputs)
        if names is None:
            names = list(outputs)
        response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
        if "id" in request:
            response["id"] = request["id"]
        response["outputs"] = [encode_tensor(n, np.asarray(outputs[n])) for n in names]
        return HTTPStatus.OK, response

    def _model_named(self, name: str) -> ActiveModel:
        model = self.holder.current()
        if model is None:
            raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no model installed")
        if name != model.name:
            raise RequestError(HTTPStatus.NOT_FOUND, f"model {shown(name)} is not served here")
        return model


def _make_handler(server: InferenceServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "edgefleet-agent"
        # Headers and body go out in two writes: with Nagle on, a keep-alive client's
        # delayed ACK holds the body back ~40 ms per request.
        disable_nagle_algorithm = True
        timeout = READ_TIMEOUT_S

        def do_GET(self) -> None:
            def handle() -> tuple[HTTPStatus, dict[str, Any]]:
                self._read_body(required=False)  # ignored, but read: the next request follows
                return server.handle_get(self.path)

            self._answer(handle)

        def do_POST(self) -> None:
            self._answer(lambda: server.handle_post(self.path, self._read_body(required=True)))

        def _answer(self, handle: Callable[[], tuple[HTTPStatus, dict[str, Any]]]) -> None:
            try:
                status, body = handle()
            except RequestError as e:
                status, body = e.status, {"error": e.reason}
            except Exception as e:  # the top of a request: answer, log, keep serving
                logger.exception("request failed method=%s", self.command)
                self.close_connection = True
                status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {e}"}
            self._send(status, body)

        def _read_body(self, *, required: bool) -> bytes:
            """The whole request body, so that a keep-alive connection stays in step
            with the client; a GET may come without one."""
            raw = self.headers.get("Content-Length")
            if raw is None and not required and "Transfer-Encoding" not in self.headers:
                return b""
            try:
                length = int(raw) if raw is not None and raw.strip().isdigit() else -1
            except ValueError:  # digits int() does not read, such as "²"
                length = -1
            if length < 0:
                self.close_connection = True
                raise RequestError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            if length > server.max_body_bytes:
                # Drain a modestly oversized body so the client reads the 413 instead of a
                # reset; beyond that, close without reading (never parse it as a request).
                if length <= server.max_body_bytes + DRAIN_LIMIT:
                    remaining = length
                    while remaining > 0 and (block := self.rfile.read(min(65536, remaining))):
                        remaining -= len(block)
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"body of {length} bytes exceeds the limit of {server.max_body_bytes}",
                )
            try:
                body = self.rfile.read(length)
            except TimeoutError as e:
                self.close_connection = True
                raise RequestError(HTTPStatus.REQUEST_TIMEOUT, "timed out reading the body") from e
            if len(body) < length:
                self.close_connection = True
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"body ended after {len(body)} of {length} bytes (Content-Length)",
                )
            return body

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            except OSError as e:  # the client went away or stopped reading
                logger.debug("answer not delivered status=%s reason=%s", int(status), e)
                self.close_connection = True

        def send_error(
            self, code: int, message: str | None = None, explain: str | None = None
        ) -> None:
            """http.server's own refusals (bad request line or headers, a method no
            route takes) in the same JSON shape as every other answer."""
            status = HTTPStatus(code)
            if status is HTTPStatus.NOT_IMPLEMENTED:
                status = HTTPStatus.METHOD_NOT_ALLOWED
                message = f"method {shown(self.command)} not allowed: use GET or POST"
            logger.debug("http refused status=%d reason=%s", code, message)
            self.close_connection = True
            if self.request_version == "HTTP/0.9" and len(self.requestline.split()) != 2:
                # http.server leaves a request line with a bad version at 0.9, which
                # answers without a status line; only a bare "GET /path" is HTTP/0.9.
                self.request_version = "HTTP/1.0"
            self._send(status, {"error": message or status.phrase})

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("http %s", format % args)

    return Handler
