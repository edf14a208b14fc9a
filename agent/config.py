"""The agent's configuration: one TOML file, validated once at start-up.

Unknown keys are refused (``extra="forbid"``) so a typo fails loudly with the name
of the field instead of being silently ignored.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.errors import ConfigError
from edgefleet import topics
from edgefleet.mqtt import BrokerAddress, TlsOptions


class InferenceConfig(BaseModel):
    """Where the local Open Inference Protocol endpoint listens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8501, ge=0, le=65535)
    max_concurrency: int = Field(default=4, ge=1, le=1024)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)


class FetchConfig(BaseModel):
    """How bundles are pulled over MQTT, and how long a broken download keeps trying."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_kib: int = Field(default=128, ge=1, le=256)
    window: int = Field(default=8, ge=1, le=64)
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=3, ge=0)
    resume_attempts: int = Field(default=10, ge=0)
    reconnect_wait_s: float = Field(default=120.0, gt=0)


class ProbationConfig(BaseModel):
    """The health rule a new model must keep before it is committed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(default=60.0, ge=0)
    max_requests: int = Field(default=0, ge=0, description="commit early after this many; 0 = off")
    min_requests: int = Field(default=20, ge=1, description="judge the rule only past this many")
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    max_p95_ms: float = Field(default=500.0, gt=0)


class TelemetryConfig(BaseModel):
    """The store-and-forward spool and what the agent reports through it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: float = Field(default=10.0, gt=0)
    spool_max_mb: float = Field(default=64.0, gt=0)
    replay_per_s: float = Field(default=500.0, gt=0)
    max_inflight: int = Field(default=100, ge=1)


class DriftConfig(BaseModel):
    """Drift scoring on the device; the reservoir sample for retraining is off (0) by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_size: int = Field(
        default=0, ge=0, le=500, description="rows sampled per window and sent back; 0 = off"
    )


class LinkConfig(BaseModel):
    """Reconnect backoff bounds (exponential with jitter between them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)


class TlsConfig(BaseModel):
    """TLS to an ``mqtts://`` broker: the CA that verifies it, and the device's certificate.

    With ``cert_file`` and ``key_file``, ``edgefleet-agent enrol`` makes the private key
    here (P-256, mode 0600), sends a CSR and saves the certificate it is given; the
    daemon then connects with them. Without ``ca_file`` the system's trust store
    verifies the broker (and enrolment writes the CA it receives to ``ca_file`` when
    that file does not exist yet).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if self.cert_file is not None and self.cert_file == self.key_file:
            raise ValueError("cert_file and key_file must be different files")
        return self

    @property
    def client_certificate(self) -> bool:
        return self.cert_file is not None

    def options(self) -> TlsOptions:
        return TlsOptions(self.ca_file, self.cert_file, self.key_file)


class AgentConfig(BaseModel):
    """Everything the agent needs to run, as read from ``agent.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str
    profile: str = Field(min_length=1)
    broker: str = "mqtt://127.0.0.1:1883"
    data_dir: Path
    trust_root: Path
    disk_budget_mb: float = Field(default=2048.0, gt=0)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    fetch: FetchConfig = Field(default_factory=FetchConfig)
    probation: ProbationConfig = Field(default_factory=ProbationConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    link: LinkConfig = Field(default_factory=LinkConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    tls: TlsConfig | None = None

    @field_validator("device_id")
    @classmethod
    def _check_device_id(cls, value: str) -> str:
        if not topics.is_device_id(value):
            raise ValueError(f"must match {topics.DEVICE_ID_RE.pattern}")
        return value

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        BrokerAddress.parse(value)  # raises ValueError with a readable message
        return value

    @model_validator(mode="after")
    def _tls_needs_mqtts(self) -> AgentConfig:
        if self.tls is not None and not self.broker_address.tls:
            raise ValueError("a [tls] section needs an mqtts:// broker")
        return self

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
        return AgentConfig.model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        # A misspelt key also makes the intended one "missing": name the typo first.
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        raise ConfigError(f"{first.get('msg')} (in {source})", field=field) from e


def load_config(path: Path) -> AgentConfig:
    """Read and validate the config file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from e
    return parse_config(text, source=str(path))
