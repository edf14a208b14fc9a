"""SQLModel tables and the public (API) models, one family per entity."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import JSON, Column, DateTime, UniqueConstraint
from sqlmodel import Field, SQLModel

RolloutState = Literal["in_progress", "complete", "failed"]
DeviceInstallState = Literal["offered", "downloading", "verified", "staged", "active", "failed"]
TERMINAL_DEVICE_STATES = frozenset({"active", "failed"})
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
    created_at: datetime = _ts_field()


class ModelPublic(ModelVersionBase):
    id: int
    sha256: str
    size_bytes: int
    created_at: datetime
    signature: dict[str, Any]


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


class Device(DeviceBase, table=True):
    """A device as last seen on its status topic."""

    id: str = Field(primary_key=True, max_length=64)


class DevicePublic(DeviceBase):
    id: str


# -- rollouts -----------------------------------------------------------------


class RolloutCreate(SQLModel):
    bundle_id: str
    device_ids: list[str] | None = None


class Rollout(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    bundle_id: str = Field(foreign_key="bundle.id", index=True)
    state: str = "in_progress"
    created_at: datetime = _ts_field()
    updated_at: datetime = _ts_field()


class RolloutDevice(SQLModel, table=True):
    """One device's progress in one rollout."""

    rollout_id: int = Field(foreign_key="rollout.id", primary_key=True)
    device_id: str = Field(foreign_key="device.id", primary_key=True)
    state: str = "offered"
    reason: str | None = None
    install_seconds: float | None = None
    updated_at: datetime = _ts_field()


class RolloutDevicePublic(SQLModel):
    device_id: str
    state: str
    reason: str | None
    install_seconds: float | None
    updated_at: datetime


class RolloutPublic(SQLModel):
    id: int
    bundle_id: str
    state: str
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int]
    devices: list[RolloutDevicePublic]


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


class ModelPolicyUpdate(SQLModel):
    """What an operator sets for a model's drift loop (validated; unknown keys refused)."""

    model_config = {"extra": "forbid"}

    retrain: RetrainMode = "approval"
    hook_kind: Literal["command", "webhook"] | None = None
    hook_target: list[str] | str | None = None
    retrain_cron: str | None = Field(default=None, description="crontab for scheduled retraining")
    canary_device_count: int = Field(default=1, ge=1)
    comparison_margin: float = Field(default=0.0, ge=0.0, le=1.0)
    drift_enter: int = Field(default=3, ge=1)
    drift_leave: int = Field(default=3, ge=1)
    drift_min_devices: int = Field(default=2, ge=1)
    drift_device_share: float = Field(default=0.3, gt=0.0, le=1.0)


class ModelPolicy(SQLModel, table=True):
    """How the drift loop treats one model: retrain automatically, after approval, or never."""

    model: str = Field(primary_key=True, max_length=64)
    retrain: str = "approval"
    hook_kind: str | None = None
    hook_target: list[str] | str | None = Field(default=None, sa_column=Column(JSON))
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
    created_at: datetime
    updated_at: datetime
