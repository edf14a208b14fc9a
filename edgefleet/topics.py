"""The MQTT topic tree; the only module that spells topic strings.

::

    fleet/<device_id>/up/<channel>     device -> cloud  (status, report, fetch, telemetry,
                                                        logs, config)
    fleet/<device_id>/down/<channel>   cloud -> device  (offer, command, fetch, receipt,
                                                        logs, config)
    fleet/all/down/<channel>           cloud -> every device
    fleet/all/down/blobs/<sha256>/index      a target's chunk index (retained)
    fleet/all/down/blobs/<sha256>/<n>        its chunk n (retained; content-addressed)
    fleet/all/down/meta/index                the TUF metadata published (retained)
    fleet/all/down/meta/<file>               one TUF metadata file (retained)

Device ids are ``dev-`` plus 8 to 32 lowercase letters or digits so that a broker ACL
pattern on ``%u`` confines each device to its own subtree; control-plane clients use
``cp-`` names, which no device may take.
"""

from __future__ import annotations

import re
from enum import StrEnum

DEVICE_ID_RE = re.compile(r"^dev-[a-z0-9]{8,32}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
BLOBS = "blobs"
BLOB_INDEX = "index"
META = "meta"
META_FILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.json\Z")
ROOT = "fleet"
BROADCAST = "all"


class Up(StrEnum):
    """Channels a device publishes on."""

    STATUS = "status"  # retained presence + what is installed; also the last will
    REPORT = "report"  # install progress and outcomes
    FETCH = "fetch"  # request for a chunk of a metadata or target file
    TELEMETRY = "telemetry"
    LOGS = "logs"  # the agent's recent log, answering a log request
    CONFIG = "config"  # what the device applied of its desired configuration, and why not


class Down(StrEnum):
    """Channels the control plane publishes on, per device."""

    OFFER = "offer"  # a bundle the device should install
    FETCH = "fetch"  # responses to the device's fetch requests
    COMMAND = "command"
    RECEIPT = "receipt"  # event ids the control plane has committed (end-to-end acks)
    LOGS = "logs"  # a request for the agent's recent log
    CONFIG = "config"  # the device's desired configuration (retained)


def is_device_id(value: str) -> bool:
    """True when ``value`` is a well-formed device id (never a ``cp-`` name)."""
    return bool(DEVICE_ID_RE.fullmatch(value))


def _checked(device_id: str) -> str:
    if not is_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}: must match {DEVICE_ID_RE.pattern}")
    return device_id


def up(device_id: str, channel: Up) -> str:
    """Topic a device publishes ``channel`` messages on.

    Raises:
        ValueError: ``device_id`` is not a well-formed device id.
    """
    return f"{ROOT}/{_checked(device_id)}/up/{channel.value}"


def down(device_id: str, channel: Down) -> str:
    """Topic the control plane publishes ``channel`` messages to one device on.

    Raises:
        ValueError: ``device_id`` is not a well-formed device id.
    """
    return f"{ROOT}/{_checked(device_id)}/down/{channel.value}"


def down_all(channel: Down) -> str:
    """Topic the control plane publishes ``channel`` messages to every device on."""
    return f"{ROOT}/{BROADCAST}/down/{channel.value}"


def _sha(sha256: str) -> str:
    if not SHA256_RE.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")
    return sha256


def blob_index(sha256: str) -> str:
    """Retained index of the target whose content hashes to ``sha256``.

    Raises:
        ValueError: ``sha256`` is not 64 lowercase hex digits.
    """
    return f"{ROOT}/{BROADCAST}/down/{BLOBS}/{_sha(sha256)}/{BLOB_INDEX}"


def blob_chunk(sha256: str, index: int) -> str:
    """Retained chunk ``index`` (from 0) of the target whose content hashes to ``sha256``.

    Raises:
        ValueError: ``sha256`` is malformed or ``index`` negative.
    """
    if index < 0:
        raise ValueError(f"chunk index must be >= 0, got {index}")
    return f"{ROOT}/{BROADCAST}/down/{BLOBS}/{_sha(sha256)}/{index}"


def blob_index_filter() -> str:
    """Subscription filter for every target's retained index (what the broker holds)."""
    return f"{ROOT}/{BROADCAST}/down/{BLOBS}/+/{BLOB_INDEX}"


def blobs_filter() -> str:
    """The blob subtree, for the broker's ACLs: devices read it, only the cloud writes."""
    return f"{ROOT}/{BROADCAST}/down/{BLOBS}/#"


def parse_blob_index(topic: str) -> str:
    """The SHA-256 in a blob index topic.

    Raises:
        ValueError: ``topic`` is not ``fleet/all/down/blobs/<sha256>/index``.
    """
    parts = topic.split("/")
    if len(parts) != 6 or parts[:4] != [ROOT, BROADCAST, "down", BLOBS] or parts[5] != BLOB_INDEX:
        raise ValueError(f"not a blob index topic: {topic!r}")
    return _sha(parts[4])


def meta_index() -> str:
    """Retained index of the TUF metadata files the control plane has published."""
    return f"{ROOT}/{BROADCAST}/down/{META}/{BLOB_INDEX}"


def meta_file(name: str) -> str:
    """Retained TUF metadata file ``name`` (``timestamp.json``, ``3.snapshot.json``, ...).

    Raises:
        ValueError: ``name`` is not a plain ``*.json`` file name.
    """
    if not META_FILE_RE.fullmatch(name):
        raise ValueError(f"not a metadata file name: {name!r}")
    return f"{ROOT}/{BROADCAST}/down/{META}/{name}"


def meta_index_filter() -> str:
    """Subscription filter for the retained metadata index (what the broker holds)."""
    return meta_index()


def up_filter(channel: Up | None = None) -> str:
    """Subscription filter for ``channel`` from every device (all channels when None)."""
    return f"{ROOT}/+/up/" + (channel.value if channel else "#")


def device_down_filter(device_id: str) -> str:
    """Subscription filter for everything addressed to one device.

    Raises:
        ValueError: ``device_id`` is not a well-formed device id.
    """
    return f"{ROOT}/{_checked(device_id)}/down/#"


def parse_up(topic: str) -> tuple[str, Up]:
    """Split a device's up topic into the device id and the channel.

    The control plane trusts the device id in the topic (the broker ACL enforces
    it), never one in a payload.

    Args:
        topic: The topic a message arrived on, e.g. ``fleet/dev-0123abcd/up/status``.

    Returns:
        (device id, channel).

    Raises:
        ValueError: The topic is not ``fleet/<device_id>/up/<channel>``, its device id is
            malformed, or its channel unknown.
    """
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != ROOT or parts[2] != "up":
        raise ValueError(f"not a device up topic: {topic!r}")
    device_id = _checked(parts[1])
    try:
        return device_id, Up(parts[3])
    except ValueError as e:
        raise ValueError(f"unknown up channel in {topic!r}") from e
