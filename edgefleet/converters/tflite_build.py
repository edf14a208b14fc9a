"""A float .tflite built from a dense ONNX graph, without TensorFlow.

Devices on TFLite need a float TFLite model to quantize from, and the project must
not download one or depend on TensorFlow. Multilayer perceptrons (what the digits
model and most tabular models are) lower directly: MatMul/Gemm + Add (+ Relu /
Sigmoid / Tanh) become FULLY_CONNECTED, Softmax stays SOFTMAX, and the label
output becomes ARG_MAX. A small convolutional front is lowered too: the flat input
reshaped to a single-channel image, one Conv (stride 1, "same" or no padding,
+ Relu) and an optional MaxPool become RESHAPE, CONV_2D and MAX_POOL_2D in TFLite's
NHWC layout; the first dense layer's inputs are reordered from ONNX's NCHW flatten
order to NHWC. The flatbuffer is written with the schema classes that ship in
ai-edge-litert. Any other ONNX op or form is refused, naming it.

Why this module stays over 400 lines: it is one lowering, ONNX graph to TFLite
flatbuffer, whose two halves (reading the dense graph, writing the flatbuffer) share
the ``DenseGraph`` intermediate form and the op and layout conventions (NCHW to NHWC)
between them; ``build_float_tflite`` alone is one flatbuffer written in sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgefleet.converters.errors import ConversionError, UnsupportedOpError

logger = logging.getLogger(__name__)

# ONNX ops that carry no computation in the dense lowering (casts, copies, the label lookup).
_PASS_THROUGH = {"Cast", "Identity", "Reshape", "Flatten"}
_ACTIVATIONS = {"Relu": "RELU", "Sigmoid": "LOGISTIC", "Tanh": "TANH"}


@dataclass
class DenseLayer:
    weight: np.ndarray  # float32 [out, in] (TFLite FULLY_CONNECTED layout)
    bias: np.ndarray  # float32 [out]
    activation: str | None  # RELU | LOGISTIC | TANH | None


@dataclass
class ConvStage:
    """Reshape to one image, Conv2D (+ activation), optional MaxPool: before the dense layers."""

    height: int
    width: int
    weight: np.ndarray  # float32 [out_channels, kh, kw, 1] (TFLite CONV_2D OHWI)
    bias: np.ndarray  # float32 [out_channels]
    same_padding: bool
    activation: str | None = None
    pool: int | None = None  # MaxPool kernel = stride

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of what the dense layers receive."""
        kh, kw = self.weight.shape[1:3]
        h = self.height if self.same_padding else self.height - kh + 1
        w = self.width if self.same_padding else self.width - kw + 1
        if self.pool:
            h, w = h // self.pool, w // self.pool
        return h, w, int(self.weight.shape[0])


@dataclass
class DenseGraph:
    input_name: str
    n_features: int
    layers: list[DenseLayer]
    softmax: bool
    scores_name: str  # the float output, e.g. "probabilities"
    label_name: str | None  # the int64 top-1 output, e.g. "label"
    label_classes: np.ndarray | None = None  # class ids the label output maps indices to
    conv: ConvStage | None = None

    def tflite_ops(self) -> set[str]:
        ops = {"FULLY_CONNECTED"} | {a for layer in self.layers if (a := layer.activation)}
        if self.conv is not None:
            ops |= {"RESHAPE", "CONV_2D"} | ({"MAX_POOL_2D"} if self.conv.pool else set())
            if self.conv.activation:
                ops.add(self.conv.activation)
        ops -= {"RELU"}  # fused into FULLY_CONNECTED / CONV_2D
        if self.softmax:
            ops.add("SOFTMAX")
        if self.label_name:
            ops.add("ARG_MAX")
        return ops


