"""ONNX to float .tflite for real networks, through onnx2tf in a worker environment.

Why onnx2tf (PINTO0309/onnx2tf): it is the maintained ONNX→TFLite converter (releases
every few weeks, ~200 ONNX ops, NCHW→NHWC rewriting with transposes only at the
boundary) and goes through TensorFlow's own TFLite converter, so op versions are what
LiteRT expects. The alternatives do not fit: onnx-tf is archived and stuck on old
TensorFlow; nobuco and ai-edge-torch start from PyTorch, which the user's ONNX model no
longer is; tinynn converts PyTorch too. onnx2tf needs TensorFlow (numpy < 2, ~1.8 GB),
so it runs in its own virtualenv (``worker_envs.ONNX2TF_ENV``, created by ``make setup``)
through ``onnx2tf_worker.py``; the control plane never imports TensorFlow.

Only the float32 model is made here: the integer and fp16 candidates come from it with
ai-edge-quantizer (``tflite_candidates``), the same path a .tflite a user brings takes.

Ops a profile cannot run are named before anything is converted: ``precheck`` maps
each ONNX op to the TFLite builtins onnx2tf lowers it to (``_LOWERING``) and refuses
ops whose builtins the profile lacks. Ops not in that table are left to onnx2tf; the
converted model's real builtins are checked again (``tflite_builtin_ops``) before any
candidate is made.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
from onnx import numpy_helper

from edgefleet.converters.errors import ConversionError, UnsupportedOpError
from edgefleet.converters.worker_envs import ONNX2TF_ENV, converter_python
from edgefleet.profile import FirmwareProfile

logger = logging.getLogger(__name__)

_WORKER = Path(__file__).with_name("onnx2tf_worker.py")
_TIMEOUT_S = 600
_CONVERTER = f"the ONNX→TFLite converter (onnx2tf {ONNX2TF_ENV.version})"
_NO_LOWERING = re.compile(r"No module named 'onnx2tf\.ops\.(\w+)'")

# ONNX op -> TFLite builtins onnx2tf emits for it (float32; activations may fuse away,
# but are listed so the precheck is never more lenient than the converted model).
_LOWERING: dict[str, frozenset[str]] = {
    name: frozenset(ops)
    for name, ops in {
        "Add": {"ADD"},
        "ArgMax": {"ARG_MAX"},
        "AveragePool": {"AVERAGE_POOL_2D", "PAD"},
        "BatchNormalization": {"MUL", "ADD"},
        "Cast": {"CAST"},
        "Concat": {"CONCATENATION"},
        "Constant": set(),
        "Div": {"DIV", "MUL"},
        "Dropout": set(),
        "Flatten": {"RESHAPE"},
        "Gemm": {"FULLY_CONNECTED"},
        "GlobalAveragePool": {"MEAN"},
        "GlobalMaxPool": {"REDUCE_MAX"},
        "Identity": set(),
        "LeakyRelu": {"LEAKY_RELU"},
        "MatMul": {"FULLY_CONNECTED"},
        "MaxPool": {"MAX_POOL_2D", "PAD"},
        "Mul": {"MUL"},
        "Pad": {"PAD"},
        "ReduceMean": {"MEAN"},
        "Relu": {"RELU"},
        "Reshape": {"RESHAPE"},
        "Sigmoid": {"LOGISTIC"},
        "Softmax": {"SOFTMAX"},
        "Squeeze": {"RESHAPE"},
        "Sub": {"SUB"},
        "Tanh": {"TANH"},
        "Transpose": {"TRANSPOSE"},
        "Unsqueeze": {"RESHAPE"},
    }.items()
}


def _ints(node: onnx.NodeProto, name: str) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == name), [])


def _conv_lowering(node: onnx.NodeProto, weights: Mapping[str, Sequence[int]]) -> set[str]:
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    pads, strides = _ints(node, "pads"), _ints(node, "strides")
    shape = weights.get(node.input[1]) if len(node.input) > 1 else None
    kernel = _ints(node, "kernel_shape") or (list(shape[2:]) if shape else [])
    half = [(k - 1) // 2 for k in kernel]
    same = len(pads) == 2 * len(kernel) and pads == half + half and all(k % 2 for k in kernel)
    # TensorFlow's SAME pads the low side less at stride 2: only stride 1 keeps it a fused pad.
    ops = {"PAD"} if any(pads) and not (same and all(s == 1 for s in strides)) else set()
    if group == 1:
        return ops | {"CONV_2D"}
    if shape is not None and shape[1] == 1:  # one input channel per group: depthwise
        return ops | {"DEPTHWISE_CONV_2D"}
    return ops | {"SPLIT", "CONV_2D", "CONCATENATION"}  # grouped: split, convolve, concat


def _clip_lowering(node: onnx.NodeProto, constants: Mapping[str, float]) -> set[str]:
    """Clip(0, 6) is RELU6 and Clip(0, inf) RELU (both usually fused); others min/max."""
    bounds: list[float | str | None] = [None, None]  # None: no bound; "dynamic": computed
    for i, name in enumerate(list(node.input[1:3])):
        if name:
            bounds[i] = constants.get(name, "dynamic")
    for a in node.attribute:  # opset < 11 keeps the bounds as attributes
        if a.name in ("min", "max"):
            bounds[1 if a.name == "max" else 0] = a.f
    known: dict[tuple[float | str | None, ...], str] = {
        (0.0, 6.0): "RELU6",
        (0.0, None): "RELU",
        (-1.0, 1.0): "RELU_N1_TO_1",
    }
    op = known.get(tuple(bounds))
    return {op} if op else {"MINIMUM", "MAXIMUM"}


def required_builtins(model: onnx.ModelProto) -> tuple[dict[str, set[str]], set[str]]:
    """TFLite builtins each known ONNX op of ``model`` becomes, and the ops not in the table.

    Ops outside the table are left to the converter; its output is checked again.
    """
    weights = {init.name: list(init.dims) for init in model.graph.initializer}
    scalars = {
        init.name: float(numpy_helper.to_array(init).reshape(-1)[0])
        for init in model.graph.initializer
        if not init.dims or list(init.dims) == [1]
    }
    needed: dict[str, set[str]] = {}
    unknown: set[str] = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError([f"{node.domain}.{node.op_type}"], runtime=_CONVERTER)
        if node.op_type == "Conv":
            needed.setdefault("Conv", set()).update(_conv_lowering(node, weights))
        elif node.op_type == "Clip":
            needed.setdefault("Clip", set()).update(_clip_lowering(node, scalars))
        elif node.op_type in _LOWERING:
            needed.setdefault(node.op_type, set()).update(_LOWERING[node.op_type])
        else:
            unknown.add(node.op_type)
    spatial = any(len(v.type.tensor_type.shape.dim) >= 3 for v in model.graph.input)
    if spatial and needed.keys() & {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool"}:
        needed["(NCHW input)"] = {"TRANSPOSE"}  # NCHW at the boundary, NHWC inside
    return needed, unknown


def precheck(model: onnx.ModelProto, profile: FirmwareProfile) -> None:
    """Refuse, naming them, the ONNX ops whose TFLite lowering ``profile`` cannot run."""
    if profile.tflite is None:
        raise ConversionError(f"profile {profile.name} has no TFLite op set")
    allowed = set(profile.tflite.builtin_ops)
    needed, unknown = required_builtins(model)
    refused = sorted(
        f"{op} (needs {', '.join(sorted(builtins - allowed))})"
        for op, builtins in needed.items()
        if builtins - allowed
    )
    if refused:
        raise UnsupportedOpError(
            refused, runtime=f"{profile.runtime.name} {profile.runtime.version}"
        )
    if unknown:
        logger.info("ops left to the converter to lower: %s", ", ".join(sorted(unknown)))


def tflite_builtin_ops(data: bytes) -> set[str]:
    """The builtin op names a .tflite uses."""
    from ai_edge_litert import schema_py_generated as s

    names = {v: k for k, v in vars(s.BuiltinOperator).items() if not k.startswith("_")}
    model = s.Model.GetRootAs(data, 0)
    ops = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        ops.add(names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM"))
    return ops


def name_boundary(data: bytes, *, output_order: Sequence[str]) -> bytes:
    """Boundary tensors named as in ONNX (from the signature), outputs in ONNX's order."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))
    graph = model.subgraphs[0]
    for sig in model.signatureDefs or []:
        for m in [*sig.inputs, *sig.outputs]:
            name = m.name.decode() if isinstance(m.name, bytes) else m.name
            graph.tensors[m.tensorIndex].name = name
    by_name = {
        (
            graph.tensors[i].name.decode()
            if isinstance(graph.tensors[i].name, bytes)
            else graph.tensors[i].name
        ): i
        for i in graph.outputs
    }
    if set(by_name) == set(output_order):
        graph.outputs = [by_name[n] for n in output_order]
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def convert_onnx_to_tflite(
    onnx_bytes: bytes, *, input_shapes: Mapping[str, Sequence[int]], workdir: Path | None = None
) -> bytes:
    """The float32 .tflite of ``onnx_bytes``, batch and every other dim fixed as given.

    Inputs keep the ONNX layout (an NCHW image stays NCHW); boundary tensors keep the
    ONNX names, outputs the ONNX order. ``ConversionError`` naming the cause on failure.
    """
    python = converter_python()
    if python is None:
        raise ConversionError(
            "the ONNX→TFLite converter is not installed "
            "(python -m edgefleet.converters.worker_envs install)"
        )
    dynamic = {n: list(s) for n, s in input_shapes.items() if any(d <= 0 for d in s)}
    if dynamic:
        raise ConversionError(f"input shapes must be fixed for TFLite: {dynamic}")
    with tempfile.TemporaryDirectory(dir=workdir, prefix="onnx2tf-") as tmp:
        work = Path(tmp)
        (work / "model.onnx").write_bytes(onnx_bytes)
        request = {"input_shapes": {n: list(s) for n, s in input_shapes.items()}}
        (work / "request.json").write_text(json.dumps(request))
        started = time.monotonic()
        try:
            done = subprocess.run(
                [str(python), "-I", str(_WORKER), str(work)],  # its own packages only
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=False,
                env={**os.environ, "TMPDIR": str(work)},  # its scratch files go with the rest
            )
        except subprocess.TimeoutExpired as e:
            raise ConversionError(f"onnx2tf did not finish within {_TIMEOUT_S} s") from e
        result = work / "out" / "model_float32.tflite"
        if done.returncode != 0 or not result.exists():
            error = work / "error.txt"
            reason = error.read_text() if error.exists() else done.stderr.strip()[-2000:]
            missing = _NO_LOWERING.search(reason)
            if missing:  # onnx2tf has one module per ONNX op it can convert
                raise UnsupportedOpError([missing.group(1)], runtime=_CONVERTER)
            raise ConversionError(f"onnx2tf could not convert the model: {reason}")
        data = result.read_bytes()
    logger.info("onnx2tf converted size=%d seconds=%.1f", len(data), time.monotonic() - started)
    outputs = [o.name for o in onnx.load_from_string(onnx_bytes).graph.output]
    return name_boundary(data, output_order=outputs)
