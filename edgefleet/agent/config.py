"""The agent's configuration: one TOML file, validated once at start-up.

Unknown keys are refused (``forbid_unknown_fields``) so a typo fails loudly with the
name of the field instead of being silently ignored. Paths are read from TOML strings
and numbers from TOML integers or floats; nothing else is coerced.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, field

from edgefleet import schema, topics
from edgefleet.agent.errors import ConfigError
from edgefleet.errors import FieldError
from edgefleet.mqtt import BrokerAddress, TlsOptions


class _Section(schema.Struct, frozen=True, forbid_unknown_fields=True):
    """A table of ``agent.toml``: read-only, every key declared."""


class InferenceConfig(_Section, frozen=True, kw_only=True):
    """Where the local Open Inference Protocol endpoint listens."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8501
    max_concurrency: Annotated[int, Meta(ge=1, le=1024)] = 4
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024 * 1024
    # NaN/±Inf inputs: "reject" (400) or "allow"; per model name in [inference.nan_policy_by_model]
    nan_policy: Literal["reject", "allow"] = "reject"
    nan_policy_by_model: dict[str, Literal["reject", "allow"]] = field(default_factory=dict)
    # Also serve the same routes on this Unix socket (mode 0660), e.g. "/run/edgefleet/agent.sock"
    unix_socket: str | None = None


class ModelConfig(_Section, frozen=True, kw_only=True):
    """One model this device may host (``[models.<name>]``), and its share of
    ``memory_budget_mb``: a bundle of that model larger than its share is refused.
    Shares are caps, so they may add up to more than 1: all models together are still
    held to the whole budget."""

    memory_share: Annotated[float, Meta(gt=0, le=1)] = 1.0


class FetchConfig(_Section, frozen=True, kw_only=True):
    """How bundles are pulled over MQTT, and how long a broken download keeps trying."""

    chunk_kib: Annotated[int, Meta(ge=1, le=256)] = 128
    window: Annotated[int, Meta(ge=1, le=64)] = 8
    timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    retries: Annotated[int, Meta(ge=0)] = 3
    resume_attempts: Annotated[int, Meta(ge=0)] = 10
    reconnect_wait_s: Annotated[float, Meta(gt=0)] = 120.0
    # Targets from the broker's retained blob chunks (edgefleet.agent.verification.blobs)
    blobs: bool = True
    blob_window: Annotated[int, Meta(ge=1, le=64)] = 4
    blob_grace_s: Annotated[float, Meta(gt=0)] = 5.0  # after a SUBACK, for its retained message
    blob_subscribe_wait_s: Annotated[float, Meta(gt=0)] = 30.0  # for the SUBACK itself
    # HTTP(S) mirrors (edgefleet.agent.verification.mirrors)
    mirror_timeout_s: Annotated[float, Meta(gt=0)] = 30.0
    mirror_attempts: Annotated[int, Meta(ge=1, le=100)] = 3
    # A link budget for metered connections (edgefleet.agent.verification.budget): the
    # pace of downloads and a cap per UTC day; unset means no limit
    link_bytes_per_s: Annotated[int, Meta(ge=1024)] | None = None
    link_bytes_per_day: Annotated[int, Meta(ge=1)] | None = None


class ProbationConfig(_Section, frozen=True, kw_only=True):
    """The health rule a new model must keep before it is committed."""

    seconds: Annotated[float, Meta(ge=0)] = 60.0
    max_requests: Annotated[int, Meta(ge=0)] = 0  # commit early after this many; 0 = off
    min_requests: Annotated[int, Meta(ge=1)] = 20  # judge the rule only past this many
    max_error_rate: Annotated[float, Meta(ge=0, le=1)] = 0.05
    max_p95_ms: Annotated[float, Meta(gt=0)] = 500.0