def dense_graph_from_onnx(model_bytes: bytes) -> DenseGraph:
    """Read an MLP's layers out of its ONNX graph; ``UnsupportedOpError`` for anything else."""
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in consts]
    if len(inputs) != 1:
        raise ConversionError("the dense lowering needs exactly one input")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise ConversionError("the dense lowering needs a [batch, features] input")
    unsupported = sorted(
        {
            n.op_type
            for n in graph.node
            if n.op_type not in _PASS_THROUGH | set(_ACTIVATIONS)
            and n.op_type
            not in {
                "MatMul",
                "Gemm",
                "Add",
                "Softmax",
                "ArgMax",
                "ArrayFeatureExtractor",
                "Conv",
                "MaxPool",
            }
        }
    )
    if unsupported:
        raise UnsupportedOpError(unsupported, runtime="the ONNX->TFLite dense lowering")
    layers: list[DenseLayer] = []
    softmax = False
    classes: np.ndarray | None = None
    conv: ConvStage | None = None
    image: tuple[int, ...] | None = None
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Reshape" and not layers and conv is None:
            shape = consts.get(node.input[1])
            if shape is not None and len(shape) == 4:
                image = tuple(int(d) for d in shape[1:])
        elif node.op_type == "Conv":
            conv = _conv_stage(node.name, attrs, consts, node.input, image, layers, conv)
        elif node.op_type == "MaxPool":
            if conv is None or layers or conv.pool:
                raise ConversionError(f"MaxPool {node.name}: only one, right after the Conv")
            kernel, strides = list(attrs.get("kernel_shape", [])), list(attrs.get("strides", []))
            if len(set(kernel)) != 1 or kernel != strides or any(attrs.get("pads", [0])):
                raise ConversionError(f"MaxPool {node.name}: only square, unpadded, stride = size")
            conv.pool = int(kernel[0])
        elif node.op_type == "MatMul":
            weight = consts.get(node.input[1])
            if weight is None:
                raise ConversionError(f"MatMul {node.name}: weights must be constant")
            layers.append(
                DenseLayer(weight.T.astype(np.float32), np.zeros(weight.shape[1], np.float32), None)
            )
        elif node.op_type == "Gemm":
            weight = consts[node.input[1]]
            weight = weight if attrs.get("transB", 0) else weight.T
            bias: np.ndarray = (
                consts[node.input[2]] if len(node.input) > 2 else np.zeros(weight.shape[0])
            )
            alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
            layers.append(
                DenseLayer(
                    (alpha * weight).astype(np.float32),
                    (beta * bias).astype(np.float32).reshape(-1),
                    None,
                )
            )
        elif node.op_type == "Add":
            added = consts.get(node.input[1], consts.get(node.input[0]))
            if added is None or not layers:
                raise ConversionError(f"Add {node.name}: only a bias after a dense layer")
            layers[-1].bias = (layers[-1].bias + added.reshape(-1)).astype(np.float32)
        elif node.op_type in _ACTIVATIONS:
            if layers:
                layers[-1].activation = _ACTIVATIONS[node.op_type]
            elif conv is not None:
                conv.activation = _ACTIVATIONS[node.op_type]
            else:
                raise ConversionError(f"{node.op_type} {node.name}: needs a layer before it")
        elif node.op_type == "Softmax":
            softmax = True
        elif node.op_type == "ArrayFeatureExtractor":
            classes = consts.get(node.input[0])
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    scores = [n for n, t in outputs.items() if t == onnx.TensorProto.FLOAT]
    labels = [n for n, t in outputs.items() if t == onnx.TensorProto.INT64]
    if len(scores) != 1 or not layers:
        raise ConversionError("the dense lowering needs one float output after dense layers")
    if classes is not None and not np.array_equal(classes.reshape(-1), np.arange(classes.size)):
        raise ConversionError("label classes other than 0..n-1 are not supported")
    if conv is not None:
        h, w, c = conv.out_shape
        first = layers[0].weight
        if first.shape[1] != h * w * c:
            raise ConversionError(
                f"dense layer takes {first.shape[1]} inputs, conv gives {h * w * c}"
            )
        # ONNX flattens [c, h, w]; TFLite's NHWC tensor flattens [h, w, c].
        layers[0].weight = np.ascontiguousarray(
            first.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(first.shape[0], -1)
        )
    return DenseGraph(
        inputs[0].name,
        int(dims[1].dim_value),
        layers,
        softmax,
        scores[0],
        labels[0] if labels else None,
        classes,
        conv,
    )


