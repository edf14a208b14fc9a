"""TUF metadata from the broker's retained messages, so the control plane answers no device.

The control plane publishes the metadata a rollout needs once, retained
(``edgefleet.control_plane.broker.metadata``): ``fleet/all/down/meta/index``
(``MetaIndex``: file name -> SHA-256, and the newest root version) and each file on
``fleet/all/down/meta/<file>``. ``RetainedMetadata.stream("metadata/<file>")``:

1. reads the index (subscribe, take the retained message, unsubscribe; the answer,
   or its absence, serves ``INDEX_TTL_S``, and each refresh's first request, the probe
   for a newer root, reads it afresh);
2. a file the index names is read the same way and handed on when its SHA-256 is the
   indexed one;
3. a probe for a root newer than the index's newest is answered ``404`` here, as the
   repository would;
4. anything else — no index within ``grace`` s of its SUBACK, a file not indexed, a
   file replaced between the two reads — goes to ``fallback`` (request/response), as
   before this existed.

The bytes are only moved here: TUF verifies every file as ever (signatures, versions,
expiry), so a stale or forged retained file is refused exactly as one fetched by
request would be. Only the control plane may publish under ``fleet/all/down`` (ACL).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import time
from collections.abc import Iterator

from edgefleet import topics
from edgefleet.agent.errors import TransferError
from edgefleet.agent.verification.transport import Transport
from edgefleet.errors import MessageError
from edgefleet.messages import MetaIndex, decode_as
from edgefleet.mqtt import MqttLink

logger = logging.getLogger(__name__)

ROOT_PROBE_RE = re.compile(r"^([1-9][0-9]*)\.root\.json\Z")
INDEX_TTL_S = 30.0
"""How long one reading of the index (or of its absence) serves: one TUF refresh reads
it once, and a control plane that publishes none costs one ``grace`` wait, not one per
file. A file replaced meanwhile fails its hash check and is asked for by request."""


def wait_retained(
    link: MqttLink, topic: str, *, grace: float, subscribe_wait: float
) -> bytes | None:
    """The retained message on ``topic``, or None when none came within ``grace`` s of the
    SUBACK (retained messages follow it at once), or ``subscribe_wait`` s without one."""
    answers: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
    acked: list[float] = []

    def on_subscribed() -> None:
        acked.append(time.monotonic())
        answers.put(None)

    started = time.monotonic()
    link.subscribe(topic, lambda incoming: answers.put(incoming.payload), qos=1,
                   on_subscribed=on_subscribed)  # fmt: skip
    try:
        while True:
            deadline = acked[-1] + grace if acked else started + subscribe_wait
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                payload = answers.get(timeout=left)
            except queue.Empty:
                continue
            if payload:  # None is the SUBACK, b"" a cleared message
                return payload
    finally:
        link.unsubscribe(topic)


class RetainedMetadata:
    """Metadata from the broker's retained copies; targets and the rest from ``fallback``.

    Args:
        link: the device's MQTT link.
        fallback: where everything else goes (blobs, then request/response).
        grace: seconds a retained message may take after its SUBACK.
        subscribe_wait: seconds a SUBACK may take before the message counts as absent.
    """

    def __init__(
        self, link: MqttLink, fallback: Transport, *, grace: float = 5.0,
        subscribe_wait: float = 30.0,
    ) -> None:  # fmt: skip
        self._link = link
        self.fallback = fallback
        self.grace = grace
        self.subscribe_wait = subscribe_wait
        self.files_retained = 0
        self.files_fallback = 0
        self._index: tuple[float, MetaIndex | None] | None = None

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        """``path``'s bytes: a retained metadata file when the index names it.

        Raises:
            TransferError: a root newer than any published (status 404), or what the
                fallback raises.
        """
        kind, _, name = path.partition("/")
        if kind != "metadata" or not topics.META_FILE_RE.fullmatch(name):
            return self.fallback.stream(path, max_length)
        data = self._retained(name)
        if isinstance(data, bytes):
            self.files_retained += 1
            return iter([data])  # ngclient refuses a file past its bound
        if data == 404:
            raise TransferError(f"{path} not found (newer than every published root)", status=404)
        self.files_fallback += 1
        return self.fallback.stream(path, max_length)

    def discard_parts(self) -> None:
        """Forget the fallback's partial downloads (one failed its hash check)."""
        discard = getattr(self.fallback, "discard_parts", None)
        if discard is not None:
            discard()

    def _retained(self, name: str) -> bytes | int | None:
        """The file's retained bytes, 404 for a root newer than published, None: ask."""
        if not self._link.connected:
            return None
        probe = ROOT_PROBE_RE.fullmatch(name)
        if probe:
            # A refresh starts with the root probe: read the index afresh, so a root
            # published since the last reading is never answered 404 from memory.
            self._index = None
        index = self._read_index()
        if index is None:
            return None
        if probe and int(probe.group(1)) > index.root_version:
            return 404
        expected = index.files.get(name)
        if expected is None:
            return None
        data = self._wait(topics.meta_file(name))
        if data is None or hashlib.sha256(data).hexdigest() != expected:
            logger.info("retained metadata missing or replaced, asking name=%s", name)
            return None
        return data

    def _read_index(self) -> MetaIndex | None:
        now = time.monotonic()
        if self._index is not None and now - self._index[0] < INDEX_TTL_S:
            return self._index[1]
        index: MetaIndex | None = None
        raw = self._wait(topics.meta_index())
        if raw is not None:
            try:
                index = decode_as(raw, MetaIndex, topic=topics.meta_index())
            except MessageError as e:
                logger.warning("metadata index refused reason=%s", e.reason)
        self._index = (now, index)
        return index

    def _wait(self, topic: str) -> bytes | None:
        return wait_retained(
            self._link, topic, grace=self.grace, subscribe_wait=self.subscribe_wait
        )
