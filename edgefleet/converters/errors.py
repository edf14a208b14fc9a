"""Errors of the converters.

::

    ConversionError         a model could not be read, checked or converted
    ├── UnsupportedOpError  the target runtime version cannot run some of the model's ops
    ├── CalibrationError    the calibration samples cannot calibrate this model
    ├── CandidateSkipped    a recipe that does not apply to this model (not a failure)
    └── GateError           no candidate passed the accuracy gate (carries every row)
"""

from __future__ import annotations

from typing import Any


class ConversionError(Exception):
    """A model could not be inspected or converted; the message says why."""


class UnsupportedOpError(ConversionError):
    def __init__(self, ops: list[str], *, runtime: str) -> None:
        super().__init__(f"{runtime} cannot run these ops: {', '.join(sorted(ops))}")
        self.ops = ops
        self.runtime = runtime


class CalibrationError(ConversionError):
    """The calibration samples are missing, too few, or do not fit the model."""


class CandidateSkipped(ConversionError):
    """A candidate recipe that cannot apply to this model; the build lists it as skipped."""

    def __init__(self, candidate: str, reason: str) -> None:
        super().__init__(f"{candidate}: skipped: {reason}")
        self.candidate = candidate
        self.reason = reason


class GateError(ConversionError):
    """Every candidate failed the gate; ``candidates`` holds each one's numbers and reasons."""

    def __init__(self, reason: str, *, candidates: list[dict[str, Any]]) -> None:
        lines = [reason] + [
            f"  {c['candidate']}: " + "; ".join(c.get("reasons") or ["passed"]) for c in candidates
        ]
        super().__init__("\n".join(lines))
        self.reason = reason
        self.candidates = candidates
