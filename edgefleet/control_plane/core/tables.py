"""SQLModel tables and the public (API) models, one family per entity.

Why this module stays over 400 lines: the issue asks for every database table in one
place, so a reader finds the whole schema (and each entity's family: base, create,
update, table, public) in one file; the families are declarations with no logic to
share, and splitting them by entity would scatter the foreign keys between them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import StringConstraints, field_validator
from sqlalchemy import JSON, BigInteger, Column, DateTime, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from edgefleet.control_plane.drift.hook_config import HOOK_NAME_PATTERN
from edgefleet.errors import WindowError
from edgefleet.maintenance import MAX_DURATION_S as MAX_WINDOW_S
from edgefleet.maintenance import MaintenanceWindow, check_window, zone_of

MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts_field() -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True))


# -- models -------------------------------------------------------------------


class ModelVersionBase(SQLModel):
    name: str = Field(index=True, max_length=64)
    version: str = Field(max_length=64)


class ModelVersion(ModelVersionBase, table=True):
    """A registered float ONNX model and its representative samples."""

    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_name_version"),)

    id: int | None = Field(default=None, primary_key=True)
    sha256: str
    size_bytes: int
    path: str
    samples_path: str
    signature: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    format: str = Field(default="onnx", max_length=16)  # "onnx" | "tflite", read from the bytes
    # Every format the version carries (``model.<format>`` beside ``path``): the primary
    # one, and an export of the same model in the other format when one was registered.
    formats: list[str] = Field(default_factory=lambda: ["onnx"], sa_column=Column(JSON))
    # How the two exports agreed on the samples, when there are two.
    artifact_check: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Scores output -> class label of each column (an ONNX-ML ZipMap's labels), if any.
    labels: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # What the outputs mean, as declared (``edgefleet.converters.gate.parse_task``).
    task: str | None = Field(default=None, max_length=1024)
    created_at: datetime = _ts_field()


class ModelPublic(ModelVersionBase):
    id: int
    sha256: str
    size_bytes: int
    created_at: datetime
    signature: dict[str, Any]
    format: str = "onnx"
    formats: list[str] = ["onnx"]
    artifact_check: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None
    task: str | None = None


# -- bundles ------------------------------------------------------------------


class BundleCreate(SQLModel):
    model: str
    version: str
    profile: str


class Bundle(SQLModel, table=True):
    """A built, signed bundle: one TUF target ``<id>.tar``."""

    id: str = Field(primary_key=True, max_length=128)
    model: str = Field(index=True)
    model_version: str
    profile: str = Field(index=True)
    release: int = Field(unique=True)
    target: str
    sha256: str
    length: int
    path: str
    manifest: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    created_at: datetime = _ts_field()


class BundlePublic(SQLModel):
    id: str
    model: str
    model_version: str
    profile: str
    release: int
    target: str
    sha256: str
    length: int
    created_at: datetime
    manifest: dict[str, Any]


class BuildJob(SQLModel, table=True):
    """One bundle build, run in the background: its state, each candidate as it lands,
    and the bundle it made or the error that stopped it (with the HTTP status the
    synchronous build answers)."""

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(index=True, max_length=64)
    model_version: str = Field(max_length=64)
    profile: str
    state: str = Field(default="queued", index=True)  # edgefleet.states.build
    stage: str | None = None  # what the build is doing now ("measuring int8-static")
    max_accuracy_drop: float | None = None
    candidates: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    bundle_id: str | None = None
    error: str | None = None
    error_status: int | None = None
    worker_max_rss_bytes: int | None = None  # peak RSS of the child process that built it
    owner: str = Field(index=True)  # the replica that runs it
    created_by: str | None = None
    created_at: datetime = _ts_field()
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class BuildJobPublic(SQLModel):
    id: int
    model: str
    model_version: str
    profile: str
    state: str
    stage: str | None
    max_accuracy_drop: float | None
    candidates: list[dict[str, Any]]
    bundle_id: str | None
    error: str | None
    error_status: int | None
    worker_max_rss_bytes: int | None
    owner: str
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


# -- devices ------------------------------------------------------------------


class DeviceBase(SQLModel):
    profile: str | None = None
    online: bool = False
    last_seen: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    bundle_id: str | None = None
    release: int | None = None
    model: str | None = None
    model_version: str | None = None
    agent_version: str | None = None
    models: list[dict[str, Any]] | None = Field(
        default=None,
        sa_type=JSON,
        description="every model the device serves (name, version, bundle_id, release), "
        "as of its last status; the top-level model fields name the first",
    )
    spool_depth: int | None = Field(
        default=None, description="events waiting in the device's spool, as of its last status"
    )
    stale: bool = Field(
        default=False, description="connected by presence, but silent for longer than allowed"
    )


class Device(DeviceBase, table=True):
    """A device as last seen on its status topic, plus the labels operators set."""

    id: str = Field(primary_key=True, max_length=64)
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))


class MessageRejection(SQLModel, table=True):
    """How many of one device's messages on one channel were refused, and why.

    ``reason`` is one of a small set (``too_large``, ``too_deep``, ``invalid``,
    ``failed``), so the table stays a handful of rows per device however many
    poison messages a device sends.
    """

    device_id: str = Field(primary_key=True, max_length=64)
    channel: str = Field(primary_key=True, max_length=16)
    reason: str = Field(primary_key=True, max_length=16)
    count: int = 0
    last_at: datetime = _ts_field()


class MessageRejectionPublic(SQLModel):
    channel: str
    reason: str
    count: int
    last_at: datetime


class DevicePublic(DeviceBase):
    id: str
    labels: dict[str, str] = {}
    rejected_messages: int = Field(
        default=0, description="messages from this device refused (undecodable or unhandleable)"
    )
    rejections: list[MessageRejectionPublic] = []


class DeviceLabelsUpdate(SQLModel):
    """Replace a device's labels (``{"site": "berlin", "ring": "early"}``)."""

    model_config = {"extra": "forbid"}

    labels: dict[str, str] = Field(default_factory=dict)


