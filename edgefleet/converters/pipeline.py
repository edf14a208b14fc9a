"""Float ONNX model -> the best candidate that passes the gate for one profile.

inspect -> refuse what the runtime cannot run -> build every candidate the profile
allows -> run each at batch 1 in the runtime on the holdout -> gate -> choose by
the profile's objective. A build with no passing candidate raises ``GateError``
with every candidate's numbers, so the engineer sees why, not just that it failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.converters.calibration import calibration_hash, prepare_calibration
from edgefleet.converters.candidate import Candidate
from edgefleet.converters.compat import check_onnx_ops, lower_opset
from edgefleet.converters.errors import CandidateSkipped, ConversionError, GateError
from edgefleet.converters.gate import CandidateResult, GateLimits, choose, judge
from edgefleet.converters.model_format import inspect_model
from edgefleet.converters.onnx_candidates import onnx_candidates
from edgefleet.converters.onnx_inspect import OnnxInspection
from edgefleet.converters.onnx_ml import refuse_onnx_ml_for_tflite
from edgefleet.converters.runner import (
    Measurement,
    OnnxRunner,
    Runner,
    TfliteRunner,
    measure,
    measure_in_worker,
    runner_for,
)
from edgefleet.converters.tflite_inspect import TfliteInspection
from edgefleet.converters.tflite_source import check_tflite_source, tflite_source_candidates
from edgefleet.converters.worker_envs import installed_python, spec_for
from edgefleet.profile import FirmwareProfile

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
CandidateReport = Callable[["CandidateResult"], None]

# The Python distribution that implements each runtime the gate can run in this process.
_GATE_DISTRIBUTIONS = {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}


@dataclass
class Holdout:
    """What the gate judges on: inputs, and labels when the builder has them."""

    x: np.ndarray
    y: np.ndarray | None = None
    source: str = "holdout"


@dataclass
class BuildOutcome:
    chosen: Candidate
    table: list[CandidateResult]
    verified: bool
    reference: dict[str, Any]
    gate_runtime: dict[str, Any]
    inspection: OnnxInspection | TfliteInspection
    output_names: list[str] = field(default_factory=list)

    @property
    def chosen_row(self) -> CandidateResult:
        return next(r for r in self.table if r.chosen)


class _ReportedRows(list[CandidateResult]):
    """The candidates table, telling ``report`` of each row appended to it."""

    def __init__(self, report: CandidateReport | None) -> None:
        super().__init__()
        self._report = report

    def append(self, row: CandidateResult) -> None:
        super().append(row)
        if self._report is not None:
            self._report(row)


def _runtime_version(fmt: str) -> str:
    try:
        return metadata.version(_GATE_DISTRIBUTIONS[fmt])
    except metadata.PackageNotFoundError:
        return "unknown"


def _boundary_refusal(candidate: Candidate, profile: FirmwareProfile) -> str | None:
    dtypes = candidate.recipe.get("boundary_dtypes")
    if not isinstance(dtypes, dict):
        return None  # ONNX candidates keep float32 I/O
    allowed = set(profile.tensors.input_dtypes) | set(profile.tensors.output_dtypes)
    bad = sorted({d for d in dtypes.values() if d not in allowed})
    return f"boundary dtypes {bad} not accepted by the profile" if bad else None


def _candidates(
    model_bytes: bytes,
    model: onnx.ModelProto | None,
    profile: FirmwareProfile,
    *,
    input_name: str,
    output_names: list[str],
    calibration: np.ndarray | None,
    inspection: OnnxInspection | TfliteInspection,
    cache_dir: Path | None,
) -> Iterable[Candidate | ConversionError]:
    if isinstance(inspection, TfliteInspection):  # a registered .tflite: no ONNX in between
        return tflite_source_candidates(
            model_bytes, profile, inspection=inspection, calibration=calibration
        )
    assert model is not None  # an ONNX source is always parsed
    if profile.is_onnx:
        check_onnx_ops(model, profile)
        lowered = lower_opset(model, profile)
        data = model_bytes if lowered is model else lowered.SerializeToString()
        return onnx_candidates(
            data,
            profile,
            input_name=input_name,
            calibration=calibration,
            model_sha256=inspection.sha256,
            cache_dir=cache_dir,
        )
    from edgefleet.converters.tflite_candidates import float_tflite_from_onnx, tflite_candidates

    refuse_onnx_ml_for_tflite(model, profile.name)
    float_tflite, tool = float_tflite_from_onnx(
        model_bytes, profile, signature=inspection.signature
    )
    return tflite_candidates(
        float_tflite,
        profile,
        input_name=input_name,
        output_names=output_names,
        calibration=calibration,
        float_tool=tool,
    )


def build_for_profile(
    model_bytes: bytes,
    profile: FirmwareProfile,
    *,
    calibration: np.ndarray | None,
    holdout: Holdout,
    max_accuracy_drop: float | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    on_candidate: CandidateReport | None = None,
) -> BuildOutcome:
    """Build, measure and gate every candidate; the chosen one, or ``GateError``.

    ``progress`` hears what the build is doing; ``on_candidate`` each row of the
    candidates table as it lands (its verdict and numbers are final then).
    """
    say = progress or (lambda _text: None)
    inspection = inspect_model(model_bytes)  # .onnx or .tflite, by content
    model: onnx.ModelProto | None = None
    if isinstance(inspection, TfliteInspection):
        check_tflite_source(inspection, profile)  # an ONNX profile, or ops it lacks: refused
    else:
        model = onnx.load_from_string(model_bytes)
    if len(inspection.signature.inputs) != 1:
        raise ConversionError("only models with exactly one input are supported")
    input_name = inspection.signature.inputs[0].name
    output_names = [o.name for o in inspection.signature.outputs]
    calib = prepare_calibration(calibration) if calibration is not None else None
    limits = GateLimits(
        max_accuracy_drop=profile.max_accuracy_drop
        if max_accuracy_drop is None
        else max_accuracy_drop,
        max_model_bytes=profile.max_model_bytes,
        latency_budget_ms=profile.latency_budget_ms,
    )
    say("measuring the float model")
    holdout_x = np.asarray(holdout.x, dtype=np.float32)
    want = inspection.signature.inputs[0].shape
    if holdout_x.ndim != len(want) or any(
        w not in (-1, g) for w, g in zip(want[1:], holdout_x.shape[1:], strict=False)
    ):
        raise ConversionError(
            f"holdout shape {list(holdout_x.shape)} does not fit input {input_name} {want}"
        )
    source: Runner = (
        TfliteRunner(model_bytes, {})  # its tensors as its signature states them
        if isinstance(inspection, TfliteInspection)
        else OnnxRunner(model_bytes)
    )
    reference: Measurement = measure(source, holdout_x)
    float_predictions = reference.predictions
    labels = None if holdout.y is None else np.asarray(holdout.y).astype(np.int64)

    table = _ReportedRows(on_candidate)
    built: dict[str, Candidate] = {}
    fmt = "onnx" if profile.is_onnx else "tflite"
    version = _runtime_version(fmt)
    gate_runtime: dict[str, Any] = {
        "name": _GATE_DISTRIBUTIONS[fmt],
        "version": version,
        "matches_profile": profile.runtime.name == _GATE_DISTRIBUTIONS[fmt]
        and profile.runtime.admits(version),
    }
    worker = None if profile.is_onnx else installed_python(profile)
    if worker is None and spec_for(profile) is not None:
        logger.warning(
            "worker environment for %s missing; gating %s in %s instead "
            "(python -m edgefleet.converters.worker_envs install)",
            profile.runtime.name,
            profile.name,
            gate_runtime["name"],
        )
    candidates = _candidates(
        model_bytes,
        model,
        profile,
        input_name=input_name,
        output_names=output_names,
        calibration=calib,
        inspection=inspection,
        cache_dir=cache_dir,
    )
    for item in candidates:
        if isinstance(item, ConversionError):
            skipped = isinstance(item, CandidateSkipped)
            name = str(item).split(":", 1)[0]
            table.append(
                CandidateResult(
                    candidate=name,
                    precision="?",
                    format="?",
                    size_bytes=0,
                    verdict="skipped" if skipped else "error",
                    reasons=[item.reason if isinstance(item, CandidateSkipped) else str(item)],
                )
            )
            if skipped:
                continue
            logger.warning("candidate failed to build profile=%s error=%s", profile.name, item)
            continue
        say(f"measuring {item.name}")
        row = CandidateResult(
            candidate=item.name,
            precision=item.precision,
            format=item.format,
            size_bytes=len(item.data),
        )
        refusal = _boundary_refusal(item, profile)
        if refusal:
            row.verdict, row.reasons = "refused", [refusal]
            table.append(row)
            continue
        try:
            if worker is not None:
                result = measure_in_worker(worker, item, holdout_x)
                measured = result.measurement
                gate_runtime = {
                    **result.runtime,
                    "matches_profile": result.runtime["name"] == profile.runtime.name
                    and profile.runtime.admits(result.runtime["version"]),
                    "environment": str(worker.parent.parent),
                }
            else:
                measured = measure(runner_for(item), holdout_x)
        except (ConversionError, RuntimeError, ValueError) as e:  # runtimes raise these
            row.reasons = [str(e)]
            table.append(row)
            continue
        row.latency_ms = round(measured.latency_ms, 4)
        judge(
            row,
            predictions=measured.predictions,
            float_predictions=float_predictions,
            labels=labels,
            limits=limits,
        )
        table.append(row)
        built[item.name] = item
        logger.info(
            "candidate measured profile=%s candidate=%s verdict=%s agreement=%.4f",
            profile.name,
            item.name,
            row.verdict,
            row.agreement,
        )
    best = choose(table, profile.objective)
    if best is None:
        raise GateError(
            f"no candidate passed the gate for {profile.name}",
            candidates=[r.as_row() for r in table],
        )
    float_accuracy = None if labels is None else float(np.mean(float_predictions == labels))
    return BuildOutcome(
        chosen=built[best.candidate],
        table=list(table),
        verified=labels is not None,
        reference={
            "float_accuracy": float_accuracy,
            "float_latency_ms": round(reference.latency_ms, 4),
            "holdout": holdout.source,
            "holdout_samples": len(holdout_x),
            "holdout_sha256": calibration_hash(holdout_x),
            "max_accuracy_drop": limits.max_accuracy_drop,
        },
        gate_runtime=gate_runtime,
        inspection=inspection,
        output_names=output_names,
    )
