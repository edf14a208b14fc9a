"""The endpoint's route table: (method, path pattern) -> handler, matched segment by segment.

Why a table: the agent's endpoint grows small routes owned by other modules (the update
lock, feedback, flags...). Each registers itself with one call instead of editing an
``if`` chain in the server::

    server.add_route("POST", "/v2/models/{name}/outcome", handle_outcome)
    server.add_route("GET", "/v2/flags/*", handle_flags)
    server.add_route("DELETE", "/v2/agent/update-lock/*", handle_lock)

A pattern's segments are literals, ``{param}`` (one segment, handed to the handler in
``Request.params``) or a final ``*`` (any further segments, in ``Request.rest``). A
path that matches some route but not for this method answers 405 naming the methods it
takes; a path no route matches answers 404. Handlers return ``(status, JSON body)`` and
refuse by raising ``RequestError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from edgefleet.agent.inference.protocol import RequestError
from edgefleet.tensors import shown

Answer = tuple[HTTPStatus, dict[str, Any]]
MATCH_CACHE = 256
"""Most (method, path) pairs whose route is remembered."""


@dataclass(frozen=True)
class Request:
    """One request as a route handler sees it."""

    method: str
    path: str
    body: bytes = b""
    params: dict[str, str] = field(default_factory=dict)
    rest: list[str] = field(default_factory=list)
    header_length: int | None = None
    """``Inference-Header-Content-Length``: the body is a JSON header of this many bytes
    followed by raw tensor bytes (``edgefleet.agent.inference.binary``); None: all JSON."""


Handler = Callable[[Request], Answer]


def path_parts(path: str) -> list[str]:
    """The non-empty segments of ``path`` without its query string."""
    return [p for p in path.split("?", 1)[0].split("/") if p]


@dataclass(frozen=True)
class _Route:
    method: str
    segments: tuple[str, ...]
    handler: Handler

    def match(self, parts: list[str]) -> tuple[dict[str, str], list[str]] | None:
        wildcard = bool(self.segments) and self.segments[-1] == "*"
        fixed = self.segments[:-1] if wildcard else self.segments
        if len(parts) < len(fixed) or (not wildcard and len(parts) != len(fixed)):
            return None
        params: dict[str, str] = {}
        for segment, part in zip(fixed, parts, strict=False):
            if segment.startswith("{") and segment.endswith("}"):
                params[segment[1:-1]] = part
            elif segment != part:
                return None
        return params, parts[len(fixed) :]


class RouteTable:
    """Routes in the order added; the first whose pattern and method match answers."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []
        # (method, path) -> the route and its match: the same few paths come again and
        # again, and matching every pattern in turn was a tenth of a request's cost.
        self._matched: dict[tuple[str, str], tuple[_Route, dict[str, str], list[str]]] = {}

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        """Answer ``method`` on paths matching ``pattern`` with ``handler``."""
        self._routes.append(_Route(method.upper(), tuple(path_parts(pattern)), handler))
        self._matched = {}

    def dispatch(
        self, method: str, path: str, body: bytes = b"", header_length: int | None = None
    ) -> Answer:
        """Run the handler of the route ``method path`` matches.

        Raises:
            RequestError: 404 when no route matches the path, 405 when routes match it
                for other methods only, or the handler's own refusal.
        """
        known = self._matched.get((method, path))
        if known is not None:
            route, params, rest = known
            return route.handler(
                Request(method, path, body, dict(params), list(rest), header_length)
            )
        parts = path_parts(path)
        allowed: list[str] = []
        for route in self._routes:
            found = route.match(parts)
            if found is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            params, rest = found
            if len(self._matched) >= MATCH_CACHE:
                self._matched.clear()  # bounded: a caller trying many paths cannot grow it
            self._matched[(method, path)] = (route, dict(params), list(rest))
            return route.handler(Request(method, path, body, params, rest, header_length))
        if allowed:
            raise RequestError(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{shown(path, 200)} takes {', '.join(sorted(set(allowed)))}",
            )
        raise RequestError(HTTPStatus.NOT_FOUND, f"no such endpoint {shown(path, 200)}")
