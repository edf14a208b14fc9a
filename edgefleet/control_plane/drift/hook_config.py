"""Retraining hooks an admin defines in the control plane's configuration.

What runs on the control-plane host, or which URL it calls, is part of the host's
configuration, never of the API: an operator's policy names one of these hooks and
nothing else. They come from ``EDGEFLEET_RETRAINING_HOOKS`` (JSON) and/or the TOML
file named by ``EDGEFLEET_RETRAINING_HOOKS_FILE``::

    [hooks.digits-shift]
    command = ["/opt/venv/bin/python", "-m", "edgefleet_demo.retrain_digits", "--shift", "6"]
    env = { PYTHONPATH = "/opt/edgefleet" }   # the only variables beyond the documented ones
    timeout_s = 1800
    description = "retrain digits on brighter sensors"

    [hooks.trainer]
    webhook = "https://trainer.internal/retrain"

A command is an argv list whose first item is an absolute path (no shell, no PATH
lookup); a webhook is an http(s) URL. ``edgefleet.control_plane.drift.hook_runner.run_hook`` runs
them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, model_validator

HOOK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
DEFAULT_TIMEOUT_S = 1800.0
CONTEXT_VARIABLES = frozenset(
    {
        "EDGEFLEET_MODEL",
        "EDGEFLEET_VERSION",
        "EDGEFLEET_NEW_VERSION",
        "EDGEFLEET_OUTPUT_DIR",
        "EDGEFLEET_REQUEST_ID",
    }
)
"""What the control plane itself hands a command hook; ``env`` may not override them."""


class RetrainHookSpec(BaseModel):
    """One named hook: a command (argv) or a webhook URL, exactly one of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] | None = Field(default=None, min_length=1)
    webhook: HttpUrl | None = None
    env: dict[str, str] = Field(
        default_factory=dict, description="extra environment for a command (nothing is inherited)"
    )
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=7 * 86_400)
    description: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_target(self) -> RetrainHookSpec:
        if (self.command is None) == (self.webhook is None):
            raise ValueError("a hook has exactly one of command or webhook")
        if self.command is not None:
            if not Path(self.command[0]).is_absolute():
                raise ValueError(f"command[0] must be an absolute path, not {self.command[0]!r}")
            if any("\0" in arg for arg in self.command):
                raise ValueError("command arguments cannot contain NUL")
        if self.webhook is not None and self.webhook.scheme not in ("http", "https"):
            raise ValueError("webhook must be an http(s) URL")
        if self.env and self.webhook is not None:
            raise ValueError("env applies to command hooks only")
        overridden = CONTEXT_VARIABLES & set(self.env)
        if overridden:
            raise ValueError(f"env cannot set {', '.join(sorted(overridden))}")
        return self

    @property
    def kind(self) -> Literal["command", "webhook"]:
        return "command" if self.command is not None else "webhook"


class RetrainHookPublic(BaseModel):
    """What the API shows of a hook: its name and kind, never the argv, env or URL."""

    name: str
    kind: Literal["command", "webhook"]
    description: str | None
    timeout_s: float


def load_hooks_file(path: Path) -> dict[str, RetrainHookSpec]:
    """The ``[hooks.<name>]`` tables of a TOML file; ``ValueError`` naming what is wrong."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read retraining hooks from {path}: {e}") from e
    unknown = set(data) - {"hooks"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}")
    tables = data.get("hooks", {})
    if not isinstance(tables, dict):
        raise ValueError(f"{path}: hooks must be a table of [hooks.<name>] tables")
    hooks = {}
    for name, table in tables.items():
        try:
            hooks[name] = RetrainHookSpec.model_validate(table)
        except ValidationError as e:
            raise ValueError(f"{path}: hook {name!r}: {e}") from e
    return hooks