# -- device groups --------------------------------------------------------------


class DeviceGroupBase(SQLModel):
    description: str | None = Field(default=None, max_length=200)
    device_ids: list[str] = Field(default_factory=list)


class DeviceGroupUpdate(DeviceGroupBase):
    model_config = {"extra": "forbid"}


class DeviceGroup(DeviceGroupBase, table=True):
    """A named, explicit set of devices a rollout selector can name.

    ``maintenance_window`` (a ``RolloutWindow`` as JSON, or None): its members switch
    only inside it, unless a rollout gives a window of its own.
    """

    name: str = Field(primary_key=True, max_length=64)
    device_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    maintenance_window: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    updated_at: datetime = _ts_field()


class DeviceGroupPublic(DeviceGroupBase):
    name: str
    maintenance_window: dict[str, Any] | None = None
    updated_at: datetime


# -- rollouts -----------------------------------------------------------------


RolloutStrategy = Literal["canary", "blue_green", "shadow"]
RolloutMode = Literal["automatic", "manual"]
WaveSpec = int | str
WAVE_PATTERN = r"^(100|[1-9][0-9]?)(\.[0-9]+)?%$"


class RolloutSelector(SQLModel):
    """Which devices a rollout targets; always narrowed to the bundle's profile.

    With ``device_ids`` and/or ``groups``, their union; otherwise every device of
    the profile. ``labels`` then keeps the devices carrying all the given labels.
    """

    model_config = {"extra": "forbid"}

    profile: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    device_ids: list[str] | None = None
    groups: list[str] | None = None


class RolloutGates(SQLModel):
    """Thresholds checked at the end of each wave's soak; None switches a gate off.

    Rates are fractions (0.05 = 5 %). ``max_p95_latency_ratio`` compares the wave's
    p95 inference latency on the new bundle with devices of the rollout still on
    another bundle. A telemetry gate needs evidence: a wave keeps soaking until its
    devices have reported at least ``min_inferences`` (at least one) inferences on
    the new bundle, and at least one telemetry window has passed (or every device of
    the wave has reported); past ``evidence_wait_s`` it fails for want of evidence.
    """

    model_config = {"extra": "forbid"}

    max_install_failure_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    max_error_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    max_p95_latency_ratio: float | None = Field(default=None, gt=0.0)
    min_agreement: float | None = Field(default=None, ge=0.0, le=1.0)
    min_inferences: int = Field(default=0, ge=0)
    evidence_wait_s: float = Field(
        default=300.0,
        gt=0,
        le=7 * 86_400,
        description="how long a wave may soak past its soak time (and the devices' "
        "telemetry window) for its gates' minimum evidence; then it fails",
    )


class RolloutWindow(SQLModel):
    """A maintenance window: the devices switch only while it is open (cron in ``tz``).

    Checked here with the same reader the agents use (``edgefleet.maintenance``), so a
    window a device could not read is refused when the rollout is created.
    """

    model_config = {"extra": "forbid"}

    cron: str = Field(max_length=200, description='five-field cron, e.g. "0 2 * * *"')
    duration_s: float = Field(gt=0, le=MAX_WINDOW_S, description="how long each opening lasts")
    tz: str = Field(default="UTC", max_length=64, description="IANA time zone of the cron")

    @field_validator("tz")
    @classmethod
    def _known_zone(cls, tz: str) -> str:
        try:
            zone_of(MaintenanceWindow(cron="* * * * *", duration_s=60, tz=tz))
        except WindowError as e:
            raise ValueError(str(e)) from e
        return tz

    @field_validator("cron")
    @classmethod
    def _readable_cron(cls, cron: str) -> str:
        try:
            check_window(MaintenanceWindow(cron=cron, duration_s=60))
        except WindowError as e:
            raise ValueError(str(e)) from e
        return cron


