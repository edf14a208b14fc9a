"""Versioned wire messages, validated on receipt.

Every message is a JSON object with ``v`` (schema version) and ``type``. Unknown
fields are kept (``edgefleet.schema.Open``), so a newer peer's additions survive a
read-write round trip; a message of an unknown type, of a newer schema version or
failing validation raises ``MessageError``, which receivers log and drop. A message
built in code with a value its field does not allow raises ``FieldError``. Fields
whose value is None are left off the wire; ``v`` and ``type`` are always on it.

Fetch *responses* are not JSON: they carry raw bytes, with their status and
position in MQTT 5 user properties (see ``FETCH_*`` below), so a chunk costs no
base64 inflation.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta, field

from edgefleet import schema
from edgefleet.errors import FieldError, MessageError
from edgefleet.maintenance import MaintenanceWindow
from edgefleet.states.install import InstallState

SCHEMA_VERSION = 1

# Fetch protocol (device -> fleet/<id>/up/fetch, control plane -> fleet/<id>/down/fetch).
# The request carries a correlation id in MQTT 5 correlation data; the response copies
# it and states, as user properties, an HTTP-like status, the file's total length and
# the offset of the bytes in the payload.
FETCH_STATUS = "status"
FETCH_TOTAL = "total"
FETCH_OFFSET = "offset"
FETCH_REASON = "reason"
FETCH_MAX_CHUNK = 256 * 1024
"""Largest chunk a device may ask for; well under any broker's max packet size."""

MAX_MESSAGE_BYTES = 256 * 1024
"""Largest JSON wire message accepted; checked before decoding."""
MAX_NESTING = 32
"""Deepest nesting of JSON arrays and objects accepted; checked before decoding, so a
payload of ``[[[[…`` is refused as that message's fault instead of exhausting the
decoder's recursion limit on the receiving thread."""
RECEIPT_MAX_IDS = 1000
"""Most event ids one receipt acknowledges."""

# Device logs on demand (control plane -> fleet/<id>/down/logs, device -> fleet/<id>/up/logs).
LOG_DEFAULT_BYTES = 256 * 1024
"""How much log a request asks for unless it says otherwise."""
LOG_MAX_BYTES = 1024 * 1024
"""Most log one request may ask for; the answer is split into chunks."""
LOG_CHUNK_BYTES = 192 * 1024
"""Most record bytes in one ``LogChunk``: with the envelope, well under ``MAX_MESSAGE_BYTES``."""
LOG_LINE_MAX_CHARS = 4096
"""Longest message one log record keeps; longer ones are cut and say so (the note that
says so may take the record up to ``LOG_MESSAGE_MAX_CHARS``)."""
LOG_MESSAGE_MAX_CHARS = LOG_LINE_MAX_CHARS + 64
LOG_MAX_SINCE_S = 30 * 86_400


def new_event_id() -> str:
    """A unique id for a message so the receiver can de-duplicate redeliveries."""
    return uuid.uuid4().hex


class WireMessage(schema.Open, frozen=True, kw_only=True):
    """Base of every JSON wire message: versioned, tolerant of unknown fields."""

    v: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        """Encode for the wire (fields that are None left out, unknown fields kept)."""
        return msgspec.json.encode(schema.to_builtins(self, omit_none=True))


class ModelStatus(schema.Open, frozen=True, kw_only=True):
    """One model a device hosts, as its status reports it."""

    name: str
    version: str | None = None
    bundle_id: str | None = None
    release: int | None = None


class DeviceStatus(WireMessage, frozen=True, kw_only=True):
    """Retained presence on ``up/status``; the last will sets ``online`` false.

    ``models`` lists every model the device serves; ``model``, ``bundle_id`` and the
    other top-level fields name the first of them by name (what a one-model device
    always said, and what older readers still read).
    """

    type: Literal["status"] = "status"
    online: bool
    profile: str | None = None
    agent_version: str | None = None
    model: str | None = None
    model_version: str | None = None
    bundle_id: str | None = None
    release: int | None = None
    spool_depth: int | None = None  # events waiting in the telemetry spool right now
    models: Annotated[list[ModelStatus], Meta(max_length=64)] | None = None
    trusted_versions: dict[str, int] | None = None
    """Versions of the signed metadata the device trusts now (``root``, ``timestamp``,
    ``snapshot``, ``targets``): the control plane never publishes below the highest."""
    ts: float = field(default_factory=time.time)


