"""The local inference endpoint: Open Inference Protocol (KServe v2) REST on stdlib HTTP.

Applications on the device call ``POST /v2/models/{name}/infer``. The server is
``http.server.ThreadingHTTPServer`` so the agent stays light (no web framework).
Concurrency is bounded by a semaphore: when every slot is busy the request gets
503 at once instead of queueing behind the model, and bodies above a bound get 413.
It reads the model from a ``ModelHolder`` per request, so it keeps answering with the
old model during an install and switches the instant the holder is swapped.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import perf_counter
from typing import Any

import numpy as np

from agent.runtime import ActiveModel, ModelHolder
from edgefleet.tensors import ModelSignature, TensorSpec, decode_tensor, encode_tensor

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 * 1024 * 1024
DRAIN_LIMIT = 1024 * 1024


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


def parse_infer_request(
    body: bytes, signature: ModelSignature
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Decode and check an OIP infer request; returns (feeds, request object)."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {e}") from e
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "request must be an object with an 'inputs' list"
        )
    specs = {spec.name: spec for spec in signature.inputs}
    feeds: dict[str, np.ndarray] = {}
    for obj in request["inputs"]:
        try:
            name, array = decode_tensor(obj)
        except ValueError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from e
        spec = specs.get(name)
        if spec is None:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"model has no input {name!r}")
        if name in feeds:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"input {name!r} given twice")
        if obj["datatype"] != spec.datatype:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"input {name!r}: datatype {obj['datatype']} != expected {spec.datatype}",
            )
        if not spec.accepts_shape(array.shape):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"input {name!r}: shape {list(array.shape)} does not fit {spec.shape}",
            )
        feeds[name] = array
    missing = sorted(set(specs) - set(feeds))
    if missing:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"missing input {missing[0]!r}")
    return feeds, request


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
    """Serves the current model of ``holder`` on ``host:port`` in a background thread."""

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
    ) -> None:
        self.holder = holder
        self.observer = observer
        self.input_observer = input_observer
        self.max_body_bytes = max_body_bytes
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
            from agent import __version__

            return HTTPStatus.OK, {"name": "edgefleet-agent", "version": __version__}
        if len(parts) in (3, 4) and parts[:2] == ["v2", "models"]:
            model = self._model_named(parts[2])
            if len(parts) == 3:
                return HTTPStatus.OK, model_metadata(model)
            if parts[3] == "ready":
                return HTTPStatus.OK, {"name": model.name, "ready": True}
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {path}")

    def handle_post(self, path: str, body: bytes) -> tuple[HTTPStatus, dict[str, Any]]:
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        if len(parts) != 4 or parts[:2] != ["v2", "models"] or parts[3] != "infer":
            raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {path}")
        model = self._model_named(parts[2])
        feeds, request = parse_infer_request(body, model.runtime.signature)
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
        wanted = request.get("outputs")
        names = list(outputs)
        if isinstance(wanted, list) and wanted:
            names = [str(o.get("name")) for o in wanted if isinstance(o, dict)]
            unknown = [n for n in names if n not in outputs]
            if unknown:
                raise RequestError(HTTPStatus.BAD_REQUEST, f"model has no output {unknown[0]!r}")
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
            raise RequestError(HTTPStatus.NOT_FOUND, f"model {name!r} is not served here")
        return model


def _make_handler(server: InferenceServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "edgefleet-agent"
        # Headers and body go out in two writes: with Nagle on, a keep-alive client's
        # delayed ACK holds the body back ~40 ms per request.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            try:
                status, body = server.handle_get(self.path)
            except RequestError as e:
                status, body = e.status, {"error": e.reason}
            self._send(status, body)

        def do_POST(self) -> None:
            try:
                status, body = server.handle_post(self.path, self._read_body())
            except RequestError as e:
                status, body = e.status, {"error": e.reason}
            self._send(status, body)

        def _read_body(self) -> bytes:
            raw = self.headers.get("Content-Length")
            try:
                length = int(raw) if raw is not None else -1
            except ValueError:
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
            return self.rfile.read(length)

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("http %s", format % args)

    return Handler
