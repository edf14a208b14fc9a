"""The TUF metadata a rollout needs, published once, retained, where the broker serves it.

Before this, every device of a rollout asked the control plane for ``timestamp.json``,
the snapshot, the targets and a probe for the next root by request/response: four or
more requests per device, answered one by one by this process, and at 1,000 devices
hundreds of them waited out the devices' fetch timeout and were asked again. Now,
before an offer goes out (and on every retention pass, so a re-signed timestamp
follows), ``MetadataPublisher.ensure`` publishes the current set retained:

* ``fleet/all/down/meta/<file>`` for ``timestamp.json``, the snapshot it names, every
  role file that snapshot names (``<n>.targets.json`` ...), and the whole root chain
  (``<n>.root.json``), each once;
* then ``fleet/all/down/meta/index`` (``MetaIndex``: each file's SHA-256 and the newest
  root version), so a device takes a retained file only when it is the one indexed,
  and answers its probe for a newer root itself.

Files that leave the set (an older snapshot or targets version) are cleared with an
empty retained payload after the new index is out. The agent
(``edgefleet.agent.verification.metadata``) falls back to request/response for
anything not published, so a control plane with this off, or a broker that lost its
retained messages, costs only speed.

Like ``BlobPublisher``, the view of what is published is read back from the broker
(the index is subscribed), so replicas share it and a restart republishes nothing
that is already there. The index carries the timestamp's version, so a replica whose
repository files lag behind another's never publishes an older set over a newer one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from edgefleet import topics
from edgefleet.errors import MessageError, TransportError
from edgefleet.messages import MetaIndex, decode_as
from edgefleet.mqtt import Incoming, MqttLink

logger = logging.getLogger(__name__)

PUBLISH_WAIT_S = 30.0
ROOT_FILE_RE = re.compile(r"^([1-9][0-9]*)\.root\.json\Z")


@dataclass
class MetadataCounters:
    """What the publisher sent, for ``/metrics`` and the fleet benchmark."""

    publishes: int = 0
    files_published: int = 0
    bytes_published: int = 0
    files_cleared: int = 0
    failures: int = 0


def current_files(metadata_dir: Path) -> dict[str, bytes]:
    """The metadata files a device needs now, by name: the timestamp, what it names,
    and every root version.

    Raises:
        OSError: a file is missing or unreadable (the repository is mid-write or not
            initialised; the next call tries again).
        ValueError: a file is not the JSON TUF writes.
    """
    files: dict[str, bytes] = {}
    timestamp = (metadata_dir / "timestamp.json").read_bytes()
    files["timestamp.json"] = timestamp
    for role, version in _named(timestamp).items():
        name = f"{version}.{role}"
        data = (metadata_dir / name).read_bytes()
        files[name] = data
        if role == "snapshot.json":
            for inner, inner_version in _named(data).items():
                inner_name = f"{inner_version}.{inner}"
                files[inner_name] = (metadata_dir / inner_name).read_bytes()
    for path in metadata_dir.glob("*.root.json"):
        if ROOT_FILE_RE.fullmatch(path.name):
            files[path.name] = path.read_bytes()
    return files


def _named(data: bytes) -> dict[str, int]:
    """``signed.meta`` of a timestamp or snapshot: role file -> version."""
    try:
        meta = json.loads(data)["signed"]["meta"]
        return {str(name): int(entry["version"]) for name, entry in meta.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"unreadable TUF metadata: {type(e).__name__}") from e


def _version(data: bytes) -> int:
    """``signed.version`` of a metadata file (0 when unreadable: never wins)."""
    try:
        return int(json.loads(data)["signed"]["version"])
    except (KeyError, TypeError, ValueError):
        return 0


def root_version(names: set[str]) -> int:
    """The newest root version among ``names`` (1 when none is named)."""
    versions = [int(m.group(1)) for n in names if (m := ROOT_FILE_RE.fullmatch(n))]
    return max(versions, default=1)


class MetadataPublisher:
    """Publishes the signed repository's current metadata retained, and clears old files.

    Args:
        link: the control plane's MQTT link (subscribed in ``attach``).
        metadata_dir: the signed repository's ``metadata/``.
    """

    def __init__(self, link: MqttLink, metadata_dir: Path) -> None:
        self._link = link
        self.metadata_dir = Path(metadata_dir)
        self._lock = threading.Lock()  # one publish at a time
        self._view_lock = threading.Lock()
        self._published: MetaIndex | None = None
        self.counters = MetadataCounters()

    def attach(self) -> None:
        """Follow the broker's retained index (call before the link starts)."""
        self._link.on_connect(self._forget)
        self._link.subscribe(topics.meta_index_filter(), self._on_index, qos=1)

    def published(self) -> MetaIndex | None:
        """The index the broker holds, as last read back (None: none, or not yet seen)."""
        with self._view_lock:
            return self._published

    def _forget(self) -> None:
        with self._view_lock:
            self._published = None

    def _on_index(self, incoming: Incoming) -> None:
        if not incoming.payload:
            self._forget()
            return
        try:
            index = decode_as(incoming.payload, MetaIndex, topic=incoming.topic)
        except MessageError as e:
            logger.warning("metadata index unreadable reason=%s", e.reason)
            return
        with self._view_lock:
            self._published = index

    def ensure(self) -> bool:
        """Publish the current metadata unless the broker holds exactly it.

        Returns:
            True when the broker holds the current set (now or already); False when it
            could not be published (broker away, repository mid-write): devices then
            ask by request/response.
        """
        with self._lock:
            if not self._link.connected:
                return False
            if self._timestamp_unchanged():
                return True  # every signing step writes a new timestamp last
            try:
                files = current_files(self.metadata_dir)
            except (OSError, ValueError) as e:
                logger.warning("metadata not published reason=%s", e)
                self.counters.failures += 1
                return False
            hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
            old = self.published()
            if old is not None and old.files == hashes:
                return True
            version = _version(files["timestamp.json"])
            if old is not None and version < old.timestamp_version:
                # Another replica signed since this one wrote its files: what the broker
                # holds is newer (devices would refuse an older timestamp anyway).
                logger.info(
                    "metadata not published: broker holds newer timestamp=%d ours=%d",
                    old.timestamp_version,
                    version,
                )
                return True
            index = MetaIndex(
                files=hashes, root_version=root_version(set(hashes)), timestamp_version=version
            )
            try:
                self._publish(files, hashes, old, index)
            except TransportError as e:
                self.counters.failures += 1
                logger.warning("metadata publish failed reason=%s", e)
                return False
            return True

    def _timestamp_unchanged(self) -> bool:
        """The cheap check made before every offer: the broker's index names the
        repository's current ``timestamp.json``."""
        old = self.published()
        if old is None or "timestamp.json" not in old.files:
            return False
        try:
            data = (self.metadata_dir / "timestamp.json").read_bytes()
        except OSError:
            return False
        return hashlib.sha256(data).hexdigest() == old.files["timestamp.json"]

    def _publish(
        self,
        files: dict[str, bytes],
        hashes: dict[str, str],
        old: MetaIndex | None,
        index: MetaIndex,
    ) -> None:
        before = old.files if old is not None else {}
        sent = 0
        for name, data in files.items():
            if before.get(name) == hashes[name]:
                continue  # the broker holds this very file
            self._link.publish(
                topics.meta_file(name), data, qos=1, retain=True, wait=PUBLISH_WAIT_S
            )
            sent += len(data)
            self.counters.files_published += 1
        payload = index.to_bytes()
        self._link.publish(topics.meta_index(), payload, qos=1, retain=True, wait=PUBLISH_WAIT_S)
        with self._view_lock:
            self._published = index
        for name in set(before) - set(files):
            self._link.publish(topics.meta_file(name), b"", qos=1, retain=True, wait=PUBLISH_WAIT_S)
            self.counters.files_cleared += 1
        self.counters.publishes += 1
        self.counters.bytes_published += sent + len(payload)
        logger.info(
            "tuf metadata published files=%d bytes=%d root_version=%d",
            len(files),
            sent + len(payload),
            index.root_version,
        )