class InstallReport(WireMessage, frozen=True, kw_only=True):
    """Progress or outcome of one bundle install, on ``up/report``."""

    type: Literal["install"] = "install"
    event_id: str = field(default_factory=new_event_id)
    bundle_id: str
    release: int | None = None
    rollout_id: int | None = None
    state: InstallState
    reason: str | None = None
    install_seconds: float | None = None
    # Atomic rollouts: when the device switched (wall clock, UTC epoch seconds) and how
    # far past the order's moment that was (a device that came back late).
    switched_at: float | None = None
    switch_late_s: float | None = None
    ts: float = field(default_factory=time.time)


class FetchRequest(WireMessage, frozen=True, kw_only=True):
    """Ask for ``length`` bytes of ``path`` from ``offset``, on ``up/fetch``.

    ``path`` is ``metadata/<file>`` or ``targets/<file>`` in the signed repository.
    """

    type: Literal["fetch"] = "fetch"
    path: Annotated[str, Meta(pattern=r"^(metadata|targets)/[A-Za-z0-9][A-Za-z0-9._-]{0,200}\Z")]
    offset: Annotated[int, Meta(ge=0)]
    length: Annotated[int, Meta(gt=0, le=FETCH_MAX_CHUNK)]


class BlobIndex(WireMessage, frozen=True, kw_only=True):
    """What a target's retained chunks on ``fleet/all/down/blobs/<sha256>/`` add up to.

    Published retained on ``.../<sha256>/index`` after the chunks it describes, so a
    device that sees it finds them; an empty retained payload clears it. Not signed
    and need not be: TUF checks the reassembled file's length and hashes, and only
    the control plane may publish under ``fleet/all/down`` (broker ACL).
    """

    type: Literal["blob_index"] = "blob_index"
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]
    size: Annotated[int, Meta(ge=0)]
    chunk_size: Annotated[int, Meta(gt=0, le=FETCH_MAX_CHUNK)]
    chunks: Annotated[int, Meta(ge=0)]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunks != -(-self.size // self.chunk_size):
            raise FieldError("chunks", "must be the size divided by chunk_size, rounded up")


class BundleOffer(WireMessage, frozen=True, kw_only=True):
    """Tells a device to install a bundle, on ``down/offer``.

    The offer is only a hint: the device trusts nothing in it until the signed
    metadata confirms the target, its hashes and its release counter.

    ``maintenance_window`` (the rollout's option, ``edgefleet.maintenance``) says when
    the device may switch; outside it the install stops at ``deferred``. It is not
    signed, and need not be: a window can only delay a switch to a bundle TUF has
    verified, never make the device install anything else. Whoever can forge an offer
    can already withhold offers altogether, and a deferred device still runs down its
    install deadline on the control plane, so a forged window shows as ``deferred``
    and then ``timed_out``.
    """

    type: Literal["offer"] = "offer"
    rollout_id: int | None = None
    bundle_id: str
    kind: Literal["model", "agent"] = "model"
    """Which install pipeline takes the offer; the signed target's ``kind`` must agree."""
    target: str  # target path in the signed targets metadata
    release: Annotated[int, Meta(ge=1)]
    maintenance_window: MaintenanceWindow | None = None
    # Atomic rollout: stage, smoke-test, then wait ``armed`` for a signed switch order.
    atomic: bool = False
    ts: float = field(default_factory=time.time)


TelemetryKind = Literal[
    "inference", "error", "install", "drift", "resource", "spool", "shadow", "sample", "outcome"
]


class TelemetryEvent(WireMessage, frozen=True, kw_only=True):
    """One event from a device's store-and-forward spool, on ``up/telemetry``.

    ``event_id`` is unique per event, so the control plane stores each event once
    however often the broker redelivers it. ``priority`` orders what a full spool
    drops first (higher numbers are dropped first). ``data`` depends on ``kind``:

    - ``inference``: ``{"window_s", "count", "errors", "latency_ms": {"p50", "p95",
      "p99"}, "histogram": {"bounds_ms": [...], "counts": [...]}}`` for one window;
    - ``error``: ``{"where", "reason"}``;
    - ``install``: the ``InstallReport`` fields;
    - ``drift``: per-feature scores for one window and its verdict (see
      ``edgefleet.drift.DriftReport``): ``psi``, ``share_drifted``, ``drifted``, and from
      calibrated references on ``reasons``, ``feature_thresholds``, ``new_categories`` and
      ``output`` (the model's answers, apart from the inputs); readers treat every field
      after ``drifted`` as optional, so windows from older agents still decode;
    - ``resource``: ``{"rss_mib", "cpu_percent", "disk_free_mib"}``;
    - ``spool``: ``{"depth", "dropped": {priority: n}}``;
    - ``shadow``: ``{"bundle_id", "count", "agreement", "latency_ms": {...}}``;
    - ``outcome``: ``{"model", "count", "sum", "sum_sq"}``, the numbers the application
      posted for the bundle in one window (``edgefleet.agent.inference.outcomes``).
    - ``sample``: field rows for retraining, ``{"model", "model_version", "input",
      "inputs": [[...]], "outputs", "labels" (None where unknown), "drifted",
      "withheld_rows"}`` (``edgefleet.agent.telemetry.drift``); a ``drift`` window also
      carries ``accuracy``: ``{"labelled", "correct", "value"}``.
    """

    type: Literal["telemetry"] = "telemetry"
    event_id: Annotated[str, Meta(min_length=8, max_length=64)] = field(
        default_factory=new_event_id
    )
    kind: TelemetryKind
    priority: Annotated[int, Meta(ge=0, le=3)] = 1
    bundle_id: str | None = None
    release: int | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


CommandName = Literal["rollback", "shadow_start", "shadow_stop", "switch", "drop_staged"]


class DeviceCommand(WireMessage, frozen=True, kw_only=True):
    """An instruction from the control plane, on ``down/command``.

    ``rollback`` switches the device back to the bundle in its other slot and is
    answered with an ``InstallReport`` in state ``rolled_back`` (or ``failed``).
    ``shadow_start`` carries ``args`` ``{"target", "release"}``, and for an A/B
    experiment split by requests ``"split": {"experiment_id", "share"}``: the shadow then
    answers that share of the model's requests (``edgefleet.agent.inference.split``).
    """

    type: Literal["command"] = "command"
    command_id: str = field(default_factory=new_event_id)
    command: CommandName
    rollout_id: int | None = None
    bundle_id: str | None = None
    reason: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=time.time)