def _conv_stage(
    name: str,
    attrs: dict[str, Any],
    consts: dict[str, np.ndarray],
    inputs: Sequence[str],
    image: tuple[int, ...] | None,
    layers: list[DenseLayer],
    existing: ConvStage | None,
) -> ConvStage:
    """The single Conv the lowering supports, or ``ConversionError`` saying what is not."""
    if existing is not None or layers:
        raise ConversionError(f"Conv {name}: only one, before the dense layers")
    if image is None or image[0] != 1:
        raise ConversionError(f"Conv {name}: needs the input reshaped to a 1-channel image")
    weight = consts.get(inputs[1])
    if weight is None or weight.ndim != 4 or weight.shape[1] != 1:
        raise ConversionError(f"Conv {name}: needs constant [out, 1, kh, kw] weights")
    kh, kw = weight.shape[2:]
    if (
        any(s != 1 for s in attrs.get("strides", [1, 1]))
        or any(d != 1 for d in attrs.get("dilations", [1, 1]))
        or attrs.get("group", 1) != 1
    ):
        raise ConversionError(f"Conv {name}: only stride 1, no dilation, one group")
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    same = pads == [kh // 2, kw // 2, kh // 2, kw // 2] and kh % 2 == 1 and kw % 2 == 1
    if not same and any(pads):
        raise ConversionError(f"Conv {name}: only 'same' or no padding")
    bias = consts.get(inputs[2]) if len(inputs) > 2 else None
    return ConvStage(
        height=image[1],
        width=image[2],
        weight=np.ascontiguousarray(weight.transpose(0, 2, 3, 1)).astype(np.float32),
        bias=(np.zeros(weight.shape[0]) if bias is None else bias).astype(np.float32),
        same_padding=same,
    )


def build_float_tflite(graph: DenseGraph) -> bytes:
    """Serialise ``graph`` as a float32 TFLite flatbuffer with a serving signature."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    buffers: list[s.BufferT] = [s.BufferT()]  # buffer 0 is the empty sentinel
    tensors: list[s.TensorT] = []
    op_codes: list[int] = []
    operators: list[s.OperatorT] = []

    def tensor(
        name: str,
        shape: list[int],
        dtype: int,
        data: np.ndarray | None = None,
        signature: list[int] | None = None,
    ) -> int:
        t = s.TensorT()
        t.name, t.shape, t.type = name, shape, dtype
        if signature is not None:
            t.shapeSignature = signature
        if data is None:
            t.buffer = 0
        else:
            buffer = s.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            buffers.append(buffer)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    def operator(
        code: int,
        inputs: list[int],
        outputs: list[int],
        options_type: int = 0,
        options: object = None,
    ) -> None:
        if code not in op_codes:
            op_codes.append(code)
        op = s.OperatorT()
        op.opcodeIndex = op_codes.index(code)
        op.inputs, op.outputs = inputs, outputs
        op.builtinOptionsType, op.builtinOptions = options_type, options
        operators.append(op)

    fused = {"RELU": s.ActivationFunctionType.RELU}
    current = tensor(
        graph.input_name,
        [1, graph.n_features],
        s.TensorType.FLOAT32,
        signature=[-1, graph.n_features],
    )
    conv = graph.conv
    if conv is not None:

        def reshape(source: int, shape: list[int], name: str) -> int:
            new_shape = tensor(f"{name}/shape", [len(shape)], s.TensorType.INT32,
                               np.array([-1, *shape[1:]], np.int32))  # fmt: skip
            out = tensor(name, shape, s.TensorType.FLOAT32, signature=[-1, *shape[1:]])
            options = s.ReshapeOptionsT()
            options.newShape = [-1, *shape[1:]]
            operator(s.BuiltinOperator.RESHAPE, [source, new_shape], [out],
                     s.BuiltinOptions.ReshapeOptions, options)  # fmt: skip
            return out

        # One channel: NCHW and NHWC hold the same bytes, so a reshape is the layout change.
        current = reshape(current, [1, conv.height, conv.width, 1], "image")
        channels = conv.weight.shape[0]
        kernel = tensor("conv/weight", list(conv.weight.shape), s.TensorType.FLOAT32, conv.weight)
        bias = tensor("conv/bias", [channels], s.TensorType.FLOAT32, conv.bias)
        h = conv.height if conv.same_padding else conv.height - conv.weight.shape[1] + 1
        w = conv.width if conv.same_padding else conv.width - conv.weight.shape[2] + 1
        out = tensor("conv/out", [1, h, w, channels], s.TensorType.FLOAT32,
                     signature=[-1, h, w, channels])  # fmt: skip
        options = s.Conv2DOptionsT()
        options.padding = s.Padding.SAME if conv.same_padding else s.Padding.VALID
        options.strideW = options.strideH = 1
        options.dilationWFactor = options.dilationHFactor = 1
        options.fusedActivationFunction = fused.get(conv.activation or "", 0)
        operator(s.BuiltinOperator.CONV_2D, [current, kernel, bias], [out],
                 s.BuiltinOptions.Conv2DOptions, options)  # fmt: skip
        current = out
        if conv.activation and conv.activation not in fused:
            act = tensor("conv/act", [1, h, w, channels], s.TensorType.FLOAT32,
                         signature=[-1, h, w, channels])  # fmt: skip
            operator(getattr(s.BuiltinOperator, conv.activation), [current], [act])
            current = act
        if conv.pool:
            h, w = h // conv.pool, w // conv.pool
            pooled = tensor("pool/out", [1, h, w, channels], s.TensorType.FLOAT32,
                            signature=[-1, h, w, channels])  # fmt: skip
            options = s.Pool2DOptionsT()
            options.padding = s.Padding.VALID
            options.strideW = options.strideH = conv.pool
            options.filterWidth = options.filterHeight = conv.pool
            operator(s.BuiltinOperator.MAX_POOL_2D, [current], [pooled],
                     s.BuiltinOptions.Pool2DOptions, options)  # fmt: skip
            current = pooled
        current = reshape(current, [1, h * w * channels], "flat")
    for i, layer in enumerate(graph.layers):
        out_dim = layer.weight.shape[0]
        w = tensor(
            f"dense{i}/weight",
            list(layer.weight.shape),
            s.TensorType.FLOAT32,
            layer.weight.astype(np.float32),
        )
        b = tensor(f"dense{i}/bias", [out_dim], s.TensorType.FLOAT32, layer.bias.astype(np.float32))
        last = i == len(graph.layers) - 1 and not graph.softmax
        separate_act = bool(layer.activation) and layer.activation not in fused
        # The model's output is the last tensor: the activation's when it is its own op.
        name = graph.scores_name if last and not separate_act else f"dense{i}/out"
        out = tensor(name, [1, out_dim], s.TensorType.FLOAT32, signature=[-1, out_dim])
        options = s.FullyConnectedOptionsT()
        options.fusedActivationFunction = fused.get(layer.activation or "", 0)
        operator(
            s.BuiltinOperator.FULLY_CONNECTED,
            [current, w, b],
            [out],
            s.BuiltinOptions.FullyConnectedOptions,
            options,
        )
        current = out
        if layer.activation and layer.activation not in fused:
            act_name = graph.scores_name if last else f"dense{i}/act"
            act = tensor(act_name, [1, out_dim], s.TensorType.FLOAT32, signature=[-1, out_dim])
            operator(getattr(s.BuiltinOperator, layer.activation), [current], [act])
            current = act
    n_classes = graph.layers[-1].weight.shape[0]
    if graph.softmax:
        probs = tensor(
            graph.scores_name, [1, n_classes], s.TensorType.FLOAT32, signature=[-1, n_classes]
        )
        options = s.SoftmaxOptionsT()
        options.beta = 1.0
        operator(
            s.BuiltinOperator.SOFTMAX, [current], [probs], s.BuiltinOptions.SoftmaxOptions, options
        )
        current = probs
    scores = current
    outputs = [scores]
    if graph.label_name:
        axis = tensor("argmax/axis", [1], s.TensorType.INT32, np.array([1], np.int32))
        label = tensor(graph.label_name, [1], s.TensorType.INT64, signature=[-1])
        options = s.ArgMaxOptionsT()
        options.outputType = s.TensorType.INT64
        operator(
            s.BuiltinOperator.ARG_MAX,
            [scores, axis],
            [label],
            s.BuiltinOptions.ArgMaxOptions,
            options,
        )
        outputs = [label, scores]

    subgraph = s.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs = tensors, [0], outputs
    subgraph.operators, subgraph.name = operators, "main"
    signature = s.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0

    def tensor_map(index: int) -> s.TensorMapT:
        m = s.TensorMapT()
        m.name, m.tensorIndex = tensors[index].name, index
        return m

    signature.inputs = [tensor_map(0)]
    signature.outputs = [tensor_map(i) for i in outputs]
    model = s.ModelT()
    model.version, model.description = 3, "edgefleet dense lowering"
    model.buffers, model.subgraphs, model.signatureDefs = buffers, [subgraph], [signature]
    codes = []
    for code in op_codes:
        c = s.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        codes.append(c)
    model.operatorCodes = codes
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def onnx_to_float_tflite(model_bytes: bytes) -> tuple[bytes, DenseGraph]:
    """The float .tflite of a dense ONNX model, and the graph it was lowered from."""
    graph = dense_graph_from_onnx(model_bytes)
    return build_float_tflite(graph), graph
