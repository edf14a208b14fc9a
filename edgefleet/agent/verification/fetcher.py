"""The signed repository's files over MQTT request/response: a path -> its chunks.

``MqttFetcher.stream("metadata/<file>")`` or ``stream("targets/<file>")`` pulls a
file as ``FetchRequest`` chunks on ``fleet/<dev>/up/fetch``. The control plane
answers on ``fleet/<dev>/down/fetch`` with the request's correlation data, the raw
bytes, and ``status``/``total``/``offset`` user properties. It only moves bytes:
TUF verification happens elsewhere (``edgefleet.agent.verification.tuf_client``, normally in a child
process, see ``edgefleet.agent.verification.verifier``), which is why this module never imports
python-tuf.

Several chunks are kept in flight (a window of about 1 MiB) so a download costs a
few round trips, not one per chunk. Every wait is bounded: a chunk not answered in
``timeout`` seconds is asked for again, up to ``retries`` times, each time waiting
twice as long (an overloaded control plane is not answered with more requests: the
fleet benchmark saw thousands of re-asked chunks at a fixed timeout), then the fetch
fails with ``TransferError``.

Before that, one quick re-ask (not counted in ``retries``): a request stranded on a
dead control-plane replica (the broker keeps handing a dead replica's session its
turn of the shared subscription until the session expires) is asked again after
``first_timeout`` (2 s) and goes to a live member of the group. It is made only for a
chunk the download is stuck on — the oldest one outstanding, or one that a later
request has overtaken — and only once the download has heard nothing for
``first_timeout``: a control plane that is slow but answering gets no extra requests,
one that is overloaded at most one per chunk.

Target downloads resume: with ``part_dir`` set, every in-order chunk of a
``targets/`` file is appended to ``<part_dir>/<name>.part`` as it is handed on. A
later fetch of the same path (after a broker outage or an agent restart) first
replays the ``.part`` bytes and asks the control plane only for the rest. Target
names carry their SHA-256 (consistent snapshots), so a ``.part`` can only ever
belong to the same content. Each chunk is checked as it arrives (offset, length,
constant total); TUF still checks the whole file's length and hashes, and the
verifier drops the ``.part`` files of a download that failed them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgefleet import topics
from edgefleet.agent.errors import TransferError
from edgefleet.messages import (
    FETCH_MAX_CHUNK,
    FETCH_OFFSET,
    FETCH_REASON,
    FETCH_STATUS,
    FETCH_TOTAL,
    FetchRequest,
)
from edgefleet.mqtt import Incoming, MqttLink
from edgefleet.topics import Down, Up

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 128 * 1024
DEFAULT_WINDOW = 8
FSYNC_EVERY = 1024 * 1024
MAX_BACKOFF_DOUBLINGS = 3
"""A re-asked chunk waits at most 8x ``timeout``."""
FIRST_TIMEOUT = 2.0
"""Seconds of silence before a stuck chunk's one quick re-ask (see the module docstring)."""


@dataclass
class _Pending:
    offset: int
    length: int
    correlation: bytes
    sent_at: float
    deadline: float
    attempts: int = 1
    seq: int = 0


@dataclass
class _Heard:
    """When a download last heard an answer, and the newest request answered."""

    at: float
    newest: int = -1


def part_file(part_dir: Path | None, path: str) -> Path | None:
    """Where a partial download of repository ``path`` is kept (targets only; every
    delivery path shares it, so a download broken on one resumes on another)."""
    if part_dir is None or not path.startswith("targets/"):
        return None
    return part_dir / (path.split("/", 1)[1] + ".part")


def _bounded(chunks: Generator[bytes, None, None], max_length: int) -> Iterator[bytes]:
    given = 0
    with contextlib.closing(chunks):
        for chunk in chunks:
            yield chunk
            given += len(chunk)
            if given > max_length:
                return


