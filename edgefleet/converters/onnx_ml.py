"""Classic-ML ONNX (the ``ai.onnx.ml`` domain) made servable as tensors.

scikit-learn models exported with skl2onnx's defaults end in a ``ZipMap``: the class
probabilities leave the graph as ``seq(map(label, float))``, a type neither the Open
Inference Protocol nor the gate can carry. ``strip_zipmap`` replaces a trailing
ZipMap with an Identity so the same output name carries the ``float [batch, classes]``
tensor ZipMap read, and returns the class labels ZipMap held (its
``classlabels_int64s`` or ``classlabels_strings``) so they can travel in the bundle's
manifest: column ``i`` of the scores is ``labels[i]``. A label output of strings
(classifiers trained on string classes) is dropped for the same reason; its value is
the label of the highest score. A ZipMap whose output feeds other nodes is refused,
naming it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from edgefleet.converters.errors import ConversionError, UnsupportedOpError

logger = logging.getLogger(__name__)

ML_DOMAIN = "ai.onnx.ml"

Labels = list[int] | list[str]


@dataclass(frozen=True)
class MlRewrite:
    """The rewritten model and what the rewrite recorded."""

    data: bytes
    # Scores output name -> the class label of each column.
    labels: dict[str, Labels] = field(default_factory=dict)
    dropped_outputs: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.labels or self.dropped_outputs)


# ONNX-ML ops that look up, scale or encode around a model whose computation is in
# standard ops: skl2onnx's MLP maps argmax to its classes with ArrayFeatureExtractor, a
# pipeline may start with a Scaler. Such graphs still quantize. Any other ONNX-ML op
# (LinearClassifier, TreeEnsemble*, SVM*, ...) is the model itself.
_AUXILIARY_OPS = frozenset(
    {
        "ArrayFeatureExtractor",
        "Binarizer",
        "CastMap",
        "FeatureVectorizer",
        "Imputer",
        "LabelEncoder",
        "Normalizer",
        "OneHotEncoder",
        "Scaler",
        "ZipMap",
    }
)
# What the ONNX->TFLite lowering itself turns into TFLite ops (the label lookup).
_LOWERED_OPS = frozenset({"ArrayFeatureExtractor"})


def onnx_ml_ops(model: onnx.ModelProto) -> list[str]:
    """The ONNX-ML (``ai.onnx.ml``) op types the graph uses, sorted."""
    return sorted({node.op_type for node in model.graph.node if node.domain == ML_DOMAIN})


def ml_estimator_ops(model: onnx.ModelProto) -> list[str]:
    """The ONNX-ML ops that compute the model (not just look up or scale), sorted: a graph
    with any is a classic-ML model that quantizers and TFLite converters cannot apply to."""
    return [op for op in onnx_ml_ops(model) if op not in _AUXILIARY_OPS]


def _labels(node: onnx.NodeProto) -> Labels:
    for attribute in node.attribute:
        if attribute.name == "classlabels_int64s" and attribute.ints:
            return [int(i) for i in attribute.ints]
        if attribute.name == "classlabels_strings" and attribute.strings:
            return [s.decode() for s in attribute.strings]
    raise ConversionError(f"ZipMap {node.name or node.output[0]!r} has no class labels")


def _batch_dim(model: onnx.ModelProto) -> onnx.TensorShapeProto.Dimension:
    """The first input's batch dimension, so the scores output shares it."""
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers and value.type.tensor_type.shape.dim:
            return value.type.tensor_type.shape.dim[0]
    return onnx.TensorShapeProto.Dimension()


def strip_zipmap(model_bytes: bytes) -> MlRewrite:
    """``model_bytes`` with every trailing ZipMap replaced by its float scores tensor.

    Returns the model unchanged (the same bytes) when it has no ZipMap.

    Raises:
        ConversionError: A ZipMap feeds other nodes, or has no class labels.
    """
    try:
        model = onnx.load_from_string(model_bytes)
    except (DecodeError, ValueError) as e:
        raise ConversionError(f"not a valid ONNX model: {e}") from e
    zipmaps = [n for n in model.graph.node if n.op_type == "ZipMap" and n.domain == ML_DOMAIN]
    if not zipmaps:
        return MlRewrite(data=model_bytes)
    outputs = {o.name: o for o in model.graph.output}
    consumed = {name for node in model.graph.node for name in node.input}
    labels: dict[str, Labels] = {}
    for node in zipmaps:
        name = node.output[0]
        if name not in outputs or name in consumed:
            raise ConversionError(
                f"ZipMap {node.name or name!r} is not the last op of its output: "
                "only a trailing ZipMap can be turned into a scores tensor"
            )
        classes = _labels(node)
        labels[name] = classes
        node.op_type, node.domain = "Identity", ""
        del node.attribute[:]
        scores = helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
        dims = scores.type.tensor_type.shape.dim
        dims.add().CopyFrom(_batch_dim(model))
        dims.add().dim_value = len(classes)
        outputs[name].CopyFrom(scores)
    dropped = [
        o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.STRING
    ]
    if dropped and len(dropped) < len(model.graph.output):
        kept = [o for o in model.graph.output if o.name not in dropped]
        del model.graph.output[:]
        model.graph.output.extend(kept)
    else:
        dropped = []
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ConversionError(f"the model without ZipMap does not check: {e}") from e
    logger.info("zipmap removed outputs=%s dropped=%s", sorted(labels), dropped)
    return MlRewrite(data=model.SerializeToString(), labels=labels, dropped_outputs=dropped)


def refuse_onnx_ml_for_tflite(model: onnx.ModelProto, profile_name: str) -> None:
    """A classic-ML model has no TFLite form: refuse before any lowering, naming its
    ONNX-ML ops.

    Raises:
        UnsupportedOpError: The graph computes with ONNX-ML ops.
    """
    if ml_estimator_ops(model):
        raise UnsupportedOpError(
            [f"{ML_DOMAIN}.{op}" for op in onnx_ml_ops(model) if op not in _LOWERED_OPS],
            runtime=f"TFLite (profile {profile_name}; classic-ML models run on onnxruntime "
            "profiles)",
        )