class GroupWindowUpdate(SQLModel):
    """``PUT /groups/{name}/window``: the group's maintenance window, or null to clear it."""

    model_config = {"extra": "forbid"}

    maintenance_window: RolloutWindow | None = None


class RolloutAtomic(SQLModel):
    """The fleet-wide atomic switch: every device stages and waits ``armed``; once the
    quorum is armed a signed order switches them all at one moment
    (``services.rollouts.atomic``)."""

    model_config = {"extra": "forbid"}

    quorum_pct: float = Field(
        default=100.0, gt=0, le=100, description="share of the devices that must be armed"
    )
    switch_lead_s: float = Field(
        default=5.0, ge=1.0, le=3600.0, description="the order's moment: signed at + this"
    )
    late_switch_s: float = Field(
        default=600.0,
        ge=0.0,
        le=7 * 86_400,
        description="a device back after the moment still switches this long after it",
    )


DEFAULT_INSTALL_TIMEOUT_S = 30 * 60.0
DEFAULT_WAVE_TIMEOUT_S = 2 * 3600.0


class RolloutCreate(SQLModel):
    """A rollout request; ``{bundle_id, device_ids}`` alone is one wave of 100 %, no gates."""

    model_config = {"extra": "forbid"}

    bundle_id: str
    device_ids: list[str] | None = None
    selector: RolloutSelector | None = None
    strategy: RolloutStrategy = "canary"
    waves: list[WaveSpec] = Field(
        default_factory=lambda: ["100%"],
        min_length=1,
        max_length=20,
        description='cumulative wave sizes: counts or percentages, e.g. [1, "10%", "50%", "100%"]',
    )
    soak_seconds: float = Field(default=0.0, ge=0.0, le=7 * 86_400)
    gates: RolloutGates = Field(default_factory=RolloutGates)
    mode: RolloutMode = "automatic"
    start: bool = Field(default=True, description="false: create as a draft")
    install_timeout_s: float = Field(
        default=DEFAULT_INSTALL_TIMEOUT_S,
        gt=0,
        le=7 * 86_400,
        description="each device's install deadline, offer -> active, counted while it is "
        "online; a device that misses it is timed_out",
    )
    wave_timeout_s: float = Field(
        default=DEFAULT_WAVE_TIMEOUT_S,
        gt=0,
        le=30 * 86_400,
        description="how long a wave waits for its online devices to install; then every "
        "online device still installing is timed_out",
    )
    maintenance_window: RolloutWindow | None = Field(
        default=None,
        description="devices stage at once but switch only inside this window (deferred "
        "meanwhile); their install deadlines keep running",
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="most devices downloading and installing at once across the fleet: "
        "a wave's devices are offered this many at a time, the next as one finishes",
    )
    bandwidth_bytes_per_s: int | None = Field(
        default=None,
        ge=1,
        le=10**15,
        description="the rollout's fleet bandwidth budget: offers are paced so that the "
        "bundle bytes they start stay within it (one second's worth may go at once)",
    )
    atomic: RolloutAtomic | None = Field(
        default=None,
        description="switch every device at one signed moment once the quorum has staged; "
        "if staging fails beyond the quorum, nobody switches",
    )


class RolloutAction(SQLModel):
    """An operator action on a rollout (pause, resume, promote, abort, rollback, start)."""

    model_config = {"extra": "forbid"}

    reason: str | None = Field(default=None, max_length=500)


class Rollout(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    bundle_id: str = Field(foreign_key="bundle.id", index=True)
    state: str = Field(default="in_progress", index=True)
    strategy: str = "canary"
    mode: str = "automatic"
    selector: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    waves: list[Any] = Field(default_factory=list, sa_column=Column(JSON))
    wave_sizes: list[int] = Field(default_factory=list, sa_column=Column(JSON))
    soak_seconds: float = 0.0
    gates: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    current_wave: int = 0  # 0-based index into wave_sizes
    phase: str = "installing"  # installing | soaking | awaiting_promotion | done
    wave_started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    install_timeout_s: float = DEFAULT_INSTALL_TIMEOUT_S
    wave_timeout_s: float = DEFAULT_WAVE_TIMEOUT_S
    maintenance_window: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    max_concurrent: int | None = None  # devices installing at once (None: the whole wave)
    # Offers paced by bundle size (None: unpaced); 64-bit, past 2 GB/s.
    bandwidth_bytes_per_s: int | None = Field(default=None, sa_type=BigInteger)
    # Offers under the bandwidth budget have spent it until this moment (wall clock).
    budget_spent_until: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    atomic: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))  # RolloutAtomic
    # The signed switch order once issued: target, switch_at, valid_until (epoch seconds).
    switch_order: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The current wave's deadline for its installs (wall clock, from the wave's start).
    wave_deadline_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    soak_started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    promoted: bool = False
    wave_results: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    reason: str | None = None
    created_by: str | None = None
    owner: str | None = None  # replica that advanced it last
    revision: int = 0  # bumped by every pass and action: takes the write lock first
    created_at: datetime = _ts_field()
    updated_at: datetime = _ts_field()


