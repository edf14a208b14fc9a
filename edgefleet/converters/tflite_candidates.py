"""TFLite candidates for one profile, made with ai-edge-quantizer (no TensorFlow).

The float .tflite they start from comes from ``float_tflite_from_onnx``: the
hand-written dense lowering (``tflite_build``) for the MLPs it covers, otherwise onnx2tf
(``onnx2tflite``), with the profile's op set checked before either builds anything.

Recipes: weight-only int8, dynamic int8, static int8 (a8w8) and fp16 weights, plus
the float model. Static recipes give the model an integer input; for integer-only
accelerators the final DEQUANTIZE is removed too so the output stays integer. The
scale and zero-point of every integer boundary is recorded so the agent converts
at the boundary, and tensors keep the float model's names so the bundle's
signature is the same for every candidate.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.converters.calibration import calibration_hash
from edgefleet.converters.candidate import Candidate, IoQuantization
from edgefleet.converters.errors import ConversionError, UnsupportedOpError
from edgefleet.converters.worker_envs import installed_python
from edgefleet.profile import FirmwareProfile
from edgefleet.tensors import ModelSignature

logger = logging.getLogger(__name__)

_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 9: "int8"}


def _recipe(name: str) -> Any:
    from ai_edge_quantizer import recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if name == "int8-weight-only":
        return recipe.weight_only_wi8_afp32()
    if name == "int8-dynamic":
        return recipe.dynamic_wi8_afp32()
    if name == "int8-static-a8w8":
        return recipe.static_wi8_ai8()
    manager = recipe_manager.RecipeManager()
    manager.add_weight_only_config(
        regex=".*", operation_name="*", num_bits=16, algorithm_key=AlgorithmName.FLOAT_CASTING
    )
    return manager.get_quantization_recipe()


def _quantize(
    float_tflite: bytes, recipe_name: str, calibration: np.ndarray | None, input_name: str
) -> bytes:
    from ai_edge_quantizer import quantizer

    q = quantizer.Quantizer(bytearray(float_tflite), _recipe(recipe_name))
    result = None
    if q.need_calibration:
        if calibration is None:
            raise ConversionError(f"{recipe_name}: no calibration samples")
        rows = [{input_name: calibration[i : i + 1]} for i in range(len(calibration))]
        result = q.calibrate({"serving_default": rows})
    return bytes(q.quantize(result, enable_progress_report=False).quantized_model)


def inline_buffers(model: Any, data: bytes) -> None:
    """Move buffers stored after the flatbuffer (addressed by offset) into ``model``.

    ai-edge-quantizer writes weights past 256 KiB that way; repacking a ``ModelT``
    writes only the flatbuffer, so without this the repacked model points past its end.
    """
    for buffer in model.buffers or []:
        if buffer.offset > 1:
            buffer.data = np.frombuffer(data, np.uint8, buffer.size, buffer.offset).copy()
            buffer.offset, buffer.size = 0, 0


def finish_boundary(
    data: bytes, *, names: dict[str, str], integer_output: bool
) -> tuple[bytes, dict[str, IoQuantization], dict[str, str]]:
    """Rename boundary tensors back to the float names; optionally keep integer outputs.

    Returns the model, the quantization of each integer float-valued boundary, and the
    dtype of every boundary tensor.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))
    inline_buffers(model, data)
    graph = model.subgraphs[0]
    codes = [c.builtinCode for c in model.operatorCodes]
    if integer_output:
        for op in list(graph.operators):
            if codes[op.opcodeIndex] == s.BuiltinOperator.DEQUANTIZE and op.outputs[0] in list(
                graph.outputs
            ):
                dequantized, quantized = op.outputs[0], op.inputs[0]
                outputs = list(graph.outputs)
                outputs[outputs.index(dequantized)] = quantized
                graph.outputs = outputs
                graph.operators.remove(op)
                for consumer in graph.operators:  # e.g. ARG_MAX read the float scores
                    consumer.inputs = [
                        quantized if i == dequantized else i for i in consumer.inputs
                    ]
    for t in graph.tensors:
        name = t.name.decode() if isinstance(t.name, bytes) else t.name
        t.name = names.get(name, name)
    boundary: dict[str, IoQuantization] = {}
    dtypes: dict[str, str] = {}
    for index in [*graph.inputs, *graph.outputs]:
        t = graph.tensors[index]
        dtype = _TYPE_NAMES.get(t.type, str(t.type))
        dtypes[t.name] = dtype
        q = t.quantization
        if dtype in ("int8", "uint8") and q is not None and q.scale is not None and len(q.scale):
            boundary[t.name] = IoQuantization(dtype, float(q.scale[0]), int(q.zeroPoint[0]))
    for sig in model.signatureDefs or []:
        for m in [*sig.inputs, *sig.outputs]:
            tensor_name = graph.tensors[m.tensorIndex].name
            m.name = names.get(
                m.name.decode() if isinstance(m.name, bytes) else m.name, tensor_name
            )
        sig.outputs = [m for m in sig.outputs if m.tensorIndex in list(graph.outputs)]
        known = {m.tensorIndex for m in sig.outputs}
        for index in graph.outputs:
            if index not in known:
                m = s.TensorMapT()
                m.name, m.tensorIndex = graph.tensors[index].name, index
                sig.outputs.append(m)
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), boundary, dtypes


