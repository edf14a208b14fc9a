"""The device's remote configuration: check, keep, apply and report what the control
plane desires, and serve its flags to the application on ``GET /v2/flags``.

The control plane sends the whole effective desired configuration (``DesiredConfig``,
retained on ``down/config``, so a device that was away gets the latest when it
reconnects). Each key is checked on its own, against the shared schema
(``edgefleet.device_config``) and against what only the device knows (its
``agent.toml`` schema, its disk budget); a refused key keeps its last good value. The
values held are written atomically to ``<data_dir>/remote-config.json`` before they are
applied, so a restart starts from the last good configuration; they lie over
``agent.toml``, and a key the control plane unsets goes back to the file's value.

"live" keys are applied at once through the daemon's callback; "restart" keys are kept
and reported as ``pending_restart`` until the agent next starts with them. Every desired
message is answered with a ``ConfigReport`` on ``up/config``.

Why not a signature: the agent's long-lived process never loads ``cryptography``
(``docs/architecture.md``), and the broker's ACL already lets only control-plane
clients publish on a device's ``down/`` subtree (the same trust offers and commands
have). The values are bounded by the schema: a forged configuration can change how
often the device reports or what its flags say, never what model it runs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

from edgefleet import schema
from edgefleet.agent.config import AgentConfig
from edgefleet.device_config import (
    KEYS,
    ConfigValue,
    applies,
    check_value,
    flags_of,
    is_flag,
    validate,
)
from edgefleet.drift import DriftThresholds
from edgefleet.errors import FieldError
from edgefleet.fileio import atomic_write
from edgefleet.messages import ConfigReport, DesiredConfig

logger = logging.getLogger(__name__)

HELD_FILE = "remote-config.json"

OnApply = Callable[[AgentConfig, frozenset[str]], None]
"""``(the agent's configuration with the held values over it, the live keys whose value
changed)``: the daemon applies those keys to what runs."""
Report = Callable[[ConfigReport], None]


def overlay(base: AgentConfig, values: Mapping[str, ConfigValue]) -> AgentConfig:
    """``base`` with the non-flag ``values`` put over it (``telemetry.window_s`` sets
    ``[telemetry] window_s``), checked by the agent's own schema.

    Raises:
        FieldError: a value the agent's configuration does not allow, or a spool bound
            over the device's disk budget.
    """
    sections: dict[str, dict[str, ConfigValue]] = {}
    for key, value in values.items():
        if not is_flag(key):
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
    changes = {}
    for section, fields in sections.items():
        try:
            changes[section] = schema.replace(getattr(base, section), **fields)
        except FieldError as e:
            raise FieldError(f"{section}.{e.field}", e.reason) from None
    config = schema.replace(base, **changes)
    if config.telemetry.spool_max_mb > config.disk.budget_mb:
        raise FieldError(
            "telemetry.spool_max_mb",
            f"over this device's disk budget ({config.disk.budget_mb:g} MB)",
        )
    return config


def drift_thresholds(config: AgentConfig) -> DriftThresholds | None:
    """The drift window rule ``[drift] window`` asks for; None keeps the default."""
    return DriftThresholds(window=config.drift.window) if config.drift.window else None


def setting(config: AgentConfig, key: str) -> Any:
    """The value ``config`` has for a non-flag ``key``."""
    section, name = key.split(".", 1)
    return getattr(getattr(config, section), name)


class RemoteConfig:
    """The remote values an agent holds; built before the agent's parts, which it configures.

    ``config`` is what the agent starts with: ``agent.toml`` with the held values over
    it. ``receive`` runs on the MQTT network thread and does no blocking work beyond
    one small atomic file write.
    """

    def __init__(self, base: AgentConfig) -> None:
        self.base = base
        self.path = Path(base.data_dir) / HELD_FILE
        self._lock = threading.Lock()
        self.version, self.values = self._load()
        self.config = self._startup_config()
        self.started = self.config
        self._report: Report | None = None
        self._on_apply: OnApply | None = None

    def attach(self, *, report: Report, on_apply: OnApply) -> None:
        """Where reports go and who applies live keys (the daemon, once its parts exist)."""
        self._report, self._on_apply = report, on_apply

    # -- start-up ----------------------------------------------------------------------

    def _load(self) -> tuple[int, dict[str, ConfigValue]]:
        try:
            raw = json.loads(self.path.read_bytes())
            version = raw["version"]
            values, refused = validate(raw["values"])
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise ValueError(f"bad version {version!r}")
        except FileNotFoundError:
            return 0, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            logger.error("remote config unreadable, starting without it reason=%s", e)
            return 0, {}
        for key, reason in refused.items():
            logger.warning("held remote config key dropped key=%s reason=%s", key, reason)
        return version, values

    def _startup_config(self) -> AgentConfig:
        """The base with every held value that still fits it (agent.toml may have changed)."""
        config = self.base
        for key in sorted(self.values):
            try:
                config = overlay(config, {key: self.values[key]})
            except FieldError as e:
                logger.warning("held remote config key not applied key=%s reason=%s", key, e)
        return config

    # -- desired configuration ------------------------------------------------------------

    def receive(self, desired: DesiredConfig) -> ConfigReport:
        """Check, keep and apply ``desired``; report (and return) what came of it."""
        with self._lock:
            report = self._receive(desired)
        logger.info(
            "remote config version=%d applied_version=%d refused=%s pending_restart=%s",
            desired.version,
            report.applied_version,
            sorted(report.refused),
            report.pending_restart,
        )
        if self._report is not None:
            self._report(report)
        return report

    def _receive(self, desired: DesiredConfig) -> ConfigReport:
        if desired.version < self.version:
            return self._reported(
                desired.version,
                {"version": f"older than the version held ({self.version})"},
            )
        accepted, refused = validate(desired.values)
        held: dict[str, ConfigValue] = {}
        config = self.base
        for key in sorted(accepted):
            try:
                config = overlay(config, {key: accepted[key]})
                held[key] = accepted[key]
            except FieldError as e:
                refused[key] = e.reason
        for key in refused:  # the last good value stays
            if key in self.values:
                held[key] = self.values[key]
                config = overlay(config, {key: self.values[key]})
        try:
            self._persist(desired.version, held)
        except OSError as e:
            logger.error("remote config not kept reason=%s", e)
            return self._reported(desired.version, {"*": f"not kept on the device's disk: {e}"})
        changed = frozenset(
            key
            for key in KEYS
            if applies(key) == "live" and setting(config, key) != setting(self.config, key)
        )
        self.version, self.values, self.config = desired.version, held, config
        if changed and self._on_apply is not None:
            self._on_apply(config, changed)
        return self._reported(desired.version, refused)

    def _persist(self, version: int, values: dict[str, ConfigValue]) -> None:
        data = json.dumps({"version": version, "values": values}, sort_keys=True)
        atomic_write(self.path, data.encode() + b"\n")

    def _reported(self, version: int, refused: dict[str, str]) -> ConfigReport:
        return ConfigReport(
            version=version,
            applied_version=self.version,
            applied=dict(self.values),
            refused=refused,
            pending_restart=self.pending_restart(),
        )

    def pending_restart(self) -> list[str]:
        """Keys held whose value the running agent does not use yet (until it restarts)."""
        return sorted(
            key
            for key, spec in KEYS.items()
            if spec.applies == "restart" and setting(self.config, key) != setting(self.started, key)
        )

    # -- flags on the local endpoint --------------------------------------------------------

    def flags(self) -> dict[str, ConfigValue]:
        """The flags held now, by name."""
        with self._lock:
            return flags_of(self.values)

    def handle_flags(self, method: str, parts: list[str]) -> tuple[HTTPStatus, dict[str, Any]]:
        """``GET /v2/flags`` (every flag) and ``GET /v2/flags/<name>`` (one flag); a refusal
        is an answer (``{"error": reason}``), never an exception."""
        if method != "GET":
            return HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"flags do not take {method}"}
        with self._lock:
            flags, version = flags_of(self.values), self.version
        if not parts:
            return HTTPStatus.OK, {"version": version, "flags": flags}
        name = parts[0]
        if len(parts) > 1 or name not in flags:
            try:
                check_value(f"flags.{name}", True)
                reason = f"no flag named {name} is set"
            except FieldError as e:
                reason = e.reason
            return HTTPStatus.NOT_FOUND, {"error": reason}
        return HTTPStatus.OK, {"name": name, "value": flags[name], "version": version}