class RolloutDevice(SQLModel, table=True):
    """One device's progress in one rollout."""

    rollout_id: int = Field(foreign_key="rollout.id", primary_key=True)
    device_id: str = Field(foreign_key="device.id", primary_key=True)
    wave: int = 0
    state: str = "offered"
    reason: str | None = None
    install_seconds: float | None = None
    offered_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Install deadline; moved on by the time the device spent offline (clock paused).
    deadline_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    paused_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    # Its wave's deadline (wall clock, never moved): the cap on a paused clock.
    wave_deadline_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    timed_out_in: str | None = None  # the state it last reported when it timed out
    late_state: str | None = None  # what it reported after it timed out
    switched_at: float | None = None  # atomic rollouts: when it switched (epoch seconds)
    switch_late_s: float | None = None  # how long after the order's moment
    updated_at: datetime = _ts_field()


class RolloutDevicePublic(SQLModel):
    device_id: str
    wave: int
    state: str
    reason: str | None
    install_seconds: float | None
    offered_at: datetime | None = None
    deadline_at: datetime | None = None
    wave_deadline_at: datetime | None = None
    clock_paused: bool = False  # offline: its install clock stands still
    timed_out_in: str | None = None
    late_state: str | None = None
    switched_at: float | None = None
    switch_late_s: float | None = None
    maintenance_window: dict[str, Any] | None = None  # the window its offer carries
    updated_at: datetime


class GateValue(SQLModel):
    name: str
    value: float | None
    threshold: float | None
    ok: bool
    detail: str


class WavePublic(SQLModel):
    wave: int  # 1-based
    size: int  # devices in this wave
    state: str  # pending | installing | soaking | awaiting_promotion | passed | breached
    counts: dict[str, int]
    gates: list[GateValue]
    soak_until: datetime | None = None
    deadline: datetime | None = None  # installs of the current wave end here


class RolloutPublic(SQLModel):
    id: int
    bundle_id: str
    state: str
    strategy: str = "canary"
    mode: str = "automatic"
    selector: dict[str, Any] = {}
    waves: list[Any] = []
    soak_seconds: float = 0.0
    gates: dict[str, Any] = {}
    install_timeout_s: float = DEFAULT_INSTALL_TIMEOUT_S
    wave_timeout_s: float = DEFAULT_WAVE_TIMEOUT_S
    maintenance_window: dict[str, Any] | None = None
    max_concurrent: int | None = None
    bandwidth_bytes_per_s: int | None = None
    atomic: dict[str, Any] | None = None
    switch_order: dict[str, Any] | None = None
    switch_skew_s: float | None = None  # max - min of the devices' switched_at
    wave: int = 1  # current wave, 1-based
    wave_count: int = 1
    phase: str = "installing"
    reason: str | None = None
    created_by: str | None = None
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int]
    wave_status: list[WavePublic] = []
    devices: list[RolloutDevicePublic]


# -- audit log ------------------------------------------------------------------


class AuditEntry(SQLModel, table=True):
    """One operator action or automatic decision: who, what, when, why."""

    id: int | None = Field(default=None, primary_key=True)
    ts: datetime = Field(default_factory=utcnow, sa_type=DateTime(timezone=True), index=True)
    actor: str = Field(max_length=100)
    actor_token_id: int | None = None  # the API token that acted; None for the system
    action: str = Field(max_length=64, index=True)
    rollout_id: int | None = Field(default=None, index=True)
    target: str | None = Field(default=None, max_length=200)
    reason: str | None = None
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class AuditEntryPublic(SQLModel):
    id: int
    ts: datetime
    actor: str
    actor_token_id: int | None = None
    action: str
    rollout_id: int | None
    target: str | None
    reason: str | None
    detail: dict[str, Any]


# -- telemetry events ---------------------------------------------------------