class LogRequest(WireMessage, frozen=True, kw_only=True):
    """Asks a device for its recent log, on ``down/logs``.

    The device answers with one or more ``LogChunk`` on ``up/logs`` carrying the same
    ``request_id``: the records of the last ``since_s`` seconds, newest kept when they
    come to more than ``max_bytes`` (the older ones left out, and counted).
    """

    type: Literal["log_request"] = "log_request"
    request_id: Annotated[str, Meta(min_length=8, max_length=64)] = field(
        default_factory=new_event_id
    )
    since_s: Annotated[int, Meta(ge=1, le=LOG_MAX_SINCE_S)] = 3600
    max_bytes: Annotated[int, Meta(ge=1, le=LOG_MAX_BYTES)] = LOG_DEFAULT_BYTES
    ts: float = field(default_factory=time.time)


class LogRecord(schema.Open, frozen=True, kw_only=True):
    """One record of a device's log: when (Unix seconds), how severe, where, what."""

    ts: float
    level: Annotated[str, Meta(max_length=16)]
    logger: Annotated[str, Meta(max_length=200)]
    message: Annotated[str, Meta(max_length=LOG_MESSAGE_MAX_CHARS)]


class LogChunk(WireMessage, frozen=True, kw_only=True):
    """Part ``seq`` of a device's answer to a ``LogRequest``, on ``up/logs``.

    Records are oldest first across the chunks; ``last`` marks the final chunk.
    ``truncated`` says records of the window were left out to stay within
    ``max_bytes`` (``omitted`` counts them, all older than the first record sent).
    """

    type: Literal["logs"] = "logs"
    request_id: Annotated[str, Meta(min_length=8, max_length=64)]
    seq: Annotated[int, Meta(ge=0, le=1024)] = 0
    last: bool = True
    records: list[LogRecord] = field(default_factory=list)
    truncated: bool = False
    omitted: Annotated[int, Meta(ge=0)] = 0
    ts: float = field(default_factory=time.time)


