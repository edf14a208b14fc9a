"""Remote device configuration: the keys both sides agree on, their checks, and the merge.

The control plane keeps desired values per scope (the fleet, a group, a device) and
sends each device the effective merge on ``down/config``; the agent checks every key
again against this same schema (a newer control plane may know keys an older agent
does not) and reports per key what it applied and what it refused, and why.

Keys are flat and dotted, so one key is one unit of merge and of refusal:

==========================  =======  =======  =========================================
key                         type     applies  what it sets on the device
==========================  =======  =======  =========================================
``telemetry.window_s``      float    live     seconds per inference-telemetry window
``telemetry.spool_max_mb``  float    restart  the telemetry spool's disk bound
``drift.window``            int      live     inputs per drift window
``drift.sample_size``       int      live     rows sampled per drift window (0 = off)
``logs.level``              str      live     the agent's log level
``flags.<name>``            any      live     a named flag the device's application
                                              reads at ``GET /v2/flags[/<name>]``
==========================  =======  =======  =========================================

A flag's value is a boolean, a number or a string (at most ``FLAG_MAX_CHARS``).
"restart" keys are accepted and kept, and take effect when the agent next starts; the
agent reports them as pending until then.

Precedence: the fleet's values, then each group the device is in (by group name,
later names winning), then the device's own. ``merge`` returns the effective values
and, per key, the scope it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.errors import FieldError

ConfigValue = bool | int | float | str
Applies = Literal["live", "restart"]

FLAG_PREFIX = "flags."
FLAG_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
FLAG_MAX_CHARS = 1024
MAX_KEYS = 256
"""Most keys one scope (and one effective merge) may hold; flags count."""
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class KeySpec:
    """One configurable key: its type, its bounds and whether it applies live."""

    key: str
    kind: type[int] | type[float] | type[str]
    applies: Applies
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def check(self, value: Any) -> ConfigValue:
        """``value`` as this key holds it (an int given for a float becomes a float).

        Raises:
            FieldError: naming the key, with the reason.
        """
        if self.kind is str:
            if not isinstance(value, str):
                raise FieldError(self.key, f"expected a string, got {_type_name(value)}")
            if self.choices is not None and value not in self.choices:
                raise FieldError(self.key, f"must be one of {', '.join(self.choices)}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FieldError(self.key, f"expected a number, got {_type_name(value)}")
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise FieldError(self.key, f"expected an integer, got {value!r}")
            number: int | float = int(value)
        else:
            if not math.isfinite(value):
                raise FieldError(self.key, "must be a finite number")
            number = float(value)
        if self.minimum is not None and number < self.minimum:
            raise FieldError(self.key, f"must be at least {self.minimum:g}")
        if self.maximum is not None and number > self.maximum:
            raise FieldError(self.key, f"must be at most {self.maximum:g}")
        return number


KEYS: dict[str, KeySpec] = {
    spec.key: spec
    for spec in (
        KeySpec("telemetry.window_s", float, "live", "seconds per telemetry window", 1.0, 86_400.0),
        KeySpec(
            "telemetry.spool_max_mb",
            float,
            "restart",
            "disk bound of the telemetry spool (MB); at most the device's disk budget",
            1.0,
            1_048_576.0,
        ),
        KeySpec("drift.window", int, "live", "inputs per drift window", 50, 1_000_000),
        KeySpec("drift.sample_size", int, "live", "rows sampled per drift window", 0, 500),
        KeySpec("logs.level", str, "live", "the agent's log level", choices=LOG_LEVELS),
    )
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )


def is_flag(key: str) -> bool:
    return key.startswith(FLAG_PREFIX)


def applies(key: str) -> Applies:
    """Whether ``key`` takes effect at once or at the agent's next start (flags: live)."""
    spec = KEYS.get(key)
    return spec.applies if spec is not None else "live"


