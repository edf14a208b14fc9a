"""Firmware profiles: what one device class can run, one TOML file per class.

Both sides read profiles: the control plane builds a bundle per profile, and the
agent refuses a bundle that is not built for its own. Unknown keys are refused so a
typo fails loudly; errors name the field and the reason.

A profile states the runtime and the exact version range the devices run, because
what a runtime can execute (opsets, TFLite builtins, integer-only kernels) changes
between versions; the converters refuse a model the stated runtime cannot run
before they build anything from it.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Literal, Self

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet.errors import ProfileError

PROFILE_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,63}$"

Format = Literal["onnx", "ort", "tflite"]
Precision = Literal["fp32", "fp16", "int8"]
Objective = Literal["smallest", "fastest", "most_accurate"]
TensorDtype = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64"]
RuntimeName = Literal["onnxruntime", "tflite-runtime", "ai-edge-litert"]

ONNX_RUNTIMES = ("onnxruntime",)
TFLITE_RUNTIMES = ("tflite-runtime", "ai-edge-litert")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _FieldProblem(ValueError):
    """A cross-field check failed; carries the dotted field it is about."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


class RuntimeSpec(_Strict):
    name: RuntimeName
    version: str = Field(description="PEP 440 specifier the device's runtime satisfies")

    @field_validator("version")
    @classmethod
    def _valid_specifier(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier as e:
            raise ValueError(f"not a PEP 440 version specifier: {value!r}") from e
        return value

    def admits(self, version: str) -> bool:
        """True when runtime ``version`` lies in the profile's range."""
        return SpecifierSet(self.version).contains(version, prereleases=True)


class TensorConstraints(_Strict):
    """Element types the device accepts at the model's boundary.

    Integer-only accelerators take and return quantized tensors; the agent converts
    at the boundary with the scale and zero-point the manifest records.
    """

    input_dtypes: list[TensorDtype] = Field(
        default_factory=lambda: list[TensorDtype](["float32"]), min_length=1
    )
    output_dtypes: list[TensorDtype] = Field(
        default_factory=lambda: list[TensorDtype](["float32", "int64"]), min_length=1
    )


class OnnxOpset(_Strict):
    """The ai.onnx opset range the runtime version implements, and ops it lacks."""

    opset_min: int = Field(default=7, ge=1)
    opset_max: int = Field(ge=1)
    ml_opset_max: int = Field(default=3, ge=0, description="ai.onnx.ml; 0 = not available")
    unsupported_ops: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.opset_min > self.opset_max:
            raise _FieldProblem("opset_max", "must be at least opset_min")
        return self


class TfliteOps(_Strict):
    """The TFLite builtin operators the runtime (and its delegate) can run."""

    builtin_ops: list[str] = Field(min_length=1)
    integer_only: bool = Field(
        default=False, description="every op must run on int8 tensors (no float kernels)"
    )


class FirmwareProfile(_Strict):
    name: str = Field(pattern=PROFILE_NAME_PATTERN)
    description: str = ""
    runtime: RuntimeSpec
    arch: Literal["x86_64", "aarch64", "armv7l"]
    isa_features: list[str] = Field(default_factory=list)
    formats: list[Format] = Field(min_length=1)
    precisions: list[Precision] = Field(min_length=1)
    tensors: TensorConstraints = Field(default_factory=TensorConstraints)
    onnx: OnnxOpset | None = None
    tflite: TfliteOps | None = None
    max_model_bytes: int = Field(gt=0)
    memory_budget_mb: int = Field(gt=0)
    latency_budget_ms: float = Field(gt=0)
    max_accuracy_drop: float = Field(ge=0, le=1)
    objective: Objective = "most_accurate"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.runtime.name in ONNX_RUNTIMES:
            if not set(self.formats) <= {"onnx", "ort"}:
                raise _FieldProblem("formats", f"{self.runtime.name} runs only onnx and ort")
        elif not set(self.formats) <= {"tflite"}:
            raise _FieldProblem("formats", f"{self.runtime.name} runs only tflite")
        if self.runtime.name in TFLITE_RUNTIMES and self.tflite is None:
            raise _FieldProblem("tflite", "a TFLite runtime needs its [tflite] op set")
        if self.tflite is not None and self.tflite.integer_only and self.precisions != ["int8"]:
            raise _FieldProblem("precisions", "an integer-only device accepts only int8")
        return self

    @property
    def is_onnx(self) -> bool:
        return self.runtime.name in ONNX_RUNTIMES

    @property
    def is_tflite(self) -> bool:
        return self.runtime.name in TFLITE_RUNTIMES


def _field_of(error: dict[str, object]) -> str | None:
    loc = [str(p) for p in error.get("loc", ())]  # type: ignore[attr-defined]
    context = error.get("ctx") or {}
    problem = context.get("error") if isinstance(context, dict) else None
    if isinstance(problem, _FieldProblem):
        loc.append(problem.field)
    return ".".join(loc) or None


def parse_profile(data: bytes | str, *, source: str = "profile") -> FirmwareProfile:
    """Validate TOML text as a firmware profile.

    Args:
        data: The profile's TOML text.
        source: What to call it in errors (the file name, usually).

    Returns:
        The validated profile.

    Raises:
        ProfileError: The text is not valid UTF-8 TOML, or a field is unknown, missing or
            invalid; ``field`` names the dotted field and ``reason`` says why.
    """
    try:
        raw = tomllib.loads(data.decode() if isinstance(data, bytes) else data)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"not valid TOML: {e}", profile=source) from e
    try:
        return FirmwareProfile.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        context = first.get("ctx") or {}
        problem = context.get("error")
        reason = problem.reason if isinstance(problem, _FieldProblem) else str(first.get("msg"))
        raise ProfileError(reason, field=_field_of(dict(first)), profile=source) from e


def load_profile(path: Path | Traversable) -> FirmwareProfile:
    """Read and validate one profile file.

    Args:
        path: A file on disk, or a file inside an installed package (a ``Traversable``
            from ``default_profiles_dir()``).

    Returns:
        The validated profile.

    Raises:
        ProfileError: The file cannot be read, is not a valid profile, or its ``name``
            differs from the file name without ``.toml``.
    """
    try:
        text = path.read_text()
    except OSError as e:
        raise ProfileError(f"cannot read: {e}", profile=path.name) from e
    profile = parse_profile(text, source=path.name)
    if profile.name != path.name.removesuffix(".toml"):
        raise ProfileError(
            f"name {profile.name!r} does not match the file name", field="name", profile=path.name
        )
    return profile


def load_profiles(directory: Path | Traversable) -> dict[str, FirmwareProfile]:
    """Every ``*.toml`` profile in ``directory``, by name.

    Args:
        directory: A directory on disk, or ``default_profiles_dir()`` for the shipped ones.

    Returns:
        Profile name -> profile, in file-name order.

    Raises:
        ProfileError: For the first file that is not a valid profile (one bad file
            fails the whole load).
        OSError: ``directory`` cannot be listed.
    """
    files = sorted(
        (f for f in directory.iterdir() if f.name.endswith(".toml") and f.is_file()),
        key=lambda f: f.name,
    )
    return {p.name: p for p in (load_profile(f) for f in files)}


def default_profiles_dir() -> Traversable:
    """The profiles shipped as package data (``edgefleet/firmware_profiles/*.toml``).

    Found through ``importlib.resources``, so an installed wheel finds them as a source
    checkout does; ``EDGEFLEET_PROFILES_DIR`` points the control plane at a directory of
    the operator's own.
    """
    return resources.files("edgefleet").joinpath("firmware_profiles")