class TelemetryConfig(_Section, frozen=True, kw_only=True):
    """The store-and-forward spool and what the agent reports through it."""

    window_s: Annotated[float, Meta(gt=0)] = 10.0
    spool_max_mb: Annotated[float, Meta(gt=0)] = 64.0
    replay_per_s: Annotated[float, Meta(gt=0)] = 500.0
    max_inflight: Annotated[int, Meta(ge=1)] = 100  # published, no PUBACK yet
    max_unreceipted: Annotated[int, Meta(ge=1)] = 1000  # published, no receipt yet
    receipt_timeout_s: Annotated[float, Meta(gt=0)] = 30.0  # then sent again


class DriftConfig(_Section, frozen=True, kw_only=True):
    """Drift scoring on the device; the reservoir sample for retraining is off (0) by default."""

    sample_size: Annotated[int, Meta(ge=0, le=500)] = 0  # rows sampled per window; 0 = off
    window: Annotated[int, Meta(ge=50, le=1_000_000)] | None = None  # inputs; None = default
    # Bytes of field samples a device sends per UTC day; rows past it are withheld
    sample_budget_kib_per_day: Annotated[int, Meta(ge=0)] = 1024
    # Answers kept for ground-truth feedback (POST /v2/models/{name}/feedback)
    feedback_answers: Annotated[int, Meta(ge=0, le=1_000_000)] = 4096


class LogsConfig(_Section, frozen=True, kw_only=True):
    """The agent's recent log, kept on disk for ``edgefleet device logs``: at most
    ``max_kib`` in ``<data_dir>/logs/`` (two files that rotate), records at ``level``
    and above."""

    max_kib: Annotated[int, Meta(ge=64, le=1024 * 1024)] = 4096
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DiskShares(_Section, frozen=True, kw_only=True):
    """Each use's cap, as a fraction of ``[disk] budget_mb``. Shares are caps, not a
    partition, so they may add up to more than 1: all uses together are still held to
    the whole budget (``edgefleet.agent.storage.budget``)."""

    slots: Annotated[float, Meta(gt=0, le=1)] = 0.6  # both slots of every hosted model
    staging: Annotated[float, Meta(gt=0, le=1)] = 0.35  # downloads and their .part files
    shadow: Annotated[float, Meta(gt=0, le=1)] = 0.3  # a shadowed candidate, unpacked
    metadata: Annotated[float, Meta(gt=0, le=1)] = 0.02  # TUF metadata and its root history
    spool: Annotated[float, Meta(gt=0, le=1)] = 0.1  # the telemetry spool (SQLite + WAL)
    logs: Annotated[float, Meta(gt=0, le=1)] = 0.02  # the log ring
    agent_versions: Annotated[float, Meta(gt=0, le=1)] = 0.3  # the agent's own releases


class DiskConfig(_Section, frozen=True, kw_only=True):
    """One disk budget for everything the agent writes under its data dir, a share of it
    per use, the free space always left on the filesystem, and how often stale files
    are collected (``edgefleet.agent.storage``)."""

    budget_mb: Annotated[float, Meta(gt=0)] = 2048.0
    reserve_mb: Annotated[float, Meta(ge=0)] = 32.0  # free space never used on the filesystem
    shares: DiskShares = field(default_factory=DiskShares)
    gc_interval_s: Annotated[float, Meta(gt=0)] = 300.0
    watch_interval_s: Annotated[float, Meta(gt=0)] = 5.0  # free space and the spool's cap
    part_grace_s: Annotated[float, Meta(ge=0)] = 3600.0  # a .part no journal holds, kept so long


class LinkConfig(_Section, frozen=True, kw_only=True):
    """Reconnect backoff bounds (exponential with jitter between them), and how soon a
    broker that stopped answering is noticed: a ping after ``keepalive_s`` of silence,
    the link dropped when its answer is ``keepalive_s`` late (so within about twice
    ``keepalive_s``), and unacknowledged bytes on the socket time it out after
    ``2 * keepalive_s`` (TCP_USER_TIMEOUT, for a broker whose host vanished)."""

    reconnect_min_s: Annotated[float, Meta(gt=0)] = 1.0
    reconnect_max_s: Annotated[float, Meta(gt=0)] = 30.0
    keepalive_s: Annotated[int, Meta(ge=1, le=65535)] = 3


