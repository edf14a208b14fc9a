"""TFLite candidates built from a registered .tflite model (no ONNX in between).

The model as given is the float reference and the fp32 candidate; int8 and fp16
candidates are made from it with ai-edge-quantizer (the same recipes as for a
lowered ONNX model: static a8w8 calibrated on the registered samples, dynamic and
weight-only int8, fp16 weights). Recipes that cannot apply are skipped with the
reason: a source that is already quantized is not quantized again, and static
calibration needs a signature to feed samples through. ONNX profiles cannot run a
.tflite: that is refused before anything is built.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from edgefleet.converters.calibration import calibration_hash
from edgefleet.converters.candidate import Candidate
from edgefleet.converters.compat import check_tflite_ops
from edgefleet.converters.errors import CandidateSkipped, ConversionError
from edgefleet.converters.tflite_candidates import _recipe, finish_boundary, inline_buffers
from edgefleet.converters.tflite_inspect import TfliteInspection
from edgefleet.profile import FirmwareProfile

logger = logging.getLogger(__name__)

_QUANTIZED_OPS = {"QUANTIZE", "DEQUANTIZE"}
_CONTROL_FLOW_OPS = {"IF", "WHILE", "CALL_ONCE"}


def check_tflite_source(inspection: TfliteInspection, profile: FirmwareProfile) -> None:
    """Refuse, before anything is built, a profile that cannot run this .tflite.

    Raises:
        ConversionError: The profile runs ONNX, naming the mismatch.
        UnsupportedOpError: The model uses ops outside the profile's TFLite op set.
    """
    if profile.is_onnx:
        raise ConversionError(
            f"format mismatch: the model is TFLite (.tflite) and profile {profile.name} "
            f"runs ONNX ({profile.runtime.name}); register an ONNX export of the model "
            "to build for it, or choose a TFLite profile"
        )
    check_tflite_ops(inspection.ops, profile)


def is_quantized(inspection: TfliteInspection) -> bool:
    """True when the source already carries integer quantization."""
    return bool(inspection.quantization) or bool(inspection.ops & _QUANTIZED_OPS)


def unique_tensor_names(data: bytes) -> tuple[bytes, int]:
    """``data`` with the tensors of control-flow subgraphs renamed where a name repeats.

    ai-edge-quantizer refuses a model whose tensor names are not unique across
    subgraphs, which converters produce for IF / WHILE bodies (``arg0`` in each).
    Tensors of the main subgraph keep their names, so the signature is unchanged.

    Returns:
        The model (the same bytes when nothing repeats) and how many tensors were renamed.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))

    def name(tensor: Any) -> str:
        raw = tensor.name
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    seen: dict[str, int] = {}
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            seen[name(tensor)] = seen.get(name(tensor), 0) + 1
    renamed = 0
    for index, graph in enumerate(model.subgraphs[1:], start=1):
        for tensor in graph.tensors:
            if seen[name(tensor)] > 1:
                tensor.name = f"subgraph{index}/{name(tensor)}"
                renamed += 1
    if not renamed:
        return data, 0
    inline_buffers(model, data)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), renamed


def _signature_inputs(data: bytes, key: str) -> dict[str, str]:
    """Input tensor name -> the signature's name for it (a converter may make them differ)."""
    from ai_edge_litert.interpreter import Interpreter

    runner: Any = Interpreter(model_content=data).get_signature_runner(key)
    return {str(d["name"]): str(name) for name, d in runner.get_input_details().items()}


def _calibration_feed(
    data: bytes, key: str, arrays: Mapping[str, np.ndarray]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """ai-edge-quantizer's calibration set: one batch-1 row of every input per step."""
    names = _signature_inputs(data, key)
    rows = min(len(a) for a in arrays.values())
    return {
        key: [
            {names.get(t, t): np.asarray(a[i : i + 1]) for t, a in arrays.items()}
            for i in range(rows)
        ]
    }


def _arrays_hash(arrays: Mapping[str, np.ndarray]) -> str:
    if len(arrays) == 1:
        return calibration_hash(next(iter(arrays.values())))
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode() + b"\0" + calibration_hash(arrays[name]).encode())
    return digest.hexdigest()


