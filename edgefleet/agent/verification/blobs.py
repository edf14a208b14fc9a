"""Targets from the broker's retained, content-addressed chunks, so the cloud sends them once.

The control plane publishes each target of a live rollout once, retained, as
``fleet/all/down/blobs/<sha256>/<n>`` chunks and a ``.../<sha256>/index``
(``edgefleet.messages.BlobIndex``); the broker, not the control plane, then serves
every device. ``BlobFetcher.stream("targets/<sha256>.<name>")``:

1. subscribes to the index (retained: the broker sends it right after the SUBACK
   when the target is published); without one within ``grace`` s of the SUBACK the
   whole file comes from the request/response ``fallback`` (``MqttFetcher``), as
   before;
2. replays the ``.part`` file a broken download left (the same file the fallback
   keeps, so either path resumes the other's bytes) and goes on at the chunk where
   it stopped;
3. keeps ``window`` chunk subscriptions open at once (each delivers its retained
   chunk, then is dropped), so a device holds about ``window`` chunks in memory and
   the broker paces it, whatever the target's size;
4. a chunk that does not come within ``grace`` s of its SUBACK, or comes with the
   wrong length,
   is asked for by request/response (``MqttFetcher.read_range``); after
   ``MAX_MISSES`` such chunks in a row the rest of the file is (the blobs were cleared
   mid-download).

The bytes are checked as today: chunk lengths here, the whole file's length and
SHA-256 by TUF once it is reassembled. Metadata comes from the broker's retained
copies too when the control plane published them
(``edgefleet.agent.verification.metadata``), else from the fallback, like anything
not named by its hash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from edgefleet import topics
from edgefleet.agent.errors import TransferError
from edgefleet.agent.verification.fetcher import FSYNC_EVERY, MqttFetcher, _bounded
from edgefleet.agent.verification.metadata import RetainedMetadata
from edgefleet.errors import MessageError
from edgefleet.messages import BlobIndex, decode_as
from edgefleet.mqtt import Incoming, MqttLink

logger = logging.getLogger(__name__)

TARGET_RE = re.compile(r"^targets/([0-9a-f]{64})\.[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_MISSES = 2
"""Chunks missing in a row before the rest of the file comes by request/response."""


def target_sha256(path: str) -> str | None:
    """The SHA-256 a consistent-snapshot target path names, or None for anything else."""
    match = TARGET_RE.fullmatch(path)
    return match.group(1) if match else None


class BlobFetcher:
    """Targets from retained blob chunks, the rest (and what is missing) from ``fallback``.

    Args:
        link: the device's MQTT link.
        fallback: request/response over the same link; owns the ``.part`` files.
        window: chunk subscriptions open at once.
        grace: seconds a retained message (index or chunk) may take after its
            subscription's SUBACK before it counts as missing.
        subscribe_wait: seconds a SUBACK may take (a loaded broker) before the
            message counts as missing all the same.
    """

    def __init__(
        self,
        link: MqttLink,
        fallback: MqttFetcher,
        *,
        window: int = 4,
        grace: float = 5.0,
        subscribe_wait: float = 30.0,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._link = link
        self.fallback = fallback
        self.window = window
        self.grace = grace
        self.subscribe_wait = subscribe_wait
        self.chunks_from_blobs = 0
        self.chunks_from_fallback = 0
        self.metadata = RetainedMetadata(link, fallback, grace=grace, subscribe_wait=subscribe_wait)

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        """``path``'s bytes in order, bounded like ``MqttFetcher.stream``.

        Raises:
            TransferError: not connected, or (while iterating) the fallback failed.
        """
        sha = target_sha256(path)
        if sha is None:
            return self.metadata.stream(path, max_length)
        if not self._link.connected:
            raise TransferError(f"cannot fetch {path}: not connected to the broker")
        return _bounded(self._stream(path, sha), max_length)

    def discard_parts(self) -> None:
        """Forget every partial download (one failed its final hash check)."""
        self.fallback.discard_parts()

    # -- one download --------------------------------------------------------------

    def _index(self, sha: str) -> BlobIndex | None:
        answers: queue.SimpleQueue[Incoming | None] = queue.SimpleQueue()
        topic = topics.blob_index(sha)
        acked: list[float] = []

        def on_subscribed() -> None:
            acked.append(time.monotonic())
            answers.put(None)  # wakes the wait: from now on only ``grace`` more

        started = time.monotonic()
        self._link.subscribe(topic, answers.put, qos=1, on_subscribed=on_subscribed)
        try:
            while True:
                deadline = acked[-1] + self.grace if acked else started + self.subscribe_wait
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                try:
                    incoming = answers.get(timeout=left)
                except queue.Empty:
                    continue
                if incoming is None or not incoming.payload:
                    continue  # a SUBACK, or a cleared index
                try:
                    index = decode_as(incoming.payload, BlobIndex, topic=topic)
                except MessageError as e:
                    logger.warning("blob index refused sha256=%s reason=%s", sha, e.reason)
                    return None
                return index if index.sha256 == sha else None
        finally:
            self._link.unsubscribe(topic)

    def _stream(self, path: str, sha: str) -> Generator[bytes, None, None]:
        index = self._index(sha)
        if index is None:
            logger.warning("no blob index, fetching by request sha256=%s", sha)
            yield from self.fallback.stream(path, 2**63)
            return
        part = self.fallback.part_path(path)
        start = 0
        if part is not None and part.exists():
            start = part.stat().st_size
            if start > index.size:
                with contextlib.suppress(OSError):
                    part.unlink()
                start = 0
            elif start:
                logger.info("blob download resumed path=%s offset=%d", path, start)
                with part.open("rb") as existing:
                    while block := existing.read(1024 * 1024):
                        yield block
        logger.info("blob download started path=%s offset=%d size=%d", path, start, index.size)
        sink: BinaryIO | None = None
        if part is not None:
            part.parent.mkdir(parents=True, exist_ok=True)
            sink = part.open("ab")
        try:
            rest = yield from self._chunks(path, index, start, sink)
        finally:
            if sink is not None:
                sink.close()
        if rest is not None:
            # Blobs gone mid-download: the fallback replays the .part and goes on.
            logger.warning("blobs missing, rest by request path=%s offset=%d", path, rest)
            given = 0
            for block in self.fallback.stream(path, 2**63):
                end = given + len(block)
                if end > rest:
                    yield block[max(0, rest - given) :]
                given = end
            return
        if part is not None:
            with contextlib.suppress(OSError):
                part.unlink()

    def _chunks(
        self, path: str, index: BlobIndex, start: int, sink: BinaryIO | None
    ) -> Generator[bytes, None, int | None]:
        """Chunks from ``start`` to the end; the offset to go on from when blobs ran out."""
        arrived: queue.SimpleQueue[tuple[int, bytes | None]] = queue.SimpleQueue()
        subscribed: dict[int, _Chunk] = {}
        received: dict[int, bytes] = {}
        first = start // index.chunk_size
        next_subscribe = first
        misses = 0
        unsynced = 0

        def expected(n: int) -> int:
            return min(index.chunk_size, index.size - n * index.chunk_size)

        def handler_for(n: int) -> Callable[[Incoming], None]:
            def handle(incoming: Incoming) -> None:
                if incoming.payload:
                    arrived.put((n, incoming.payload))

            return handle

        def acked_for(n: int) -> Callable[[], None]:
            def acked() -> None:
                arrived.put((n, None))

            return acked

        try:
            for n in range(first, index.chunks):
                while next_subscribe < index.chunks and next_subscribe < n + self.window:
                    topic = topics.blob_chunk(index.sha256, next_subscribe)
                    subscribed[next_subscribe] = _Chunk(topic, time.monotonic())
                    self._link.subscribe(
                        topic,
                        handler_for(next_subscribe),
                        qos=1,
                        on_subscribed=acked_for(next_subscribe),
                    )
                    next_subscribe += 1
                data = self._await(n, subscribed, received, arrived, expected(n))
                if n in subscribed:
                    self._link.unsubscribe(subscribed.pop(n).topic)
                if data is None:
                    misses += 1
                    if misses >= MAX_MISSES:
                        return n * index.chunk_size
                    data = self.fallback.read_range(path, n * index.chunk_size, expected(n))
                    if len(data) != expected(n):
                        raise TransferError(f"fetch {path}: chunk {n} came short by request")
                    self.chunks_from_fallback += 1
                else:
                    misses = 0
                    self.chunks_from_blobs += 1
                if n == first and start > n * index.chunk_size:
                    data = data[start - n * index.chunk_size :]
                if sink is not None:
                    sink.write(data)
                    sink.flush()
                    unsynced += len(data)
                    if unsynced >= FSYNC_EVERY:
                        os.fsync(sink.fileno())
                        unsynced = 0
                yield data
            return None
        finally:
            for chunk in subscribed.values():
                self._link.unsubscribe(chunk.topic)

    def _await(
        self,
        n: int,
        subscribed: dict[int, _Chunk],
        received: dict[int, bytes],
        arrived: queue.SimpleQueue[tuple[int, bytes | None]],
        length: int,
    ) -> bytes | None:
        """Chunk ``n`` from the broker, or None when it did not come whole in time: within
        ``grace`` of its SUBACK (retained messages follow it at once), or, without a
        SUBACK, within ``subscribe_wait`` of the subscription."""
        while n not in received:
            chunk = subscribed[n]
            if chunk.acked_at is not None:
                deadline = chunk.acked_at + self.grace
            else:
                deadline = chunk.subscribed_at + self.subscribe_wait
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                m, payload = arrived.get(timeout=left)
            except queue.Empty:
                continue
            if m not in subscribed or m in received:
                continue
            if payload is None:
                subscribed[m].acked_at = time.monotonic()
            else:
                received[m] = payload
        data = received.pop(n)
        if len(data) != length:
            logger.warning("blob chunk of the wrong length chunk=%d got=%d", n, len(data))
            return None
        return data


@dataclass
class _Chunk:
    """One chunk's subscription: its topic, when it was asked for, when the broker said yes."""

    topic: str
    subscribed_at: float
    acked_at: float | None = None