CONFIG_MAX_KEYS = 256
"""Most keys a desired configuration (or a report) carries; ``edgefleet.device_config``."""


class DesiredConfig(WireMessage, frozen=True, kw_only=True):
    """A device's effective desired configuration, on ``down/config`` (retained).

    ``version`` grows with every change that reaches this device. ``values`` is the
    whole effective merge (``edgefleet.device_config``): a key left out is unset, and
    the device goes back to its own ``agent.toml`` for it. Values are checked per key on
    the device, so one bad value is refused alone.
    """

    type: Literal["config"] = "config"
    version: Annotated[int, Meta(ge=1)]
    values: Annotated[dict[str, Any], Meta(max_length=CONFIG_MAX_KEYS)] = field(
        default_factory=dict
    )
    ts: float = field(default_factory=time.time)


class ConfigReport(WireMessage, frozen=True, kw_only=True):
    """What a device made of its desired configuration, on ``up/config``.

    ``version``: the desired version this answers; ``applied_version``: the version of
    the values it holds now. ``applied``: the remote values it holds (its last good
    configuration: a refused key keeps its previous value, or none). ``refused``: key ->
    reason. ``pending_restart``: keys held whose new value takes effect at the agent's
    next start.
    """

    type: Literal["config_report"] = "config_report"
    version: Annotated[int, Meta(ge=0)]
    applied_version: Annotated[int, Meta(ge=0)] = 0
    applied: Annotated[dict[str, Any], Meta(max_length=CONFIG_MAX_KEYS)] = field(
        default_factory=dict
    )
    refused: Annotated[dict[str, str], Meta(max_length=CONFIG_MAX_KEYS)] = field(
        default_factory=dict
    )
    pending_restart: Annotated[list[str], Meta(max_length=CONFIG_MAX_KEYS)] = field(
        default_factory=list
    )
    ts: float = field(default_factory=time.time)


class Receipt(WireMessage, frozen=True, kw_only=True):
    """The control plane's end-to-end receipt, on ``down/receipt``.

    Lists the ``event_id`` of telemetry events and install reports that are committed
    to the control plane's database. A device deletes a spooled event only when a
    receipt names it (the broker's PUBACK only frees the in-flight window) and sends
    again what stays unreceipted; event ids make a resend harmless.
    """

    type: Literal["receipt"] = "receipt"
    event_ids: Annotated[list[str], Meta(max_length=RECEIPT_MAX_IDS)]
    ts: float = field(default_factory=time.time)


class MetaIndex(WireMessage, frozen=True, kw_only=True):
    """The TUF metadata published retained on ``fleet/all/down/meta/<file>``.

    ``files`` maps each file name to its SHA-256, so a device takes a retained file
    only when it is the one the index names (a file replaced between the two reads
    is asked for by request instead). ``root_version`` is the newest root: a device
    probing for a newer one learns there is none without asking the control plane.
    Unsigned like ``BlobIndex``: TUF verifies every file, and only the control plane
    may publish under ``fleet/all/down`` (broker ACL).
    """

    type: Literal["meta_index"] = "meta_index"
    files: dict[
        Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.json\Z")],
        Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")],
    ] = field(default_factory=dict)
    root_version: Annotated[int, Meta(ge=1)]
    timestamp_version: Annotated[int, Meta(ge=0)] = 0
    """The indexed ``timestamp.json``'s version: a replica whose repository files are
    older than what the broker holds does not publish over it."""


