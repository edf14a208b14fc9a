"""Float model (.onnx or .tflite) -> the best candidate that passes the gate for one profile.

inspect -> fit the samples and holdout to the signature (every input, its dtype and
shape, never cast) -> measure the float model on the holdout and check that the gate
can judge every output by its task -> refuse what the runtime cannot run -> build every
candidate the profile allows -> run each at the device's batch in the runtime on the
holdout -> gate every output -> choose by the profile's objective. A build with no
passing candidate raises ``GateError`` with every candidate's numbers, so the engineer
sees why, not just that it failed; a holdout the declared task cannot judge raises
``UnjudgeableError`` before any candidate is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgefleet.converters.calibration import prepare_calibration
from edgefleet.converters.candidate import Candidate
from edgefleet.converters.compat import check_onnx_ops, lower_opset
from edgefleet.converters.errors import CandidateSkipped, ConversionError, GateError
from edgefleet.converters.gate import (
    CandidateResult,
    GateLimits,
    OutputTask,
    check_judgeable,
    choose,
    judge_outputs,
    resolve_tasks,
)
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
from edgefleet.converters.samples import SampleError, Samples, check_labels
from edgefleet.converters.tflite_inspect import TfliteInspection
from edgefleet.converters.tflite_source import check_tflite_source, tflite_source_candidates
from edgefleet.converters.worker_envs import installed_python, spec_for
from edgefleet.profile import FirmwareProfile
from edgefleet.tensors import ModelSignature

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]
CandidateReport = Callable[["CandidateResult"], None]

# The Python distribution that implements each runtime the gate can run in this process.
_GATE_DISTRIBUTIONS = {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}


Arrays = np.ndarray | Mapping[str, np.ndarray] | Samples
"""Inputs as callers give them: one array for a one-input model, a dict keyed by input
name, or a ``Samples`` already fitted to the signature."""


@dataclass
class Holdout:
    """What the gate judges on: inputs (``Arrays``), and labels when the builder has them."""

    x: Arrays
    y: np.ndarray | None = None
    source: str = "holdout"


def fit_samples(signature: ModelSignature, arrays: Arrays, *, what: str) -> Samples:
    """``arrays`` checked against ``signature`` (``SampleError`` names the input)."""
    if isinstance(arrays, Samples):
        return arrays
    if isinstance(arrays, np.ndarray):
        names = [s.name for s in signature.inputs]
        if len(names) != 1:
            raise SampleError(
                f"{what}: one array cannot feed {len(names)} inputs {names}; key them by name"
            )
        arrays = {names[0]: arrays}
    return Samples.fit(signature, arrays, what=what)


@dataclass
class BuildOutcome:
    chosen: Candidate
    table: list[CandidateResult]
    verified: bool
    reference: dict[str, Any]
    gate_runtime: dict[str, Any]
    inspection: OnnxInspection | TfliteInspection
    output_names: list[str] = field(default_factory=list)
    tasks: dict[str, str] = field(default_factory=dict)  # output name -> task, as judged

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
    output_names: list[str],
    calibration: Samples | None,
    inspection: OnnxInspection | TfliteInspection,
    cache_dir: Path | None,
) -> Iterable[Candidate | ConversionError]:
    if isinstance(inspection, TfliteInspection):  # a registered .tflite: no ONNX in between
        return tflite_source_candidates(
            model_bytes,
            profile,
            inspection=inspection,
            calibration=None if calibration is None else calibration.arrays,
        )
    assert model is not None  # an ONNX source is always parsed
    if profile.is_onnx:
        check_onnx_ops(model, profile)
        lowered = lower_opset(model, profile)
        data = model_bytes if lowered is model else lowered.SerializeToString()
        return onnx_candidates(
            data,
            profile,
            calibration=calibration,
            model_sha256=inspection.sha256,
            cache_dir=cache_dir,
        )
    from edgefleet.converters.tflite_candidates import float_tflite_from_onnx, tflite_candidates

    refuse_onnx_ml_for_tflite(model, profile.name)
    input_name = _single_float_input(inspection.signature, profile)
    float_tflite, tool = float_tflite_from_onnx(
        model_bytes, profile, signature=inspection.signature
    )
    return tflite_candidates(
        float_tflite,
        profile,
        input_name=input_name,
        output_names=output_names,
        calibration=None if calibration is None else calibration.arrays[input_name],
        float_tool=tool,
    )


def _is_single_float(signature: ModelSignature) -> bool:
    return len(signature.inputs) == 1 and signature.inputs[0].datatype == "FP32"


def _refuse_tflite_ops(model: onnx.ModelProto, profile: FirmwareProfile) -> list[str]:
    """``ConversionError`` naming the ONNX ops (ONNX-ML ones, or ops whose TFLite lowering
    the profile cannot run) that keep the model off ``profile`` whatever its inputs; else
    the ops the converter has no known lowering for (``If``, ``Loop``, ...)."""
    from edgefleet.converters.onnx2tflite import precheck, required_builtins

    refuse_onnx_ml_for_tflite(model, profile.name)
    precheck(model, profile)
    return sorted(required_builtins(model)[1])


def _single_float_input(
    signature: ModelSignature, profile: FirmwareProfile, *, unlowered: list[str] | None = None
) -> str:
    """The one FP32 input the ONNX->TFLite conversion takes; ``ConversionError`` naming the
    inputs otherwise (and ``unlowered``, ops the conversion has no known lowering for)."""
    inputs = signature.inputs
    if not _is_single_float(signature):
        shown = ", ".join(f"{s.name} {s.describe()}" for s in inputs)
        ops = f"; it also has ops with no known TFLite lowering: {', '.join(unlowered or [])}"
        raise ConversionError(
            f"profile {profile.name}: the ONNX->TFLite conversion takes one FP32 input, "
            f"the model has {shown}" + (ops if unlowered else "")
        )
    return inputs[0].name


def build_for_profile(
    model_bytes: bytes,
    profile: FirmwareProfile,
    *,
    calibration: Arrays | None,
    holdout: Holdout,
    task: str | None = None,
    max_accuracy_drop: float | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    on_candidate: CandidateReport | None = None,
) -> BuildOutcome:
    """Build, measure and gate every candidate; the chosen one, or ``GateError``.

    ``task`` says what the outputs mean (``edgefleet.converters.gate.parse_task``);
    undeclared, labels make it ``classification`` and no labels ``generic``.
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
    signature = inspection.signature
    output_names = [o.name for o in signature.outputs]
    calib = (
        None
        if calibration is None
        else prepare_calibration(fit_samples(signature, calibration, what="samples"))
    )
    holdout_samples = fit_samples(signature, holdout.x, what="holdout")
    labels = (
        None
        if holdout.y is None
        else check_labels(np.asarray(holdout.y), holdout_samples.n, what="holdout")
    )
    try:
        tasks = resolve_tasks(task, output_names, labels=labels)
    except ValueError as e:
        raise ConversionError(f"task: {e}") from e
    limits = GateLimits(
        max_accuracy_drop=profile.max_accuracy_drop
        if max_accuracy_drop is None
        else max_accuracy_drop,
        max_model_bytes=profile.max_model_bytes,
        latency_budget_ms=profile.latency_budget_ms,
    )
    worker_x = None
    if isinstance(inspection, TfliteInspection):
        # The worker runtime feeds one float input; any other .tflite is gated in-process.
        if _is_single_float(signature) and signature.batch in (None, 1):
            worker_x = holdout_samples.arrays[signature.inputs[0].name]
    elif not profile.is_onnx:
        assert model is not None
        if not _is_single_float(signature):
            unlowered = _refuse_tflite_ops(model, profile)  # ops the profile lacks first
            _single_float_input(signature, profile, unlowered=unlowered)
        worker_x = holdout_samples.arrays[_single_float_input(signature, profile)]
    say("measuring the float model")
    source: Runner = (
        TfliteRunner(model_bytes, {})  # its tensors as its signature states them
        if isinstance(inspection, TfliteInspection)
        else OnnxRunner(model_bytes)
    )
    try:
        reference: Measurement = measure(source, holdout_samples)
    except ConversionError as e:
        raise ConversionError(f"the float model does not run on the holdout: {e}") from e
    check_judgeable(reference.outputs, tasks, labels=labels, limits=limits)

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
            if worker is not None and worker_x is not None:
                result = measure_in_worker(worker, item, worker_x)
                measured = result.measurement
                gate_runtime = {
                    **result.runtime,
                    "matches_profile": result.runtime["name"] == profile.runtime.name
                    and profile.runtime.admits(result.runtime["version"]),
                    "environment": str(worker.parent.parent),
                }
            else:
                measured = measure(runner_for(item), holdout_samples)
        except (ConversionError, RuntimeError, ValueError) as e:  # runtimes raise these
            row.reasons = [str(e)]
            table.append(row)
            continue
        row.latency_ms = round(measured.latency_ms, 4)
        judge_outputs(
            row,
            outputs=measured.outputs,
            reference=reference.outputs,
            tasks=tasks,
            labels=labels,
            limits=limits,
        )
        table.append(row)
        built[item.name] = item
        logger.info(
            "candidate measured profile=%s candidate=%s verdict=%s agreement=%s error=%s",
            profile.name,
            item.name,
            row.verdict,
            row.agreement,
            row.relative_error,
        )
    best = choose(table, profile.objective)
    if best is None:
        raise GateError(
            f"no candidate passed the gate for {profile.name}",
            candidates=[r.as_row() for r in table],
        )
    judged = {name: str(t) for name, t in tasks.items()}
    return BuildOutcome(
        chosen=built[best.candidate],
        table=list(table),
        verified=labels is not None and _labels_judged(tasks),
        reference={
            "float_accuracy": _float_accuracy(reference.outputs, tasks, labels),
            "float_latency_ms": round(reference.latency_ms, 4),
            "holdout": holdout.source,
            "holdout_samples": holdout_samples.n,
            "holdout_sha256": holdout_samples.sha256(),
            "max_accuracy_drop": limits.max_accuracy_drop,
            "tasks": judged,
        },
        gate_runtime=gate_runtime,
        inspection=inspection,
        output_names=output_names,
        tasks=judged,
    )


def _labels_judged(tasks: Mapping[str, OutputTask]) -> bool:
    return any(t.kind in ("classification", "binary") for t in tasks.values())


def _float_accuracy(
    outputs: Mapping[str, np.ndarray], tasks: Mapping[str, OutputTask], labels: np.ndarray | None
) -> float | None:
    """The float model's accuracy on the labels, by the first output they judge."""
    if labels is None:
        return None
    for name, task in tasks.items():
        value = np.asarray(outputs[name])
        rows = value.reshape(len(value), -1)
        if task.kind == "classification":
            predicted = np.argmax(rows, 1) if value.dtype.kind == "f" else rows[:, 0]
            return float(np.mean(predicted.astype(np.int64) == labels.astype(np.int64)))
        if task.kind == "binary":
            decided = rows[:, 0] >= task.threshold
            return float(np.mean(decided == (labels.astype(np.int64) != 0)))
    return None