class Event(SQLModel, table=True):
    """One telemetry event a device sent, stored once whatever the redeliveries."""

    event_id: str = Field(primary_key=True, max_length=64)
    device_id: str = Field(index=True, max_length=40)
    kind: str = Field(index=True, max_length=16)
    priority: int = 1
    bundle_id: str | None = Field(default=None, index=True)
    release: int | None = None
    ts: datetime = Field(sa_type=DateTime(timezone=True), index=True)
    received_at: datetime = _ts_field()
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class EventAggregate(SQLModel, table=True):
    """Telemetry of one rollout's wave about one bundle, summed per minute at ingest.

    The gates read these rows instead of scanning raw events, so judging a wave costs
    the minutes it soaked, not the events its devices sent. ``bundle_id`` is the bundle
    the window was about (for ``shadow`` windows, the shadowed candidate). Sums are
    weighted by each window's ``count``: a p95 or agreement is the weighted sum divided
    by ``inferences``.
    """

    __tablename__ = "event_aggregate"

    rollout_id: int = Field(primary_key=True)
    wave: int = Field(primary_key=True)
    bundle_id: str = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=16)
    minute: datetime = Field(sa_type=DateTime(timezone=True), primary_key=True)
    events: int = 0
    inferences: float = 0.0
    errors: float = 0.0
    p95_weighted: float = 0.0
    agreement_weighted: float = 0.0
    unhistogrammed: int = 0  # windows with inferences but no usable latency histogram
    window_s: float = 0.0  # the longest telemetry window reported


class EventHistogramBucket(SQLModel, table=True):
    """One latency bucket of an ``EventAggregate`` row: inferences at or under ``bound_ms``.

    Overflow (above a histogram's last bound) is kept at twice that bound, the value the
    gates have always read for it.
    """

    __tablename__ = "event_histogram_bucket"

    rollout_id: int = Field(primary_key=True)
    wave: int = Field(primary_key=True)
    bundle_id: str = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=16)
    minute: datetime = Field(sa_type=DateTime(timezone=True), primary_key=True)
    bound_ms: float = Field(primary_key=True)
    inferences: float = 0.0


class RolloutReporter(SQLModel, table=True):
    """A device of a rollout sent ``kind`` telemetry about ``bundle_id``, last at ``last_ts``.

    The gates need to know which devices reported, not only the sums: this keeps that
    at one row per device instead of a scan of its events.
    """

    __tablename__ = "rollout_reporter"

    rollout_id: int = Field(primary_key=True)
    device_id: str = Field(primary_key=True, max_length=40)
    bundle_id: str = Field(primary_key=True)
    kind: str = Field(primary_key=True, max_length=16)
    last_ts: datetime = Field(sa_type=DateTime(timezone=True))


class EventPublic(SQLModel):
    event_id: str
    device_id: str
    kind: str
    priority: int
    bundle_id: str | None
    release: int | None
    ts: datetime
    received_at: datetime
    data: dict[str, Any]


class FieldSample(SQLModel, table=True):
    """One device's field sample (a ``sample`` event): input rows it saw in a drifted
    window and rows it learnt the label of, kept per model version for retraining
    (``edgefleet.control_plane.services.field_data``)."""

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(index=True, unique=True, max_length=64)
    device_id: str = Field(max_length=40)
    model: str = Field(index=True, max_length=64)
    model_version: str = Field(index=True, max_length=64)
    bundle_id: str | None = Field(default=None, max_length=255)
    input_name: str = Field(default="", max_length=255)
    ts: datetime = Field(sa_type=DateTime(timezone=True))
    received_at: datetime = _ts_field()
    drifted: bool = False
    rows: int = 0
    labelled_rows: int = 0
    width: int = 0
    inputs: list[Any] = Field(default_factory=list, sa_column=Column(JSON))
    outputs: list[Any] = Field(default_factory=list, sa_column=Column(JSON))
    labels: list[Any] = Field(default_factory=list, sa_column=Column(JSON))
    reasons: list[Any] = Field(default_factory=list, sa_column=Column(JSON))
    withheld_rows: int = 0


class FieldSamplePublic(SQLModel):
    event_id: str
    device_id: str
    model: str
    model_version: str
    bundle_id: str | None
    input_name: str
    ts: datetime
    received_at: datetime
    drifted: bool
    rows: int
    labelled_rows: int
    width: int
    inputs: list[Any]
    outputs: list[Any]
    labels: list[Any]
    reasons: list[Any]
    withheld_rows: int


class FieldDataPublic(SQLModel):
    """A model's field data: counts over every kept sample, and the newest samples."""

    summary: dict[str, Any]
    samples: list[FieldSamplePublic]


class EventSummary(SQLModel):
    """One device's stored events of one kind: how many, and the sum of ``data.count``
    (for ``inference`` events: the inferences served in those windows)."""

    device_id: str
    events: int
    count_total: int


# -- drift loop: per-model policy and retraining requests ---------------------