class TlsConfig(_Section, frozen=True, kw_only=True):
    """TLS to an ``mqtts://`` broker: the CA that verifies it, and the device's certificate.

    With ``cert_file`` and ``key_file``, ``edgefleet-agent enrol`` makes the private key
    here (P-256, mode 0600), sends a CSR and saves the certificate it is given; the
    daemon then connects with them. Without ``ca_file`` the system's trust store
    verifies the broker (and enrolment writes the CA it receives to ``ca_file`` when
    that file does not exist yet).
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.cert_file is None) != (self.key_file is None):
            missing = "key_file" if self.key_file is None else "cert_file"
            raise FieldError(missing, "cert_file and key_file go together")
        if self.cert_file is not None and self.cert_file == self.key_file:
            raise FieldError("key_file", "cert_file and key_file must be different files")

    @property
    def client_certificate(self) -> bool:
        return self.cert_file is not None

    def options(self) -> TlsOptions:
        return TlsOptions(self.ca_file, self.cert_file, self.key_file)


class AgentConfig(_Section, frozen=True, kw_only=True):
    """Everything the agent needs to run, as read from ``agent.toml``."""

    device_id: str
    profile: Annotated[str, Meta(min_length=1)]
    broker: str = "mqtt://127.0.0.1:1883"
    data_dir: Path
    trust_root: Path
    memory_budget_mb: Annotated[float, Meta(gt=0)] = 1024.0
    # The models this device may host, each with its memory share; none listed = any
    # model, each with the whole memory budget (a one-model agent needs no table).
    models: dict[str, ModelConfig] = field(default_factory=dict)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    mirrors: list[Annotated[str, Meta(pattern=r"^https?://[^\s]+$")]] = field(default_factory=list)
    """Base URLs of static copies of the signed repository (web server, CDN, object
    store), tried in order before MQTT; TUF verifies what they serve."""
    probation: ProbationConfig = field(default_factory=ProbationConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    link: LinkConfig = field(default_factory=LinkConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    disk: DiskConfig = field(default_factory=DiskConfig)
    disk_budget_mb: Annotated[float, Meta(gt=0)] | None = None
    """The key ``[disk] budget_mb`` replaced, still read so that an agent updated in the
    field starts with its old ``agent.toml``; it sets ``[disk] budget_mb``."""
    tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not topics.is_device_id(self.device_id):
            raise FieldError("device_id", f"must match {topics.DEVICE_ID_RE.pattern}")
        try:
            address = BrokerAddress.parse(self.broker)
        except ValueError as e:  # its message is readable as it is
            raise FieldError("broker", str(e)) from e
        for name in self.models:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z", name):
                raise FieldError(f"models.{name[:80]}", "not a usable model name")
        if self.tls is not None and not address.tls:
            raise FieldError("tls", "a [tls] section needs an mqtts:// broker")
        if self.disk_budget_mb is not None:
            if self.disk.budget_mb not in (DiskConfig().budget_mb, self.disk_budget_mb):
                raise FieldError("disk_budget_mb", "set [disk] budget_mb only")
            disk = schema.replace(self.disk, budget_mb=self.disk_budget_mb)
            msgspec.structs.force_setattr(self, "disk", disk)

    @property
    def broker_address(self) -> BrokerAddress:
        return BrokerAddress.parse(self.broker)

    @property
    def tls_options(self) -> TlsOptions | None:
        """What the link needs for an ``mqtts://`` broker (None for ``mqtt://``)."""
        if not self.broker_address.tls:
            return None
        return self.tls.options() if self.tls is not None else TlsOptions()


def parse_config(text: str, *, source: str = "<config>") -> AgentConfig:
    """Validate TOML ``text``; ``ConfigError`` names the first offending field."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from e
    try:
        return schema.convert(raw, AgentConfig)
    except msgspec.ValidationError as e:
        # A misspelt key also makes the intended one "missing": msgspec reports the
        # unknown key first, as it checks for missing ones only once every key is read.
        field, reason = schema.locate(e)
        raise ConfigError(f"{reason} (in {source})", field=field) from e


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    return parse_config(text, source=str(path))
