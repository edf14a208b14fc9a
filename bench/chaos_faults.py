"""Network faults for ``bench/chaos.py``: a TCP proxy in front of the broker.

``FaultProxy`` listens on one loopback port per *route* and forwards every connection
made to it to one upstream (the broker). An agent configured with a route's port as
its broker reaches the broker only through that route, so a route is a network link
the benchmark can break:

``stall``  stop forwarding in both directions and keep every socket open (a black
           hole: the peers notice only through their keepalives, and new connections
           are accepted but go nowhere);
``cut``    close the route's connections (RST) and close new ones at once (a partition
           the peers notice immediately);
``heal``   forward again; stalled connections carry on where they stopped.

It runs an asyncio loop on a thread of its own; its methods are called from any
other thread and return once the change is in effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

BLOCK = 64 * 1024
CALL_TIMEOUT_S = 10.0
T = TypeVar("T")


class LinkState(StrEnum):
    UP = "up"
    STALLED = "stalled"
    CUT = "cut"


@dataclass
class _Route:
    name: str
    server: asyncio.Server
    flowing: asyncio.Event
    state: LinkState = LinkState.UP
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    transports: set[asyncio.BaseTransport] = field(default_factory=set)
    connections: int = 0

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])


class FaultProxy:
    """TCP routes to ``upstream_host:upstream_port`` that can be stalled, cut and healed."""

    def __init__(self, upstream_host: str, upstream_port: int, *, bind: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.bind = bind
        self._routes: dict[str, _Route] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    # -- control (any thread) ------------------------------------------------------------

    def add_route(self, name: str) -> int:
        """Open a route on a free loopback port; returns the port."""
        return self._call(self._add_route(name))

    def port(self, name: str) -> int:
        return self._routes[name].port

    def state(self, name: str) -> LinkState:
        return self._routes[name].state

    def connections(self, name: str) -> int:
        """Connections accepted on ``name`` so far (reconnects show here)."""
        return self._routes[name].connections

    def stall(self, name: str) -> None:
        self._call(self._set(name, LinkState.STALLED))

    def cut(self, name: str) -> None:
        self._call(self._set(name, LinkState.CUT))

    def heal(self, name: str) -> None:
        self._call(self._set(name, LinkState.UP))

    def close(self) -> None:
        """Close every route and stop the loop."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(TimeoutError, RuntimeError):
            self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)

    # -- the loop ------------------------------------------------------------------------

    async def _add_route(self, name: str) -> int:
        if name in self._routes:
            raise ValueError(f"route {name} exists")
        flowing = asyncio.Event()
        flowing.set()
        holder: list[_Route] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(holder[0], reader, writer)

        server = await asyncio.start_server(accept, self.bind, 0)
        route = _Route(name=name, server=server, flowing=flowing)
        holder.append(route)
        self._routes[name] = route
        logger.info("proxy route open name=%s port=%d", name, route.port)
        return route.port

    async def _set(self, name: str, state: LinkState) -> None:
        route = self._routes[name]
        route.state = state
        if state is LinkState.UP:
            route.flowing.set()
        elif state is LinkState.STALLED:
            route.flowing.clear()
        else:
            route.flowing.clear()
            for transport in list(route.transports):
                abort = getattr(transport, "abort", None)
                if abort is not None:
                    abort()
            for task in list(route.tasks):
                task.cancel()
        logger.info("proxy route name=%s state=%s", name, state)

    async def _close_all(self) -> None:
        for route in self._routes.values():
            route.server.close()
            await self._set(route.name, LinkState.CUT)

    async def _serve(
        self, route: _Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        route.connections += 1
        if route.state is LinkState.CUT:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        route.tasks.add(task)
        route.transports.add(writer.transport)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            await route.flowing.wait()  # a stalled route accepts, then goes nowhere
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                return  # broker down: the client sees its connection closed
            route.transports.add(upstream_writer.transport)
            for w in (writer, upstream_writer):
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pumps = [
                asyncio.ensure_future(self._pump(route, reader, upstream_writer)),
                asyncio.ensure_future(self._pump(route, upstream_reader, writer)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
        except asyncio.CancelledError:
            pass
        finally:
            route.tasks.discard(task)
            writers = [writer] if upstream_writer is None else [writer, upstream_writer]
            for w in writers:
                route.transports.discard(w.transport)
                w.transport.abort()

    @staticmethod
    async def _pump(
        route: _Route, source: asyncio.StreamReader, sink: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError):
            while True:
                await route.flowing.wait()
                data = await source.read(BLOCK)
                if not data:
                    return
                await route.flowing.wait()  # data read just before a stall waits here
                sink.write(data)
                await sink.drain()