RetrainMode = Literal["automatic", "approval", "off"]
RetrainingState = Literal[
    "pending_approval",  # drift fired; a person must approve (policy "approval")
    "approved",  # will run the hook on the next scheduler pass
    "running",  # hook running, then build through the gates and compare
    "awaiting_model",  # webhook called; waits for the trainer to register the version
    "rolled_out",  # challenger won; canary rollout started
    "rejected",  # a person rejected it, or the challenger lost (reason says which)
    "failed",  # hook, build or rollout failed (reason says why)
]


HookName = Annotated[str, StringConstraints(pattern=HOOK_NAME_PATTERN)]


class ModelPolicyUpdate(SQLModel):
    """What an operator sets for a model's drift loop (validated; unknown keys refused).

    A change names only what it changes (PATCH): fields left out keep their value.
    ``hook`` selects one of the retraining hooks an admin defined on the control
    plane (``edgefleet.control_plane.drift.hook_config``) by name; ``null`` clears it.
    """

    model_config = {"extra": "forbid"}

    retrain: RetrainMode = "approval"
    hook: HookName | None = None
    retrain_cron: str | None = Field(default=None, description="crontab for scheduled retraining")
    canary_device_count: int = Field(default=1, ge=1)
    comparison_margin: float = Field(default=0.0, ge=0.0, le=1.0)
    drift_enter: int = Field(default=3, ge=1)
    drift_leave: int = Field(default=3, ge=1)
    drift_min_devices: int = Field(default=2, ge=1)
    drift_device_share: float = Field(default=0.3, gt=0.0, le=1.0)

    @field_validator("retrain_cron")
    @classmethod
    def _valid_crontab(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(value, timezone="UTC")  # ValueError names the bad field
        return value


class ModelPolicy(SQLModel, table=True):
    """How the drift loop treats one model: retrain automatically, after approval, or never."""

    model: str = Field(primary_key=True, max_length=64)
    retrain: str = "approval"
    hook: str | None = Field(default=None, max_length=64)
    retrain_cron: str | None = None
    canary_device_count: int = 1
    comparison_margin: float = 0.0
    drift_enter: int = 3
    drift_leave: int = 3
    drift_min_devices: int = 2
    drift_device_share: float = 0.3
    updated_at: datetime = _ts_field()


class ModelPolicyPublic(ModelPolicyUpdate):
    model_config = {"extra": "ignore"}

    model: str
    updated_at: datetime


class RetrainingRequest(SQLModel, table=True):
    """One pass of the drift loop, from the verdict to the canary rollout."""

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(index=True, max_length=64)
    from_version: str
    new_version: str | None = None
    cohort: str | None = None
    trigger: str = "drift"  # drift | schedule | manual
    state: str = Field(default="pending_approval", index=True)
    reason: str = ""
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    rollout_id: int | None = None
    decided_by: str | None = None
    requested_by: str | None = Field(default=None, max_length=100)
    requested_by_token_id: int | None = None
    created_at: datetime = _ts_field()
    updated_at: datetime = _ts_field()


class RetrainingRequestPublic(SQLModel):
    id: int
    model: str
    from_version: str
    new_version: str | None
    cohort: str | None
    trigger: str
    state: str
    reason: str
    detail: dict[str, Any]
    rollout_id: int | None
    decided_by: str | None
    requested_by: str | None = None
    requested_by_token_id: int | None = None
    created_at: datetime
    updated_at: datetime


# -- device enrolment: one-time tokens and broker credentials -----------------


class EnrolmentTokenCreate(SQLModel):
    """What an operator asks for: how long the one-time token stays valid."""

    model_config = {"extra": "forbid"}

    ttl_seconds: int = Field(default=3600, ge=60, le=30 * 24 * 3600)
    note: str | None = Field(default=None, max_length=200)


class EnrolmentToken(SQLModel, table=True):
    """A one-time enrolment token; only its SHA-256 is stored, the secret is shown once."""

    id: int | None = Field(default=None, primary_key=True)
    token_sha256: str = Field(unique=True, max_length=64)
    note: str | None = None
    created_at: datetime = _ts_field()
    expires_at: datetime = Field(sa_type=DateTime(timezone=True))
    used_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    used_by: str | None = Field(default=None, max_length=64)


class EnrolmentTokenIssued(SQLModel):
    id: int
    token: str
    expires_at: datetime


class EnrolRequest(SQLModel):
    """What a device sends to enrol (its id is checked again by the service)."""

    model_config = {"extra": "forbid"}

    token: str = Field(min_length=1, max_length=200)
    device_id: str = Field(max_length=64)
    profile: str = Field(min_length=1, max_length=64)
    csr: str | None = Field(
        default=None,
        max_length=8192,
        description="PEM certificate signing request (P-256 key made on the device); "
        "required when the broker authenticates devices by certificate",
    )


class EnrolResponse(SQLModel):
    """The device's broker credentials: a password (shown once) or a client certificate."""

    device_id: str
    username: str
    password: str | None = None
    certificate: str | None = Field(default=None, description="PEM client certificate, CN=id")
    ca_certificate: str | None = Field(default=None, description="PEM CA that issued it")


class DeviceCredential(SQLModel, table=True):
    """An enrolled device's broker credential (Mosquitto ``$7$`` hash, never the password).

    ``password_hash`` is empty for a device that enrolled with a certificate signing
    request: its certificates are ``DeviceCertificate`` rows.
    """

    device_id: str = Field(primary_key=True, max_length=64)
    profile: str
    password_hash: str
    enrolled_at: datetime = _ts_field()
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class DeviceCertificate(SQLModel, table=True):
    """A client certificate the control plane's CA issued to a device (serial in hex)."""

    serial: str = Field(primary_key=True, max_length=40)
    device_id: str = Field(index=True, max_length=64)
    not_after: datetime = Field(sa_type=DateTime(timezone=True))
    issued_at: datetime = _ts_field()
    revoked_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class DeviceCredentialPublic(SQLModel):
    device_id: str
    profile: str
    enrolled_at: datetime
    revoked_at: datetime | None


# -- the signed repository: metadata every replica signs from ------------------


class RepositoryMetadata(SQLModel, table=True):
    """One signed version of one TUF role, exactly as served
    (``edgefleet.control_plane.trust.repository``).

    A (role, version) pair is signed once: the constraint refuses a second, different
    signing of the same version by any replica.
    """

    __tablename__ = "repository_metadata"
    __table_args__ = (
        UniqueConstraint("role", "version", name="uq_repository_metadata_role_version"),
    )

    id: int | None = Field(default=None, primary_key=True)
    role: str = Field(max_length=16, index=True)
    version: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    signed_by: str | None = Field(default=None, max_length=100)
    created_at: datetime = _ts_field()


class RepositoryLock(SQLModel, table=True):
    """The one row every signing step writes first: signing is serialized across replicas."""

    __tablename__ = "repository_lock"

    id: int = Field(default=1, primary_key=True)
    steps: int = 0  # signing steps committed so far


class TrustFloor(SQLModel, table=True):
    """Per role, the highest metadata version any device reported trusting.

    The repository never publishes a version at or below it (a device would refuse it).
    """

    __tablename__ = "trust_floor"

    role: str = Field(primary_key=True, max_length=16)
    version: int
    device_id: str = Field(max_length=64)
    reported_at: datetime = _ts_field()


# -- A/B experiments --------------------------------------------------------------

ExperimentMetric = Literal["error_rate", "latency_ms", "accuracy", "outcome"]
ExperimentMode = Literal["split", "bandit", "requests", "requests_bandit"]


class ExperimentCreate(SQLModel):
    """Two bundles of one model and profile, split over a cohort, decided on one metric.

    ``metric`` decides; the other metrics are shown beside it. Lower is better for
    ``error_rate`` and ``latency_ms``, higher for ``accuracy``; for ``outcome`` (the
    number the application posts on the device) ``outcome_goal`` says which.
    ``promote_to`` picks the devices the winner is rolled out to once decided (by
    default every device of the profile); the winner's own arm already runs it.

    ``mode``: ``split`` gives each device one arm (``share_b`` of the devices run B);
    ``bandit`` moves devices toward the better arm. ``requests`` keeps arm A active on
    every device of the cohort and delivers arm B beside it as a challenger that answers
    ``share_b`` of each device's requests; ``requests_bandit`` moves that share per device
    toward the better arm. Arm B must then be the newer release (a device takes no older
    bundle, not even beside its active one).
    """

    model_config = {"extra": "forbid"}

    name: str = Field(min_length=1, max_length=64)
    bundle_a: str = Field(max_length=128, description="arm A, usually what the cohort runs")
    bundle_b: str = Field(max_length=128, description="arm B, the candidate")
    selector: RolloutSelector = Field(default_factory=RolloutSelector)
    metric: ExperimentMetric = "error_rate"
    outcome_goal: Literal["maximize", "minimize"] = "maximize"
    mode: ExperimentMode = "split"
    share_b: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="arm B's share of devices, or of each device's requests in requests mode",
    )
    min_share: float = Field(
        default=0.1, ge=0.0, le=0.5, description="bandit mode: the least share either arm keeps"
    )
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)
    mixture_sd: float = Field(default=0.1, gt=0.0, le=10.0)
    min_samples: int = Field(default=100, ge=2, le=10_000_000)
    reassign_every_s: float = Field(default=300.0, gt=0, le=7 * 86_400)
    promote_to: RolloutSelector | None = None
    promote_waves: list[WaveSpec] = Field(
        default_factory=lambda: ["100%"], min_length=1, max_length=20
    )
    promote_gates: RolloutGates = Field(default_factory=RolloutGates)