class MqttFetcher:
    """Fetches repository files in windowed chunks over one device's MQTT link.

    Args:
        link: the device's MQTT link; the response topic is subscribed at once.
        device_id: the device, whose fetch topics are used.
        chunk_size: bytes asked for per request (at most ``FETCH_MAX_CHUNK``).
        window: requests kept in flight at once.
        timeout: seconds before an unanswered chunk is asked again (doubling).
        retries: re-asks of one chunk, after the quick one, before the fetch fails.
        first_timeout: seconds before the quick re-ask (at most ``timeout``).
        part_dir: where partial target downloads are kept so that a broken one
            resumes; None keeps none.

    Raises:
        ValueError: ``chunk_size`` or ``window`` out of range.
    """

    def __init__(
        self,
        link: MqttLink,
        device_id: str,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        window: int = DEFAULT_WINDOW,
        timeout: float = 10.0,
        retries: int = 3,
        first_timeout: float = FIRST_TIMEOUT,
        part_dir: Path | None = None,
    ) -> None:
        if not 0 < chunk_size <= FETCH_MAX_CHUNK:
            raise ValueError(f"chunk_size must be in 1..{FETCH_MAX_CHUNK}")
        if window < 1:
            raise ValueError("window must be at least 1")
        self._link = link
        self._request_topic = topics.up(device_id, Up.FETCH)
        self._response_topic = topics.down(device_id, Down.FETCH)
        self.chunk_size = chunk_size
        self.window = window
        self.timeout = timeout
        self.retries = retries
        self.first_timeout = min(first_timeout, timeout)
        self.part_dir = Path(part_dir) if part_dir is not None else None
        self._lock = threading.Lock()
        self._waiters: dict[bytes, queue.SimpleQueue[Incoming]] = {}
        link.subscribe(self._response_topic, self.handle_response, qos=1)

    # -- network thread ---------------------------------------------------------

    def handle_response(self, incoming: Incoming) -> None:
        """Route a response to the download waiting for it; drop unmatched ones."""
        correlation = incoming.correlation
        with self._lock:
            waiter = self._waiters.pop(correlation, None) if correlation else None
        if waiter is None:
            logger.debug("dropped unmatched fetch response topic=%s", incoming.topic)
            return
        waiter.put(incoming)

    # -- fetching ------------------------------------------------------------------

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        """The bytes of repository ``path`` in order; ``TransferError`` when it fails.

        Stops asking once more than ``max_length`` bytes were handed on (the caller
        refuses such a file: a repository that serves endless data costs one chunk
        past the bound, not a full disk).

        Args:
            path: ``metadata/<file>`` or ``targets/<file>``.
            max_length: the most bytes the caller will accept.

        Raises:
            TransferError: not connected (at once), or while iterating: the
                control plane refused the file (``status`` set), answered
                inconsistently, or a chunk went unanswered through every retry.
        """
        if not self._link.connected:
            raise TransferError(f"cannot fetch {path}: not connected to the broker")
        return _bounded(self._stream(path), max_length)

    def part_path(self, path: str) -> Path | None:
        """Where a partial download of repository ``path`` is kept (targets only)."""
        return part_file(self.part_dir, path)

    def discard_parts(self) -> None:
        """Forget every partial download (after one failed its final hash check)."""
        if self.part_dir is not None and self.part_dir.is_dir():
            for part in self.part_dir.glob("*.part"):
                with contextlib.suppress(OSError):
                    part.unlink()

    def _stream(self, path: str) -> Generator[bytes, None, None]:
        part = self.part_path(path)
        start = 0
        if part is not None and part.exists():
            start = part.stat().st_size
            if start:
                logger.info("download resumed path=%s offset=%d", path, start)
                with part.open("rb") as existing:
                    while block := existing.read(1024 * 1024):
                        yield block
        logger.info("download started path=%s offset=%d", path, start)
        sink: BinaryIO | None = None
        if part is not None:
            part.parent.mkdir(parents=True, exist_ok=True)
            sink = part.open("ab")
        try:
            yield from self._stream_from(path, start, sink)
        finally:
            if sink is not None:
                sink.close()
        if part is not None:
            with contextlib.suppress(OSError):
                part.unlink()  # complete: the caller holds the bytes and checks them now

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``path`` from ``offset`` (fewer at its end), windowed as a
        download: how a blob chunk missing from the broker is had by request/response.

        Raises:
            TransferError: as ``stream``.
        """
        if not self._link.connected:
            raise TransferError(f"cannot fetch {path}: not connected to the broker")
        return b"".join(self._stream_from(path, offset, None, stop=offset + length))

    def _stream_from(
        self, path: str, start: int, sink: BinaryIO | None, *, stop: int | None = None
    ) -> Iterator[bytes]:
        responses: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        pending: dict[bytes, _Pending] = {}
        received: dict[int, bytes] = {}
        total: int | None = None
        next_request = start  # first offset not yet asked for
        next_yield = start  # first offset not yet handed on
        unsynced = 0
        sent = 0  # requests sent so far: a request's ``seq``
        heard = _Heard(at=time.monotonic())

        def send(offset: int, length: int, attempts: int = 1) -> None:
            nonlocal sent
            correlation = uuid.uuid4().bytes
            with self._lock:
                self._waiters[correlation] = responses
            # The first wait is the quick re-ask's (see ``_due``); then the doubling.
            doublings = min(max(attempts - 2, 0), MAX_BACKOFF_DOUBLINGS)
            wait = self.timeout * 2**doublings
            now = time.monotonic()
            pending[correlation] = _Pending(
                offset, length, correlation, now, now + wait, attempts, sent
            )
            sent += 1
            request = FetchRequest(path=path, offset=offset, length=length)
            self._link.publish(
                self._request_topic,
                request.to_bytes(),
                qos=1,
                correlation=correlation,
                response_topic=self._response_topic,
            )

        first = self.chunk_size if stop is None else max(1, min(self.chunk_size, stop - start))
        try:
            send(start, first, 1)
            next_request = start + first
            while total is None or next_yield < (total if stop is None else min(total, stop)):
                if next_yield in received:
                    chunk = received.pop(next_yield)
                    next_yield += len(chunk)
                    if sink is not None:
                        sink.write(chunk)
                        sink.flush()  # a killed process keeps it; fsync below for power cuts
                        unsynced += len(chunk)
                        if unsynced >= FSYNC_EVERY:
                            os.fsync(sink.fileno())
                            unsynced = 0
                    yield chunk
                    continue
                if total is not None:
                    limit = total if stop is None else min(total, stop)
                    in_flight = len(pending) + len(received)
                    while in_flight < self.window and next_request < limit:
                        length = min(self.chunk_size, limit - next_request)
                        send(next_request, length, 1)
                        next_request += length
                        in_flight += 1
                now = time.monotonic()
                wait = min(self._due(pending, heard).values(), default=now) - now
                try:
                    incoming = responses.get(timeout=max(wait, 0.0))
                except queue.Empty:
                    self._retry_expired(path, pending, send, self._due(pending, heard))
                    continue
                entry = pending.pop(incoming.correlation or b"", None)
                if entry is None:
                    continue
                heard.at = time.monotonic()
                heard.newest = max(heard.newest, entry.seq)
                total, data = self._accept(path, incoming, entry, total)
                if total is not None and next_request > total:
                    next_request = total  # the first request asked past a short file
                if data:
                    received[entry.offset] = data
                end = entry.offset + len(data)
                if len(data) < entry.length and end < total:
                    # a short answer: ask for the rest of that chunk
                    send(end, min(entry.length, total - entry.offset) - len(data), 1)
        finally:
            with self._lock:
                for correlation in pending:
                    self._waiters.pop(correlation, None)

    def _due(self, pending: dict[bytes, _Pending], heard: _Heard) -> dict[bytes, float]:
        """When each pending request is asked again.

        A first request the download is stuck on (the oldest outstanding, or one a
        later request overtook) is due ``first_timeout`` after both its sending and the
        last answer this download heard; every other request at its own deadline.
        """
        head = min(pending.values(), key=lambda p: p.offset, default=None)
        due: dict[bytes, float] = {}
        for correlation, entry in pending.items():
            due[correlation] = entry.deadline
            if entry.attempts == 1 and (entry is head or entry.seq < heard.newest):
                quick = max(entry.sent_at, heard.at) + self.first_timeout
                due[correlation] = min(entry.deadline, quick)
        return due

    def _retry_expired(
        self,
        path: str,
        pending: dict[bytes, _Pending],
        send: Callable[[int, int, int], None],
        due: dict[bytes, float],
    ) -> None:
        now = time.monotonic()
        for correlation, entry in list(pending.items()):
            if due[correlation] > now:
                continue
            del pending[correlation]
            with self._lock:
                self._waiters.pop(correlation, None)
            if entry.attempts > self.retries + 1:  # the quick re-ask is not a retry
                raise TransferError(
                    f"fetch {path} offset={entry.offset}: no answer after "
                    f"{entry.attempts} attempts (a quick re-ask after {self.first_timeout}s, "
                    f"then waits from {self.timeout}s, doubling)"
                )
            logger.warning(
                "fetch chunk timed out, retrying path=%s offset=%d attempt=%d",
                path,
                entry.offset,
                entry.attempts + 1,
            )
            send(entry.offset, entry.length, entry.attempts + 1)

    @staticmethod
    def _accept(
        path: str, incoming: Incoming, entry: _Pending, total: int | None
    ) -> tuple[int, bytes]:
        """Check one response against its request; returns (total, data)."""
        props = incoming.user_properties
        try:
            status = int(props.get(FETCH_STATUS, "0"))
        except ValueError:
            status = 0
        if status != 200:
            reason = props.get(FETCH_REASON) or f"fetch of {path} refused"
            raise TransferError(f"{path}: {reason}", status=status or 500)
        try:
            claimed_total = int(props[FETCH_TOTAL])
            offset = int(props.get(FETCH_OFFSET, str(entry.offset)))
        except (KeyError, ValueError) as e:
            raise TransferError(f"fetch {path}: response lacks a valid total/offset") from e
        if entry.offset > claimed_total:
            raise TransferError(f"fetch {path}: resume offset {entry.offset} past its end")
        if offset != entry.offset:
            raise TransferError(f"fetch {path}: asked offset {entry.offset}, got {offset}")
        if total is not None and claimed_total != total:
            raise TransferError(f"fetch {path}: file length changed during download")
        data = incoming.payload
        expected = max(0, min(entry.length, claimed_total - entry.offset))
        if len(data) > expected or (expected and not data):
            raise TransferError(
                f"fetch {path} offset={entry.offset}: got {len(data)} bytes, expected {expected}"
            )
        return claimed_total, data