def _quantize(data: bytes, recipe_name: str, calibration: dict[str, list[Any]] | None) -> bytes:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(bytearray(data), _recipe(recipe_name))
    result = q.calibrate(calibration) if q.need_calibration and calibration else None
    if q.need_calibration and result is None:
        raise ConversionError(f"{recipe_name}: no calibration samples")
    return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


def tflite_source_candidates(
    data: bytes,
    profile: FirmwareProfile,
    *,
    inspection: TfliteInspection,
    calibration: np.ndarray | Mapping[str, np.ndarray] | None,
) -> Iterator[Candidate | ConversionError]:
    """Every candidate the profile allows from the registered .tflite, the model as
    given last; recipes that cannot apply come as ``CandidateSkipped``.

    ``calibration`` is the samples of the one input, or input name -> samples.
    """
    check_tflite_source(inspection, profile)
    integer_only = bool(profile.tflite and profile.tflite.integer_only)
    input_names = [i.name for i in inspection.signature.inputs]
    arrays: Mapping[str, np.ndarray] = (
        {}
        if calibration is None
        else calibration
        if isinstance(calibration, Mapping)
        else {input_names[0]: calibration}
    )
    output_names = [o.name for o in inspection.signature.outputs]
    recipes: list[tuple[str, str]] = []
    if "int8" in profile.precisions:
        recipes.append(("int8-static-a8w8", "int8"))
        if not integer_only:
            recipes += [("int8-dynamic", "int8"), ("int8-weight-only", "int8")]
    if "fp16" in profile.precisions:
        recipes.append(("fp16-weights", "fp16"))
    source_quantized = is_quantized(inspection)
    quantizable, renamed = (data, 0) if source_quantized else unique_tensor_names(data)
    renames = {f"{n}_dequant": n for n in output_names} | {f"{n}_quantized": n for n in input_names}
    for name, precision in recipes:
        candidate = f"tflite-{name}"
        if source_quantized:
            yield CandidateSkipped(candidate, "the registered .tflite is already quantized")
            continue
        calib: dict[str, list[Any]] | None = None
        if name == "int8-static-a8w8":
            if flow := sorted(inspection.ops & _CONTROL_FLOW_OPS):
                yield CandidateSkipped(
                    candidate,
                    f"static calibration does not reach the subgraphs of {', '.join(flow)}",
                )
                continue
            if not inspection.signature_keys:
                yield CandidateSkipped(
                    candidate, "the .tflite has no signature to feed calibration samples through"
                )
                continue
            if missing := [n for n in input_names if n not in arrays]:
                yield CandidateSkipped(candidate, f"no calibration samples for {missing}")
                continue
            calib = _calibration_feed(
                quantizable, inspection.signature_keys[0], {n: arrays[n] for n in input_names}
            )
        try:
            quantized = _quantize(quantizable, name, calib)
            quantized, boundary, dtypes = finish_boundary(
                quantized, names=renames, integer_output=integer_only
            )
        except Exception as e:  # the quantizer raises many kinds of errors
            yield ConversionError(f"{candidate}: {e}")
            continue
        recipe: dict[str, Any] = {
            "tool": "ai_edge_quantizer",
            "recipe": name,
            "source": "registered .tflite",
            "boundary_dtypes": dtypes,
        }
        if renamed:
            recipe["renamed_subgraph_tensors"] = renamed
        if calib is not None:
            recipe |= {
                "calibration_sha256": _arrays_hash(arrays),
                "calibration_samples": min(len(a) for a in arrays.values()),
            }
        yield Candidate(
            name=candidate,
            format="tflite",
            precision=precision,
            data=quantized,
            recipe=recipe,
            io_quantization=boundary,
        )
    precision = "int8" if source_quantized else "fp32"
    if precision in profile.precisions:
        yield Candidate(
            name=f"tflite-{precision}",
            format="tflite",
            precision=precision,
            data=data,
            recipe={
                "tool": "none",
                "source": "registered .tflite, as given",
                # An integer boundary stays integer: clients send what the signature
                # says. Its scale and zero-point, for them to read:
                "boundary_quantization": {
                    n: q.as_dict() for n, q in inspection.quantization.items()
                },
            },
        )