DENSE_LOWERING = "edgefleet dense lowering"
ONNX2TF = "onnx2tf"


def float_tflite_from_onnx(
    model_bytes: bytes, profile: FirmwareProfile, *, signature: ModelSignature
) -> tuple[bytes, str]:
    """The float .tflite for ``profile`` and the tool that made it.

    The dense lowering when it reads the graph (milliseconds, no TensorFlow); onnx2tf
    otherwise. Either way ops the profile cannot run are refused, named, first.
    """
    import onnx

    from edgefleet.converters.compat import check_tflite_ops
    from edgefleet.converters.onnx2tflite import (
        convert_onnx_to_tflite,
        precheck,
        tflite_builtin_ops,
    )
    from edgefleet.converters.tflite_build import build_float_tflite, dense_graph_from_onnx

    try:
        graph = dense_graph_from_onnx(model_bytes)
    except ConversionError as e:  # a form it does not read, named in the log
        logger.info("dense lowering does not apply (%s); converting with onnx2tf", e)
    else:
        check_tflite_ops(graph.tflite_ops(), profile)
        return build_float_tflite(graph), DENSE_LOWERING
    precheck(onnx.load_from_string(model_bytes), profile)
    shapes = {i.name: [d if d > 0 else 1 for d in i.shape] for i in signature.inputs}
    data = convert_onnx_to_tflite(model_bytes, input_shapes=shapes)
    check_tflite_ops(tflite_builtin_ops(data), profile)
    worker = installed_python(profile)
    if worker is not None:
        check_loads_in_worker(worker, data, profile, input_shape=next(iter(shapes.values())))
    return data, ONNX2TF


_MISSING_OP = re.compile(r"opcode '(\w+)' version '(\d+)'")


def check_loads_in_worker(
    python: Path, data: bytes, profile: FirmwareProfile, *, input_shape: list[int]
) -> None:
    """Refuse op versions the profile's own (older) runtime does not have, naming them.

    The converter targets today's LiteRT; tflite-runtime 2.14 knows fewer op versions
    and says which one it lacks when it loads the model, so load it once there.
    """
    from edgefleet.converters.runner import WORKER_SCRIPT

    with tempfile.TemporaryDirectory(prefix="edgefleet-load-check-") as name:
        work = Path(name)
        (work / "model.tflite").write_bytes(data)
        np.save(work / "x.npy", np.zeros(input_shape, np.float32), allow_pickle=False)
        (work / "request.json").write_text(json.dumps({"io_quantization": {}, "warmup": 0}))
        done = subprocess.run(
            [str(python), "-I", str(WORKER_SCRIPT), str(work)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    if done.returncode == 0:
        return
    runtime = f"{profile.runtime.name} {profile.runtime.version}"
    missing = sorted({f"{op} v{version}" for op, version in _MISSING_OP.findall(done.stderr)})
    if missing:
        raise UnsupportedOpError(missing, runtime=runtime)
    lines = done.stderr.strip().splitlines() or ["no output"]
    raise ConversionError(f"{runtime} cannot load the converted model: {lines[-1]}")


def tflite_candidates(
    float_tflite: bytes,
    profile: FirmwareProfile,
    *,
    input_name: str,
    output_names: list[str],
    calibration: np.ndarray | None,
    float_tool: str = DENSE_LOWERING,
) -> Iterator[Candidate | ConversionError]:
    """Every TFLite candidate the profile allows; the float model last as the fallback."""
    integer_only = bool(profile.tflite and profile.tflite.integer_only)
    recipes: list[tuple[str, str]] = []
    if "int8" in profile.precisions:
        recipes.append(("int8-static-a8w8", "int8"))
        if not integer_only:
            recipes += [("int8-dynamic", "int8"), ("int8-weight-only", "int8")]
    if "fp16" in profile.precisions:
        recipes.append(("fp16-weights", "fp16"))
    renames = {f"{n}_dequant": n for n in output_names} | {f"{input_name}_quantized": input_name}
    for name, precision in recipes:
        try:
            data = _quantize(float_tflite, name, calibration, input_name)
            data, boundary, dtypes = finish_boundary(
                data, names=renames, integer_output=integer_only
            )
        except Exception as e:  # the quantizer raises many kinds of errors
            yield ConversionError(f"{name}: {e}")
            continue
        recipe: dict[str, Any] = {
            "tool": "ai_edge_quantizer",
            "recipe": name,
            "boundary_dtypes": dtypes,
        }
        if calibration is not None and name == "int8-static-a8w8":
            recipe |= {
                "calibration_sha256": calibration_hash(calibration),
                "calibration_samples": len(calibration),
            }
        yield Candidate(
            name=f"tflite-{name}",
            format="tflite",
            precision=precision,
            data=data,
            recipe=recipe,
            io_quantization=boundary,
        )
    if "fp32" in profile.precisions:
        yield Candidate(
            name="tflite-fp32",
            format="tflite",
            precision="fp32",
            data=float_tflite,
            recipe={"tool": float_tool},
        )
