"""Firmware profiles: what one device class can run, one TOML file per class.

Both sides read profiles: the control plane builds a bundle per profile, and the
agent refuses a bundle that is not built for its own. Unknown keys are refused so a
typo fails loudly; errors name the field and the reason.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.errors import ProfileError

PROFILE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,63}$"

Format = Literal["onnx", "ort", "tflite"]
Precision = Literal["fp32", "fp16", "int8"]
Objective = Literal["smallest", "fastest", "most_accurate"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RuntimeSpec(_Strict):
    name: Literal["onnxruntime", "tflite-runtime", "ai-edge-litert"]
    version: str = Field(description="PEP 440 specifier the device's runtime satisfies")


class FirmwareProfile(_Strict):
    name: str = Field(pattern=PROFILE_NAME_PATTERN)
    description: str = ""
    runtime: RuntimeSpec
    arch: Literal["x86_64", "aarch64", "armv7l"]
    isa_features: list[str] = Field(default_factory=list)
    formats: list[Format] = Field(min_length=1)
    precisions: list[Precision] = Field(min_length=1)
    max_model_bytes: int = Field(gt=0)
    memory_budget_mb: int = Field(gt=0)
    latency_budget_ms: float = Field(gt=0)
    max_accuracy_drop: float = Field(ge=0, le=1)
    objective: Objective = "most_accurate"


def parse_profile(data: bytes | str, *, source: str = "profile") -> FirmwareProfile:
    """Validate TOML text as a firmware profile; ``ProfileError`` names the field."""
    try:
        raw = tomllib.loads(data.decode() if isinstance(data, bytes) else data)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"not valid TOML: {e}", profile=source) from e
    try:
        return FirmwareProfile.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or None
        raise ProfileError(str(first.get("msg")), field=field, profile=source) from e


def load_profile(path: Path) -> FirmwareProfile:
    """Read and validate one profile file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ProfileError(f"cannot read: {e}", profile=path.name) from e
    profile = parse_profile(text, source=path.name)
    if profile.name != path.stem:
        raise ProfileError(
            f"name {profile.name!r} does not match the file name", field="name", profile=path.name
        )
    return profile


def load_profiles(directory: Path) -> dict[str, FirmwareProfile]:
    """Every ``*.toml`` profile in ``directory``, by name."""
    return {p.name: p for p in (load_profile(f) for f in sorted(Path(directory).glob("*.toml")))}


def default_profiles_dir() -> Path:
    """The ``firmware_profiles/`` directory shipped beside the packages."""
    return Path(__file__).resolve().parent.parent / "firmware_profiles"
