"""The local inference endpoint: Open Inference Protocol (KServe v2) REST on stdlib HTTP.

Applications on the device call ``POST /v2/models/{name}/infer``, one route per model
the agent hosts, and ``GET /v2/models`` lists them; routes live in a table
(``edgefleet.agent.inference.routes``) that other modules extend with ``add_route``. The server is
``http.server.ThreadingHTTPServer`` so the agent stays light (no web framework).
Concurrency is bounded by a semaphore: when every slot is busy the request gets
503 at once instead of queueing behind the model, and bodies above a bound get 413.
It takes the model from its name's ``ModelHolder`` per request, counted in flight, so it
keeps answering with the old model during an install and switches the instant the
holder is swapped; the old model is let go only once drained.

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

Binary tensors (``Inference-Header-Content-Length``, ``binary_data_size``,
``binary_data_output``) follow OIP's binary tensor data extension (:mod:`.binary`), and
``unix_socket`` adds a Unix domain socket listener serving the same routes
(:mod:`.unix_socket`). Per request the cost is kept to what the request needs, because
on a small board it is the endpoint's and not the model's time that callers wait for:
connections stay open (HTTP/1.1), headers are read without ``email``'s parser
(:mod:`.headers`), and an answer leaves in one ``sendmsg`` with tensor bytes sent from
numpy's own buffer (``bench/endpoint_speed.py`` measures it).

Decoding and checking a request is in :mod:`.protocol`; this module is the HTTP side.
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

import numpy as np

from edgefleet.agent.inference import binary
from edgefleet.agent.inference.feedback import AnswerBook, request_id_of
from edgefleet.agent.inference.headers import HeaderError, read_headers
from edgefleet.agent.inference.protocol import (
    InferRequest,
    RequestError,
    model_metadata,
    parse_infer_request,
)
from edgefleet.agent.inference.routes import Answer, Handler, Request, RouteTable
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, ModelTable
from edgefleet.agent.inference.unix_socket import UnixHTTPServer
from edgefleet.tensors import (
    encode_tensor,
    shown,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 * 1024 * 1024
DRAIN_LIMIT = 1024 * 1024
READ_TIMEOUT_S = 60.0
_IOV_MAX = 1024
"""How long a connection may stall, mid-body or idle between keep-alive requests."""

NanPolicy = Literal["reject", "allow"]

Observer = Callable[[tuple[str, float, bool]], None]
"""Called after every inference with one (bundle_id, latency in ms, succeeded) tuple;
on the request path, so it must be cheap (``InferenceStats.record``: a deque append)."""
AgentRoutes = Callable[[str, list[str], bytes], tuple[HTTPStatus, dict[str, Any]]]
"""The agent's own routes under ``/v2/agent/update-lock``: (method, path parts after
it, body) -> (status, JSON body); refusals are answers too, never exceptions."""
OutcomeRoute = Callable[[ActiveModel, bytes], tuple[HTTPStatus, dict[str, Any]]]
"""``POST /v2/models/{name}/outcome`` for the model served under that name
(``edgefleet.agent.inference.outcomes.OutcomeRecorder.handle``)."""
FlagRoutes = Callable[[str, list[str]], tuple[HTTPStatus, dict[str, Any]]]
"""``/v2/flags[/<name>]``: (method, path parts after ``flags``) -> (status, JSON body)
(``edgefleet.agent.remote_config``)."""
ArmChooser = Callable[
    [ActiveModel, str], AbstractContextManager[tuple[ActiveModel, dict[str, Any] | None]]
]
"""Which model answers a request (the active one, or an experiment's challenger) and the
``parameters`` its answer carries (``edgefleet.agent.inference.split.RequestSplit.serve``)."""
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
    """Serves the models of ``models`` on ``host:port`` in a background thread.

    ``models`` is a ``ModelTable`` (one holder per model name: the agent), or a single
    ``ModelHolder`` (whatever model it holds, under that model's own name). Requests go
    through a route table (``edgefleet.agent.inference.routes``); other modules add
    theirs with ``add_route``. ``nan_policy`` says whether non-finite input values
    reach a model; a model named in ``nan_policy_by_model`` follows its own entry.
    """

    def __init__(
        self,
        models: ModelTable | ModelHolder,
        *,
        host: str = "127.0.0.1",
        port: int = 8501,
        max_concurrency: int = 4,
        max_body_bytes: int = DEFAULT_MAX_BODY,
        observer: Observer | None = None,
        input_observer: InputObserver | None = None,
        nan_policy: NanPolicy = "reject",
        nan_policy_by_model: Mapping[str, NanPolicy] | None = None,
        agent_routes: AgentRoutes | None = None,
        outcome_route: OutcomeRoute | None = None,
        flag_routes: FlagRoutes | None = None,
        answers: AnswerBook | None = None,
        unix_socket: str | Path | None = None,
    ) -> None:
        self.models = models if isinstance(models, ModelTable) else ModelTable.single(models)
        self.answers = answers  # request id -> answer, for /feedback (.feedback)
        self.choose_arm: ArmChooser | None = None  # an experiment's request split (.split)
        self.observer = observer
        self.input_observer = input_observer
        self.max_body_bytes = max_body_bytes
        self.nan_policy = nan_policy
        self.nan_policy_by_model = dict(nan_policy_by_model or {})
        self.slots = threading.BoundedSemaphore(max_concurrency)
        self.routes = RouteTable()
        self._add_oip_routes()
        if agent_routes is not None:
            self.add_agent_routes("/v2/agent/update-lock", agent_routes)
        if outcome_route is not None:
            self.add_route(
                "POST",
                "/v2/models/{name}/outcome",
                lambda request: outcome_route(self._model(request), request.body),
            )
        if flag_routes is not None:
            self.add_route("GET", "/v2/flags/*", lambda request: flag_routes("GET", request.rest))
        self.add_route("POST", "/v2/models/{name}/feedback", self._feedback)
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        # Applications on the device may call over a Unix socket instead: the same
        # routes, no TCP stack, and access governed by the socket file's mode.
        self._unix: UnixHTTPServer | None = None
        if unix_socket is not None:
            self._unix = UnixHTTPServer(Path(unix_socket), _make_handler(self, tcp=False))
        self._threads: list[threading.Thread] = []

    def add_route(self, method: str, pattern: str, handler: Handler) -> None:
        """Answer ``method`` on ``pattern`` (``/v2/models/{name}/feedback``) with ``handler``."""
        self.routes.add(method, pattern, handler)

    def add_agent_routes(self, prefix: str, routes: AgentRoutes) -> None:
        """Hand GET, POST and DELETE under ``prefix`` to ``routes`` (method, the path
        parts after the prefix, body): how the update lock plugs in."""
        for method in ("GET", "POST", "DELETE"):
            self.add_route(
                method,
                f"{prefix}/*",
                lambda request: routes(request.method, request.rest, request.body),
            )

    def _add_oip_routes(self) -> None:
        add = self.add_route
        add("GET", "/v2/health/live", lambda _r: (HTTPStatus.OK, {"live": True}))
        add("GET", "/v2/health/ready", self._ready)
        add("GET", "/v2", self._server_metadata)
        add("GET", "/v2/models", self._list_models)
        add("GET", "/v2/models/{name}", lambda r: (HTTPStatus.OK, model_metadata(self._model(r))))
        add("GET", "/v2/models/{name}/ready", self._model_ready)
        add("POST", "/v2/models/{name}/infer", self._infer)

    @property
    def port(self) -> int:
        """The bound port (useful when constructed with port 0)."""
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self._httpd.server_address[0])
        return f"http://{host}:{self.port}"

    @property
    def unix_socket(self) -> Path | None:
        """The Unix socket's path, when the endpoint listens on one."""
        return self._unix.path if self._unix is not None else None

    def start(self) -> None:
        servers: list[tuple[str, ThreadingHTTPServer | UnixHTTPServer]] = [
            ("inference-http", self._httpd)
        ]
        if self._unix is not None:
            servers.append(("inference-unix", self._unix))
        for name, httpd in servers:
            thread = threading.Thread(target=httpd.serve_forever, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("inference endpoint listening url=%s unix=%s", self.url, self.unix_socket)

    def stop(self) -> None:
        if self._threads:
            self._httpd.shutdown()
            if self._unix is not None:
                self._unix.shutdown()
            for thread in self._threads:
                thread.join(timeout=5)
            self._threads = []
        self._httpd.server_close()
        if self._unix is not None:
            self._unix.server_close()

    # -- request handling (one HTTP thread per request) -------------------------------

    def allows_non_finite(self, model_name: str) -> bool:
        """Whether NaN and ±Inf inputs reach the model named ``model_name``."""
        return self.nan_policy_by_model.get(model_name, self.nan_policy) == "allow"

    def dispatch(
        self, method: str, path: str, body: bytes = b"", header_length: int | None = None
    ) -> Answer:
        """Answer one request through the route table (``RequestError`` for a refusal);
        ``header_length`` is a binary request's ``Inference-Header-Content-Length``."""
        return self.routes.dispatch(method, path, body, header_length)

    def _ready(self, _request: Request) -> Answer:
        if not self.models.models():
            return HTTPStatus.SERVICE_UNAVAILABLE, {"ready": False, "error": "no model installed"}
        return HTTPStatus.OK, {"ready": True}

    def _server_metadata(self, _request: Request) -> Answer:
        from edgefleet.agent import __version__

        return HTTPStatus.OK, {"name": "edgefleet-agent", "version": __version__}

    def _list_models(self, _request: Request) -> Answer:
        """Every model served here, with the bundle and release it comes from."""
        return HTTPStatus.OK, {
            "models": [
                {
                    "name": m.name,
                    "version": m.version,
                    "platform": m.platform,
                    "bundle_id": m.bundle_id,
                    "release": m.release,
                    "ready": True,
                }
                for m in self.models.models()
            ]
        }

    def _feedback(self, request: Request) -> Answer:
        if self.answers is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "feedback is not kept on this device")
        return self.answers.handle(self._model(request).name, request.body)

    def _model_ready(self, request: Request) -> Answer:
        return HTTPStatus.OK, {"name": self._model(request).name, "ready": True}

    def _model(self, request: Request) -> ActiveModel:
        name = request.params["name"]
        holder = self.models.find(name)
        model = holder.current() if holder is not None else None
        if model is None:
            if not self.models.models():
                raise RequestError(HTTPStatus.SERVICE_UNAVAILABLE, "no model installed")
            raise RequestError(HTTPStatus.NOT_FOUND, f"model {shown(name)} is not served here")
        return model

    def _infer(self, request: Request) -> Answer:
        name = request.params["name"]
        holder = self.models.find(name)
        if holder is None:
            self._model(request)  # raises: 503 with no model at all, 404 otherwise
            raise AssertionError("unreachable")
        # The model is taken once and counted in flight: a swap meanwhile lets this
        # request finish on it, and the installer drains it before letting it go.
        with holder.serve() as model:
            if model is None or model.name != name:  # swapped out between find and serve
                raise RequestError(HTTPStatus.NOT_FOUND, f"model {shown(name)} is not served here")
            return self._infer_on(model, request.body, request.header_length)

    def _infer_on(self, model: ActiveModel, body: bytes, header_length: int | None) -> Answer:
        parsed = parse_infer_request(
            body,
            model.runtime.signature,
            allow_non_finite=self.allows_non_finite(model.name),
            header_length=header_length,
        )
        request_id = request_id_of(parsed.request)
        if self.choose_arm is None:
            return self._answer_on(model, model, parsed, request_id, None)
        with self.choose_arm(model, request_id) as (served, parameters):
            return self._answer_on(model, served, parsed, request_id, parameters)

    def _answer_on(
        self,
        active: ActiveModel,
        model: ActiveModel,
        parsed: InferRequest,
        request_id: str,
        parameters: dict[str, Any] | None,
    ) -> Answer:
        """Run ``model`` (``active``, or the challenger answering for it) on ``parsed``."""
        feeds, names = parsed.feeds, parsed.outputs
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
            self.input_observer(active, feeds, outputs)
        if names is None:
            names = list(outputs)
        response: dict[str, Any] = {"model_name": model.name, "model_version": model.version}
        response["id"] = request_id
        if parameters is not None:
            response["parameters"] = parameters
        if self.answers is not None:
            self.answers.record(model, response["id"], feeds, outputs)
        blobs: list[memoryview] = []
        encoded = []
        for n in names:
            if parsed.binary(n):
                tensor, blob = binary.encode_binary_output(n, np.asarray(outputs[n]))
                blobs.append(blob)
                encoded.append(tensor)
            else:
                encoded.append(encode_tensor(n, np.asarray(outputs[n])))
        response["outputs"] = encoded
        if blobs:
            return HTTPStatus.OK, binary.BinaryAnswer(response, blobs)
        return HTTPStatus.OK, response


def _make_handler(server: InferenceServer, *, tcp: bool = True) -> type[BaseHTTPRequestHandler]:
    """The request handler class for ``server``'s TCP listener (``tcp``) or its Unix one."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "edgefleet-agent"
        # An answer goes out in one sendmsg, but a client's request may not arrive in
        # one write: with Nagle on, delayed ACKs cost ~40 ms. No such option on AF_UNIX.
        disable_nagle_algorithm = tcp
        timeout = READ_TIMEOUT_S

        def parse_request(self) -> bool:
            """The request line as http.server reads it (same refusals), then the
            headers read by :mod:`.headers`: no ``email`` parser on every request."""
            self.command = ""
            self.request_version = self.default_request_version
            self.close_connection = True
            raw: bytes = self.raw_requestline  # type: ignore[attr-defined]
            self.requestline = str(raw, "iso-8859-1").rstrip("\r\n")
            words = self.requestline.split()
            if not words:
                return False
            if len(words) >= 3:
                number = _http_version(words[-1])
                if number is None:
                    self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({words[-1]!r})")
                    return False
                if number >= (1, 1):
                    self.close_connection = False
                if number >= (2, 0):
                    self.send_error(
                        HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({words[-1]})"
                    )
                    return False
                self.request_version = words[-1]
            if not 2 <= len(words) <= 3:
                self.send_error(
                    HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})"
                )
                return False
            command, path = words[:2]
            if len(words) == 2:
                self.close_connection = True
                if command != "GET":
                    self.send_error(
                        HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})"
                    )
                    return False
            self.command, self.path = command, path
            if self.path.startswith("//"):  # gh-87389: never a scheme-relative URL
                self.path = "/" + self.path.lstrip("/")
            try:
                self.headers = read_headers(self.rfile)  # type: ignore[assignment]
            except HeaderError as e:
                status = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
                if not str(e).startswith(("Line too long", "Too many headers")):
                    status = HTTPStatus.BAD_REQUEST
                self.send_error(status, str(e))
                return False
            connection = (self.headers.get("Connection") or "").lower()
            if connection == "close":
                self.close_connection = True
            elif connection == "keep-alive" and self.protocol_version >= "HTTP/1.1":
                self.close_connection = False
            expect = (self.headers.get("Expect") or "").lower()
            if expect == "100-continue" and self.request_version >= "HTTP/1.1":
                return self.handle_expect_100()
            return True

        def do_GET(self) -> None:
            def handle() -> tuple[HTTPStatus, dict[str, Any]]:
                self._read_body(required=False)  # ignored, but read: the next request follows
                return server.dispatch("GET", self.path)

            self._answer(handle)

        def do_POST(self) -> None:
            def handle() -> tuple[HTTPStatus, dict[str, Any]]:
                body = self._read_body(required=True)
                try:
                    length = binary.header_length(self.headers.get(binary.HEADER), len(body))
                except ValueError as e:
                    raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from e
                return server.dispatch("POST", self.path, body, length)

            self._answer(handle)

        def do_DELETE(self) -> None:
            self._answer(
                lambda: server.dispatch("DELETE", self.path, self._read_body(required=False))
            )

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
            blobs = body.blobs if isinstance(body, binary.BinaryAnswer) else []
            content_type = binary.CONTENT_TYPE if blobs else "application/json"
            lines = [
                f"{self.protocol_version} {status.value} {status.phrase}",
                f"Server: {self.server_version}",
                f"Date: {_http_date()}",
                f"Content-Type: {content_type}",
                f"Content-Length: {len(data) + sum(blob.nbytes for blob in blobs)}",
            ]
            if blobs:
                lines.append(f"{binary.HEADER}: {len(data)}")
            if self.close_connection:
                lines.append("Connection: close")
            # An HTTP/0.9 request (a bare "GET /path") is answered with the body alone.
            head = b"" if self.request_version == "HTTP/0.9" else _head(lines)
            try:
                # One system call for the whole answer, tensors sent from where numpy
                # holds them: every extra write is a wake-up of the client and a copy.
                parts: list[bytes | memoryview] = [head]
                if self.command != "HEAD":
                    parts += [data, *blobs]
                send_all(self.connection, parts)
                if logger.isEnabledFor(logging.DEBUG):
                    self.log_request(int(status))
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


def send_all(sock: socket.socket, parts: list[bytes | memoryview]) -> None:
    """Write ``parts`` to ``sock`` in as few ``sendmsg`` calls as the kernel allows
    (gather I/O: nothing is joined into one buffer first)."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = sock.sendmsg(views[:_IOV_MAX])
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    """The ``Date`` header, formatted once a second rather than once a request."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, usegmt=True))
    return _date_cache[1]


def _head(lines: list[str]) -> bytes:
    """A response's status line and header lines, as one block."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _http_version(word: str) -> tuple[int, int] | None:
    """(major, minor) of ``HTTP/x.y`` as http.server accepts it; None when malformed."""
    if not word.startswith("HTTP/"):
        return None
    parts = word[5:].split(".")
    if len(parts) != 2 or not all(p.isdigit() and len(p) <= 10 for p in parts):
        return None
    return int(parts[0]), int(parts[1])