class ExperimentStop(SQLModel):
    model_config = {"extra": "forbid"}

    reason: str | None = Field(default=None, max_length=500)


class Experiment(SQLModel, table=True):
    """One A/B experiment: its arms' rollouts, assignment, latest numbers and decision."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    model: str = Field(max_length=64)
    profile: str = Field(max_length=64)
    bundle_a: str = Field(foreign_key="bundle.id")
    bundle_b: str = Field(foreign_key="bundle.id")
    state: str = Field(default="running", index=True)  # edgefleet.states.experiment
    mode: str = "split"
    metric: str = "error_rate"
    outcome_goal: str = "maximize"
    share_b: float = 0.5
    min_share: float = 0.1
    alpha: float = 0.05
    mixture_sd: float = 0.1
    min_samples: int = 100
    reassign_every_s: float = 300.0
    selector: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    promote_to: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    promote_waves: list[Any] = Field(default_factory=list, sa_column=Column(JSON))
    promote_gates: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    # device id -> "A" | "B", as assigned now
    assignments: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    # requests mode: device id -> arm B's share of its requests, as sent to it now
    shares: dict[str, float] = Field(default_factory=dict, sa_column=Column(JSON))
    # every rollout that delivered an arm, oldest first: [{"arm", "rollout_id", "devices"}]
    arm_rollouts: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    results: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    passes: int = 0
    winner: str | None = Field(default=None, max_length=1)
    promotion_rollout_id: int | None = None
    reason: str | None = None
    created_by: str | None = None
    started_at: datetime = _ts_field()
    reassigned_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    decided_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    updated_at: datetime = _ts_field()


class ExperimentArmPublic(SQLModel):
    arm: str
    bundle_id: str
    devices: list[str]
    rollout_ids: list[int]


class ExperimentPublic(SQLModel):
    id: int
    name: str
    model: str
    profile: str
    state: str
    mode: str
    metric: str
    outcome_goal: str
    share_b: float
    shares: dict[str, float] = Field(
        default_factory=dict, description="requests mode: arm B's share of each device's requests"
    )
    alpha: float
    arms: list[ExperimentArmPublic]
    results: dict[str, Any]
    winner: str | None
    promotion_rollout_id: int | None
    reason: str | None
    created_by: str | None
    started_at: datetime
    decided_at: datetime | None
    updated_at: datetime


# -- remote configuration -----------------------------------------------------


ConfigScopeKind = Literal["fleet", "group", "device"]


class ConfigScope(SQLModel, table=True):
    """The configuration one scope desires (``edgefleet.device_config``): the fleet (name
    ``""``), a group, or one device. ``version`` is the config version its last change
    made; versions grow across every scope, so each device's desired version does too."""

    __tablename__ = "config_scope"

    scope: str = Field(primary_key=True, max_length=8)
    name: str = Field(primary_key=True, max_length=64)
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    version: int = Field(default=0, index=True)
    updated_at: datetime = _ts_field()
    updated_by: str | None = Field(default=None, max_length=100)


