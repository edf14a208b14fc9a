"""An ONNX and a TFLite export of the same model, checked to be the same model.

Teams often export both. When a version carries both, ONNX profiles build from the
ONNX file and TFLite profiles from the .tflite, so the two must be interchangeable:
the same input and output names, dtypes and shapes (the OIP endpoint serves those
names whichever device answers), and the same answers on the registered samples,
run at batch 1 in onnxruntime and LiteRT. Integer outputs (labels) must agree on at
least ``MIN_AGREEMENT`` of the rows; float outputs must stay within
``MAX_RELATIVE_ERROR`` of the ONNX output's range (loose enough for a quantized
.tflite, tight enough to catch a different model or a different preprocessing).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.converters.errors import ConversionError
from edgefleet.converters.model_format import ReadModel
from edgefleet.converters.runner import OnnxRunner, Runner, TfliteRunner
from edgefleet.converters.tflite_inspect import TfliteInspection
from edgefleet.tensors import TensorSpec

MIN_AGREEMENT = 0.98
MAX_RELATIVE_ERROR = 0.05
MAX_ROWS = 256


def _runner(model: ReadModel) -> Runner:
    if isinstance(model.inspection, TfliteInspection):
        return TfliteRunner(model.data, {})  # the dtypes its signature states
    return OnnxRunner(model.data)


def _fits(a: TensorSpec, b: TensorSpec) -> bool:
    return (
        a.datatype == b.datatype
        and len(a.shape) == len(b.shape)
        and all(x == y or -1 in (x, y) for x, y in zip(a.shape, b.shape, strict=True))
    )


def _check_signatures(onnx_model: ReadModel, tflite_model: ReadModel) -> None:
    for kind in ("inputs", "outputs"):
        ours = {t.name: t for t in getattr(onnx_model.inspection.signature, kind)}
        theirs = {t.name: t for t in getattr(tflite_model.inspection.signature, kind)}
        if set(ours) != set(theirs):
            raise ConversionError(
                f"the ONNX and TFLite files differ in {kind}: ONNX has {sorted(ours)}, "
                f"TFLite has {sorted(theirs)} (both must serve the same tensor names)"
            )
        for name, spec in ours.items():
            if not _fits(spec, theirs[name]):
                other = theirs[name]
                raise ConversionError(
                    f"{kind[:-1]} {name}: ONNX {spec.datatype} {spec.shape} but TFLite "
                    f"{other.datatype} {other.shape}"
                )


def compare_artifacts(first: ReadModel, second: ReadModel, samples: np.ndarray) -> dict[str, Any]:
    """Check that an ONNX and a TFLite file are the same model; what was measured.

    Returns:
        ``{"rows", "outputs": {name: {"agreement" | "relative_error": value}}}``.

    Raises:
        ConversionError: Both files are the same format, their signatures differ, or
            their outputs disagree on the samples, naming the output and the figure.
    """
    if first.format == second.format:
        raise ConversionError(
            f"both files are {first.format}: a second file must be the same model in the "
            "other format (.onnx with .tflite)"
        )
    onnx_model, tflite_model = (first, second) if first.format == "onnx" else (second, first)
    _check_signatures(onnx_model, tflite_model)
    rows = np.ascontiguousarray(samples[:MAX_ROWS], dtype=np.float32)
    runners = _runner(onnx_model), _runner(tflite_model)
    try:
        results = [[runner.run(row[None, ...]) for row in rows] for runner in runners]
    except (RuntimeError, ValueError) as e:
        raise ConversionError(f"the two files cannot both run the samples: {e}") from e
    report: dict[str, dict[str, float]] = {}
    for spec in onnx_model.inspection.signature.outputs:
        want = np.concatenate([r[spec.name].reshape(1, -1) for r in results[0]])
        got = np.concatenate([r[spec.name].reshape(1, -1) for r in results[1]])
        if np.issubdtype(want.dtype, np.integer) or want.dtype == np.bool_:
            agreement = float(np.mean(np.all(want == got, axis=1)))
            report[spec.name] = {"agreement": agreement}
            if agreement < MIN_AGREEMENT:
                raise ConversionError(
                    f"output {spec.name}: the ONNX and TFLite files agree on {agreement:.3f} "
                    f"of {len(rows)} samples (< {MIN_AGREEMENT}): not the same model"
                )
            continue
        spread = float(np.ptp(want)) or 1.0
        error = float(np.max(np.abs(want.astype(np.float64) - got))) / spread
        report[spec.name] = {"relative_error": error}
        if error > MAX_RELATIVE_ERROR:
            raise ConversionError(
                f"output {spec.name}: the ONNX and TFLite files differ by {error:.3f} of the "
                f"output's range on the samples (> {MAX_RELATIVE_ERROR}): not the same model"
            )
    return {"rows": len(rows), "outputs": report}
