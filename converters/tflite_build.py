"""A float .tflite built from a dense ONNX graph, without TensorFlow.

Devices on TFLite need a float TFLite model to quantize from, and the project must
not download one or depend on TensorFlow. Multilayer perceptrons (what the digits
model and most tabular models are) lower directly: MatMul/Gemm + Add (+ Relu /
Sigmoid / Tanh) become FULLY_CONNECTED, Softmax stays SOFTMAX, and the label
output becomes ARG_MAX. The flatbuffer is written with the schema classes that
ship in ai-edge-litert. Any other ONNX op is refused, naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from converters.errors import ConversionError, UnsupportedOpError

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
class DenseGraph:
    input_name: str
    n_features: int
    layers: list[DenseLayer]
    softmax: bool
    scores_name: str  # the float output, e.g. "probabilities"
    label_name: str | None  # the int64 top-1 output, e.g. "label"
    label_classes: np.ndarray | None = None  # class ids the label output maps indices to

    def tflite_ops(self) -> set[str]:
        ops = {"FULLY_CONNECTED"} | {a for layer in self.layers if (a := layer.activation)}
        ops -= {"RELU"}  # fused into FULLY_CONNECTED
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
            not in {"MatMul", "Gemm", "Add", "Softmax", "ArgMax", "ArrayFeatureExtractor"}
        }
    )
    if unsupported:
        raise UnsupportedOpError(unsupported, runtime="the ONNX->TFLite dense lowering")
    layers: list[DenseLayer] = []
    softmax = False
    classes: np.ndarray | None = None
    for node in graph.node:
        if node.op_type == "MatMul":
            weight = consts.get(node.input[1])
            if weight is None:
                raise ConversionError(f"MatMul {node.name}: weights must be constant")
            layers.append(
                DenseLayer(weight.T.astype(np.float32), np.zeros(weight.shape[1], np.float32), None)
            )
        elif node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
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
            layers[-1].activation = _ACTIVATIONS[node.op_type]
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
    return DenseGraph(
        inputs[0].name,
        int(dims[1].dim_value),
        layers,
        softmax,
        scores[0],
        labels[0] if labels else None,
        classes,
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
        name = graph.scores_name if last else f"dense{i}/out"
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
            act = tensor(
                f"dense{i}/act", [1, out_dim], s.TensorType.FLOAT32, signature=[-1, out_dim]
            )
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
