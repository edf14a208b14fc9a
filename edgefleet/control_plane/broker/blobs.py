"""A target's bytes published once, retained, where the broker serves every device.

Serving every chunk to every device from this process does not scale (1,000 devices
x 1 MB is 1 GB through one Python process; the broker fans the same bytes out many
times faster). So before a target is first offered, ``BlobPublisher.ensure`` publishes
it as retained QoS 1 chunks on ``fleet/all/down/blobs/<sha256>/<n>`` and then a
retained ``.../<sha256>/index`` (``BlobIndex``: size, chunk size, chunk count). A
device subscribes to the chunks it lacks (``edgefleet.agent.verification.blobs``) and
asks by request/response only for what the broker does not hold. Topics are named by
the content's hash, so a chunk can never be mistaken for another target's, and TUF
checks the reassembled file as before.

**What is published is read back from the broker.** The publisher subscribes to every
retained index; the broker hands them over on each (re)connect, and clears reach it
as empty messages. That view, not memory of its own, decides whether a target needs
publishing, so replicas share it and a restart loses nothing.

**Retention.** ``retain_only`` clears (empty retained payloads, the index first so no
device starts on a half-cleared target) every published target that no running
rollout needs; ``FleetLink`` runs it every ``Settings.blob_retention_s``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet import topics
from edgefleet.errors import MessageError, TransportError
from edgefleet.messages import BlobIndex, decode_as
from edgefleet.mqtt import Incoming, MqttLink

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 128 * 1024
PUBLISH_WAIT_S = 30.0
"""How long one chunk may wait for the broker's acknowledgement while publishing."""


@dataclass
class BlobCounters:
    """What the publisher sent, for ``/metrics`` and the fleet benchmark."""

    targets_published: int = 0
    bytes_published: int = 0
    targets_cleared: int = 0
    failures: int = 0
    by_target: dict[str, int] = field(default_factory=dict)


class BlobPublisher:
    """Publishes targets as retained, content-addressed chunks and clears them again.

    Args:
        link: the control plane's MQTT link (subscribed in ``attach``).
        targets_dir: the signed repository's ``targets/`` (files ``<sha256>.<name>``).
        chunk_size: bytes per chunk (at most ``FETCH_MAX_CHUNK``).
    """

    def __init__(self, link: MqttLink, targets_dir: Path, *, chunk_size: int = DEFAULT_CHUNK):
        self._link = link
        self.targets_dir = Path(targets_dir)
        self.chunk_size = chunk_size
        self._lock = threading.Lock()  # one publish or clear at a time
        self._view_lock = threading.Lock()
        self._published: dict[str, BlobIndex] = {}
        self.counters = BlobCounters()

    def attach(self) -> None:
        """Follow the broker's retained indexes (call before the link starts)."""
        self._link.on_connect(self._forget)
        self._link.subscribe(topics.blob_index_filter(), self._on_index, qos=1)

    def published(self) -> dict[str, BlobIndex]:
        """The targets whose index the broker holds, by SHA-256."""
        with self._view_lock:
            return dict(self._published)

    # -- network thread --------------------------------------------------------------

    def _forget(self) -> None:
        # Runs right after the (re)subscribe, before the broker's retained indexes arrive.
        with self._view_lock:
            self._published.clear()

    def _on_index(self, incoming: Incoming) -> None:
        try:
            sha = topics.parse_blob_index(incoming.topic)
        except ValueError:
            return
        if not incoming.payload:
            with self._view_lock:
                self._published.pop(sha, None)
            return
        try:
            index = decode_as(incoming.payload, BlobIndex, topic=incoming.topic)
        except MessageError as e:
            logger.warning("blob index unreadable sha256=%s reason=%s", sha, e.reason)
            return
        if index.sha256 == sha:
            with self._view_lock:
                self._published[sha] = index

    # -- publishing ------------------------------------------------------------------

    def ensure(self, sha256: str, target: str) -> bool:
        """Publish target ``target`` (content ``sha256``) unless the broker holds it.

        Returns:
            True when it is published now or was already; False when it could not
            be (no file, broker away): devices then fetch by request/response.
        """
        with self._lock:
            if sha256 in self.published():
                return True
            if not self._link.connected:
                return False  # paho would queue the chunks; the next offer tries again
            path = self.targets_dir / f"{sha256}.{target}"
            try:
                sent = self._publish(sha256, path)
            except (OSError, TransportError, ValueError) as e:
                self.counters.failures += 1
                logger.warning(
                    "blob publish failed sha256=%s target=%s reason=%s", sha256, target, e
                )
                return False
            self.counters.targets_published += 1
            self.counters.bytes_published += sent
            self.counters.by_target[sha256] = sent
            logger.info("blob published sha256=%s target=%s bytes=%d", sha256, target, sent)
            return True

    def _publish(self, sha256: str, path: Path) -> int:
        sent = 0
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            chunks = -(-size // self.chunk_size)
            for n in range(chunks):
                data = handle.read(self.chunk_size)
                self._link.publish(
                    topics.blob_chunk(sha256, n), data, qos=1, retain=True, wait=PUBLISH_WAIT_S
                )
                sent += len(data)
        index = BlobIndex(sha256=sha256, size=size, chunk_size=self.chunk_size, chunks=chunks)
        payload = index.to_bytes()
        self._link.publish(
            topics.blob_index(sha256), payload, qos=1, retain=True, wait=PUBLISH_WAIT_S
        )
        with self._view_lock:
            self._published[sha256] = index
        return sent + len(payload)

    def retain_only(self, needed: Iterable[str]) -> list[str]:
        """Clear every published target not in ``needed``; the SHA-256s cleared.

        A clear that fails (broker away) is tried again on the next call.
        """
        keep = set(needed)
        cleared: list[str] = []
        with self._lock:
            for sha, index in self.published().items():
                if sha in keep:
                    continue
                try:
                    self._link.publish(
                        topics.blob_index(sha), b"", qos=1, retain=True, wait=PUBLISH_WAIT_S
                    )
                    for n in range(index.chunks):
                        self._link.publish(
                            topics.blob_chunk(sha, n), b"", qos=1, retain=True, wait=PUBLISH_WAIT_S
                        )
                except TransportError as e:
                    logger.warning("blob clear failed sha256=%s reason=%s", sha, e)
                    continue
                with self._view_lock:
                    self._published.pop(sha, None)
                self.counters.targets_cleared += 1
                cleared.append(sha)
                logger.info("blob cleared sha256=%s chunks=%d", sha, index.chunks)
        return cleared