Message = (
    DeviceStatus
    | InstallReport
    | FetchRequest
    | BundleOffer
    | TelemetryEvent
    | DeviceCommand
    | Receipt
    | LogRequest
    | LogChunk
    | DesiredConfig
    | ConfigReport
)

_MESSAGE_TYPES: dict[str, type[WireMessage]] = {
    "status": DeviceStatus,
    "install": InstallReport,
    "fetch": FetchRequest,
    "blob_index": BlobIndex,
    "meta_index": MetaIndex,
    "offer": BundleOffer,
    "telemetry": TelemetryEvent,
    "command": DeviceCommand,
    "receipt": Receipt,
    "log_request": LogRequest,
    "logs": LogChunk,
    "config": DesiredConfig,
    "config_report": ConfigReport,
}

M = TypeVar("M", bound=WireMessage)

# The closing quote is optional so that an unclosed string ends the scan in one pass
# (a required one makes a run of escaped quotes rescan from every quote: quadratic time).
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"?')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def nesting_depth(payload: bytes) -> int:
    """How deeply JSON arrays and objects nest in ``payload`` (brackets inside strings
    do not count); cheap enough to run on every message before decoding."""
    brackets = _STRING.sub(b"", payload).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def check_bounds(
    payload: bytes,
    *,
    topic: str | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
    max_nesting: int = MAX_NESTING,
) -> None:
    """Refuse a payload too large or too deeply nested to decode safely.

    Args:
        payload: The message as received, not yet decoded.
        topic: The topic it came on, carried into the error for the log.
        max_bytes: Largest payload accepted.
        max_nesting: Deepest nesting of JSON arrays and objects accepted.

    Raises:
        MessageError: With ``fault`` ``"too_large"`` or ``"too_deep"``.
    """
    if len(payload) > max_bytes:
        raise MessageError(
            f"message too large: {len(payload)} bytes (limit {max_bytes})",
            topic=topic,
            fault="too_large",
        )
    if payload.count(b"[") + payload.count(b"{") <= max_nesting:
        return  # no deeper than its openers, quoted ones included: the scan is not needed
    depth = nesting_depth(payload)
    if depth > max_nesting:
        raise MessageError(
            f"message nested too deeply: {depth} (limit {max_nesting})",
            topic=topic,
            fault="too_deep",
        )


def decode_message(payload: bytes, *, topic: str | None = None) -> WireMessage:
    """Decode and validate any wire message.

    Size and nesting are bounded before the decoder sees the payload, and anything the
    decoder raises is this message's fault: no payload can take its receiver down.

    Args:
        payload: The JSON message as received.
        topic: The topic it came on, carried into the error for the log.

    Returns:
        The message as its own type (``DeviceStatus``, ``InstallReport``, ...), with any
        fields this version does not declare kept.

    Raises:
        MessageError: Naming what is wrong: too large or too deeply nested, not a JSON
            object, an unknown ``type``, a field that fails validation, or a newer
            schema version.
    """
    check_bounds(payload, topic=topic)
    try:
        raw = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError, MemoryError) as e:
        raise MessageError(f"invalid message: {e}", topic=topic) from e
    if not isinstance(raw, dict):
        raise MessageError("invalid message: not a JSON object", topic=topic)
    kind = raw.get("type")
    message_type = _MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if message_type is None:
        raise MessageError(f"invalid message: type: unknown message type {kind!r}", topic=topic)
    try:
        message = schema.convert(raw, message_type)
    except msgspec.ValidationError as e:
        raise MessageError(f"invalid message: {schema.describe(e)}", topic=topic) from e
    if message.v > SCHEMA_VERSION:
        raise MessageError(f"unsupported schema version {message.v}", topic=topic)
    return message


def decode_as(payload: bytes, expected: type[M], *, topic: str | None = None) -> M:
    """Decode a message and insist it is of type ``expected``.

    Returns:
        The message, typed as ``expected``.

    Raises:
        MessageError: As ``decode_message``, or the message is of another type.
    """
    message = decode_message(payload, topic=topic)
    if not isinstance(message, expected):
        raise MessageError(
            f"expected {expected.__name__}, got {type(message).__name__}", topic=topic
        )
    return message