class ConfigScopePublic(SQLModel):
    scope: ConfigScopeKind
    name: str
    settings: dict[str, Any]
    version: int
    updated_at: datetime | None = None
    updated_by: str | None = None


class ConfigChange(SQLModel):
    """Keys to set (checked against the shared schema) and keys to unset, in one version."""

    model_config = {"extra": "forbid"}

    set: dict[str, Any] = Field(default_factory=dict, max_length=256)
    unset: list[str] = Field(default_factory=list, max_length=256)
    reason: str | None = Field(default=None, max_length=500)


class DeviceConfig(SQLModel, table=True):
    """One device's desired configuration as last sent (the effective merge) and what the
    device last reported of it."""

    __tablename__ = "device_config"

    device_id: str = Field(primary_key=True, max_length=64)
    desired_version: int = 0
    desired: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    sources: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    published_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    reported_version: int | None = None
    applied_version: int | None = None
    applied: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    refused: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    pending_restart: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    reported_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class DeviceConfigPublic(SQLModel):
    """A device's configuration: its own scope, the effective merge (and where each key
    comes from), what it reported, and the keys where desired and reported differ."""

    device_id: str
    own: dict[str, Any]
    desired_version: int
    desired: dict[str, Any]
    sources: dict[str, str]
    reported_version: int | None
    applied_version: int | None
    applied: dict[str, Any]
    refused: dict[str, str]
    pending_restart: list[str]
    reported_at: datetime | None
    in_sync: bool = Field(description="the device applied exactly the desired version")
    diff: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="key -> {desired, reported} where they differ"
    )