def check_value(key: str, value: Any) -> ConfigValue:
    """``value`` checked for ``key``, as the key holds it.

    Raises:
        FieldError: the key is unknown or malformed, or the value does not fit it.
    """
    if not isinstance(key, str):
        raise FieldError(str(key), "a key is a string")
    if is_flag(key):
        name = key[len(FLAG_PREFIX) :]
        if not FLAG_NAME_RE.fullmatch(name):
            raise FieldError(key[:80], f"a flag name must match {FLAG_NAME_RE.pattern}")
        if isinstance(value, str):
            if len(value) > FLAG_MAX_CHARS:
                raise FieldError(key, f"a flag string is at most {FLAG_MAX_CHARS} characters")
            return value
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            if isinstance(value, float) and not math.isfinite(value):
                raise FieldError(key, "must be a finite number")
            return value
        raise FieldError(key, f"a flag is a boolean, a number or a string, got {_type_name(value)}")
    spec = KEYS.get(key)
    if spec is None:
        raise FieldError(key[:80], f"unknown key (known: {', '.join(KEYS)}, flags.<name>)")
    return spec.check(value)


def validate(values: Mapping[str, Any]) -> tuple[dict[str, ConfigValue], dict[str, str]]:
    """Check every key of ``values`` on its own.

    Returns:
        (the accepted keys with their checked values, the refused keys with the reason).
        Past ``MAX_KEYS`` keys, the rest are refused as too many.
    """
    accepted: dict[str, ConfigValue] = {}
    refused: dict[str, str] = {}
    for index, (key, value) in enumerate(values.items()):
        shown = str(key)[:80]
        if index >= MAX_KEYS:
            refused[shown] = f"more than {MAX_KEYS} keys"
            continue
        try:
            accepted[key] = check_value(key, value)
        except FieldError as e:
            refused[shown] = e.reason
    return accepted, refused


@dataclass(frozen=True)
class Layer:
    """The values one scope sets: ``source`` is ``fleet``, ``group:<name>`` or ``device``."""

    source: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Effective:
    """A device's effective configuration and, per key, the scope that set it."""

    values: dict[str, ConfigValue]
    sources: dict[str, str]


def merge(layers: Iterable[Layer]) -> Effective:
    """Merge ``layers`` in order, later ones winning key by key.

    Keys a layer holds that no longer check (written by an older schema) are left out:
    what is sent to a device always checks.
    """
    values: dict[str, ConfigValue] = {}
    sources: dict[str, str] = {}
    for layer in layers:
        accepted, _refused = validate(layer.values)
        for key, value in accepted.items():
            values[key] = value
            sources[key] = layer.source
    return Effective(dict(sorted(values.items())), {k: sources[k] for k in sorted(sources)})


def device_layers(
    fleet: Mapping[str, Any],
    groups: Mapping[str, Mapping[str, Any]],
    device: Mapping[str, Any],
) -> list[Layer]:
    """The layers of one device, in precedence order: fleet, its groups by name, itself."""
    return [
        Layer("fleet", fleet),
        *(Layer(f"group:{name}", groups[name]) for name in sorted(groups)),
        Layer("device", device),
    ]


def flags_of(values: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
    """The flags among ``values``, by flag name (``flags.dark-mode`` -> ``dark-mode``)."""
    return {k[len(FLAG_PREFIX) :]: v for k, v in values.items() if is_flag(k)}


def diff(
    desired: Mapping[str, Any], reported: Mapping[str, Any]
) -> dict[str, tuple[Any | None, Any | None]]:
    """Keys whose desired and reported values differ: ``key -> (desired, reported)``."""
    keys = sorted(set(desired) | set(reported))
    return {
        k: (desired.get(k), reported.get(k))
        for k in keys
        if k not in desired or k not in reported or not _same(desired[k], reported[k])
    }


def _same(a: Any, b: Any) -> bool:
    """Equal and of one kind: ``True`` is not ``1``, though ``1`` is ``1.0``."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b
