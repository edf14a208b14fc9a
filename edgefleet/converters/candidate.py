"""A candidate artifact: one recipe applied to the float model, not yet measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CandidateFormat = Literal["onnx", "tflite"]


@dataclass(frozen=True)
class IoQuantization:
    """How a float tensor maps to an integer model boundary: ``q = x / scale + zero_point``."""

    dtype: str
    scale: float
    zero_point: int

    def as_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "scale": self.scale, "zero_point": self.zero_point}


@dataclass(frozen=True)
class Candidate:
    """One artifact to measure: what it is, how it was made, and its bytes."""

    name: str
    format: CandidateFormat
    precision: str
    data: bytes
    recipe: dict[str, Any]
    # Integer-boundary models only: tensor name -> quantization the agent applies.
    io_quantization: dict[str, IoQuantization] = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return "model.onnx" if self.format == "onnx" else "model.tflite"
