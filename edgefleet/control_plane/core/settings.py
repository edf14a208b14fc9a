"""Control-plane configuration, read from ``EDGEFLEET_*`` environment variables.

Built once at the entry point (``get_settings()``) and passed down; tests build their
own ``Settings`` and hand it to ``create_app``.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.control_plane.drift.hook_config import (
    HOOK_NAME_PATTERN,
    RetrainHookSpec,
    load_hooks_file,
)
from edgefleet.mqtt import BrokerAddress, TlsOptions
from edgefleet.profile import default_profiles_dir


class Settings(BaseSettings):
    """Where the control plane keeps its state and which broker it talks to."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="ignore")

    data_dir: Path = Path("./.edgefleet")
    broker_url: str = "mqtt://127.0.0.1:1883"
    database_url: str | None = None
    db_auto_upgrade: bool = Field(
        default=True,
        description="on start-up, upgrade a database at an older schema revision "
        "(PostgreSQL: under an advisory lock, once for all replicas); false: refuse to "
        "start until `edgefleet db upgrade` has run",
    )
    profiles_dir: Path | None = Field(
        default=None,
        description="a directory of the operator's own profiles; by default the shipped ones",
    )
    environment: Literal["development", "production"] = "development"
    client_id: str | None = Field(
        default=None,
        pattern=r"^cp-[A-Za-z0-9_-]{1,60}$",
        description="MQTT client id; by default one kept in the data dir, stable across restarts",
    )
    mqtt_session_expiry_s: int = Field(
        default=0,
        ge=0,
        description="how long the broker keeps this control plane's MQTT session (and queues "
        "its share of device traffic) after it disconnects",
    )
    """Zero on purpose: the session ends with the connection. Mosquitto keeps handing a
    disconnected member of a shared subscription its turn until the member's session
    expires, so any expiry is a time during which a dead replica's share of fetch
    requests, install reports and telemetry goes nowhere (measured with
    ``bench/chaos.py --scenarios replica-kill``: 30 s stalled installs by 10.5 s p50,
    17.1 s max; 0 by 1.4 s p50, 1.6 s max; 24 h stalled them for minutes). Nothing relies
    on the broker holding device traffic for the control plane: devices resend telemetry
    and install reports until a receipt names them, and re-ask fetch chunks that go
    unanswered; what a restarting control plane misses arrives with those resends."""
    blob_delivery: bool = Field(
        default=True,
        description="publish each live rollout's target once as retained MQTT chunks "
        "(fleet/all/down/blobs/<sha256>/...) that the broker serves to every device",
    )
    blob_chunk_kib: int = Field(default=128, ge=1, le=256, description="bytes per blob chunk")
    blob_retention_s: float = Field(
        default=30.0,
        gt=0,
        description="how often retained blobs that no running rollout needs are cleared",
    )
    static_tree_dir: Path | None = Field(
        default=None,
        description="also export the signed repository (metadata and targets, no keys) "
        "here after every signing step, for a web server, CDN or object store to serve",
    )
    mqtt_shared_group: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{8,64}$",
        description="MQTT shared-subscription group for device traffic; every replica sets "
        "the same value (default: a random name kept in the data dir)",
    )
    """Replicas split reports, fetch requests and telemetry only when they subscribe in one
    group, so replicas with data directories of their own must all set
    ``EDGEFLEET_MQTT_SHARED_GROUP`` to one value (replicas sharing a data directory share
    the kept default). The name is random rather than fixed so that a client able to
    subscribe to ``fleet/+/up/#`` cannot join the group by guessing it and take a share of
    device traffic away from the control plane."""
    stale_after_s: int = Field(
        default=900, ge=30, description="an online device silent this long is flagged stale"
    )
    api_auth: bool = Field(default=True, description="require API tokens (never off in production)")
    key_passphrase: SecretStr | None = Field(
        default=None, description="encrypts the repository's private keys at rest"
    )
    broker_auth_dir: Path | None = Field(
        default=None,
        description="the secured broker's password/ACL directory; enables device enrolment",
    )
    pki_dir: Path | None = Field(
        default=None,
        description="the control plane's CA (edgefleet.control_plane.trust.pki); with "
        "broker_auth_dir, devices enrol with a CSR and get a client certificate for the TLS broker",
    )
    broker_ca_file: Path | None = Field(
        default=None, description="CA that verifies an mqtts:// broker (default: system store)"
    )
    broker_cert_file: Path | None = Field(
        default=None, description="the control plane's MQTT client certificate (CN=cp-...)"
    )
    broker_key_file: Path | None = None
    enrol_rate_per_minute: float = Field(default=6.0, gt=0, description="per client address")
    enrol_burst: int = Field(default=5, ge=1)
    event_retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="telemetry events older than this are dropped (whole day partitions on "
        "PostgreSQL, deleted rows on SQLite)",
    )
    ingest_method: Literal["values", "copy"] = Field(
        default="copy",
        description="how telemetry bursts are written on PostgreSQL: COPY through a staging "
        "table (copy, measured faster by bench/ingest.py) or multi-row INSERT (values); "
        "SQLite always uses multi-row INSERT",
    )
    ingest_processes: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="telemetry ingest worker processes per control plane, each a member of "
        "the shared subscription with its own MQTT session (0: ingest in the API's process; "
        "unset: 2 on PostgreSQL, 0 on SQLite)",
    )
    rollout_tick_s: float = Field(
        default=1.0, gt=0, le=60, description="how often the orchestrator advances rollouts"
    )
    shared_dir: Path | None = Field(
        default=None,
        description="storage every replica shares (repository keys, metadata and bundle "
        "files, registered models); default: the data dir, for a single control plane",
    )

    @model_validator(mode="after")
    def _refuse_unprotected_keys_in_production(self) -> Settings:
        if self.environment == "production" and not self.key_passphrase:
            raise ValueError("EDGEFLEET_KEY_PASSPHRASE is required in production")
        if self.environment == "production" and not self.api_auth:
            raise ValueError("EDGEFLEET_API_AUTH cannot be off in production")
        return self

    @model_validator(mode="after")
    def _check_mqtt_tls(self) -> Settings:
        address = BrokerAddress.parse(self.broker_url)
        if (self.broker_cert_file is None) != (self.broker_key_file is None):
            raise ValueError("EDGEFLEET_BROKER_CERT_FILE and _KEY_FILE go together")
        tls_files = (self.broker_ca_file, self.broker_cert_file)
        if not address.tls and any(f is not None for f in tls_files):
            raise ValueError("broker TLS files need an mqtts:// EDGEFLEET_BROKER_URL")
        return self

    @property
    def mqtt_tls(self) -> TlsOptions | None:
        """TLS options for the control plane's own MQTT link (None for ``mqtt://``)."""
        if not BrokerAddress.parse(self.broker_url).tls:
            return None
        return TlsOptions(self.broker_ca_file, self.broker_cert_file, self.broker_key_file)

    @property
    def key_passphrase_bytes(self) -> bytes | None:
        return self.key_passphrase.get_secret_value().encode() if self.key_passphrase else None

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if self.database_url is None:
            self.database_url = f"sqlite:///{self.data_dir / 'control-plane.db'}"
        return self

    @property
    def sqlalchemy_url(self) -> str:
        assert self.database_url is not None  # filled by the validator
        return self.database_url

    @property
    def repository_dir(self) -> Path:
        return (self.shared_dir or self.data_dir) / "repository"

    @property
    def models_dir(self) -> Path:
        return (self.shared_dir or self.data_dir) / "models"

    @property
    def bundles_dir(self) -> Path:
        return (self.shared_dir or self.data_dir) / "bundles"

    retraining_hooks: dict[str, RetrainHookSpec] = Field(
        default_factory=dict,
        description="admin-defined retraining hooks by name (JSON); policies select one by name",
    )
    retraining_hooks_file: Path | None = Field(
        default=None, description="a TOML file of [hooks.<name>] tables, merged into the above"
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="comma-separated addresses of reverse proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are trusted; empty: the headers are ignored",
    )

    @model_validator(mode="after")
    def _load_retraining_hooks(self) -> Settings:
        hooks = dict(self.retraining_hooks)
        if self.retraining_hooks_file is not None:
            for name, spec in load_hooks_file(self.retraining_hooks_file).items():
                if name in hooks:
                    raise ValueError(f"retraining hook {name!r} is defined twice")
                hooks[name] = spec
        bad = [name for name in hooks if not re.fullmatch(HOOK_NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"retraining hook names must match {HOOK_NAME_PATTERN}: {bad}")
        self.retraining_hooks = hooks
        return self

    @property
    def trusted_proxies(self) -> list[str]:
        return [a.strip() for a in self.forwarded_allow_ips.split(",") if a.strip()]


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()


def profile_source(settings: Settings) -> Path | Traversable:
    """Where the firmware profiles come from: the operator's directory or the shipped ones."""
    return settings.profiles_dir or default_profiles_dir()
