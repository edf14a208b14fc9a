"""Which kind of model some bytes are, read from the content, never from a file name.

A TFLite model is a FlatBuffer whose file identifier, ``TFL3``, sits at bytes 4..8.
An ONNX model is a protobuf ``ModelProto``; it has no magic number, so it is recognised
by parsing it and finding a graph in it. Anything else is refused with a description of
what the bytes look like, so a user who uploaded the wrong file learns which file it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgefleet.converters.errors import ConversionError
from edgefleet.converters.onnx_inspect import OnnxInspection, inspect_onnx
from edgefleet.converters.onnx_ml import strip_zipmap
from edgefleet.converters.tflite_inspect import TfliteInspection, inspect_tflite

ModelFormat = Literal["onnx", "tflite"]

TFLITE_IDENTIFIER = b"TFL3"

# Leading bytes of files people upload by mistake, and what to call them.
_KNOWN_MAGIC: list[tuple[bytes, str]] = [
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"PK\x03\x04", "a ZIP archive (a .npz, a Keras .keras or a PyTorch .pt?)"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5?)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"GGUF", "a GGUF model (llama.cpp)"),
]


def describe_bytes(data: bytes) -> str:
    """A short description of what ``data`` looks like, for error messages."""
    if not data:
        return "an empty file"
    for magic, what in _KNOWN_MAGIC:
        if data.startswith(magic):
            return what
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (a PyTorch or scikit-learn file?)"  # PROTO opcode + version
    head = data[:64]
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "JSON or other text" if head.lstrip()[:1] in (b"{", b"[") else "text"
    return f"{len(data)} bytes of unknown binary data (starting {data[:8].hex()})"


def _is_onnx(data: bytes) -> bool:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError):
        return False
    # Protobuf parses many random byte strings as a message with unknown fields: an
    # ONNX model has at least a graph with a node or an output, and an opset.
    return bool(model.opset_import) and bool(model.graph.node or model.graph.output)


def detect_format(data: bytes) -> ModelFormat:
    """``"tflite"`` or ``"onnx"`` from the bytes themselves.

    Raises:
        ConversionError: The bytes are neither, naming what they look like.
    """
    if len(data) >= 8 and data[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    if data and _is_onnx(data):
        return "onnx"
    raise ConversionError(
        f"not an ONNX or TFLite model: the file is {describe_bytes(data)} "
        f"(a TFLite model carries {TFLITE_IDENTIFIER.decode()!r} at bytes 4-8; "
        "an ONNX model is a protobuf ModelProto with a graph)"
    )


@dataclass(frozen=True)
class ReadModel:
    """A model as registration stores it: its format, the bytes to keep (an ONNX-ML
    model without its ZipMap), what inspection found, and the class labels of any
    scores output whose ZipMap was removed."""

    format: ModelFormat
    data: bytes
    inspection: OnnxInspection | TfliteInspection
    labels: dict[str, list[int] | list[str]] = field(default_factory=dict)


def inspect_model(data: bytes) -> OnnxInspection | TfliteInspection:
    """The inspection of an ONNX or TFLite model, whichever the bytes are."""
    if detect_format(data) == "tflite":
        return inspect_tflite(data)
    return inspect_onnx(data)


def read_model(data: bytes) -> ReadModel:
    """Detect, rewrite (ONNX-ML ZipMap outputs) and inspect an uploaded model.

    Raises:
        ConversionError: Neither format, or a model its format's reader refuses.
    """
    if detect_format(data) == "tflite":
        return ReadModel(format="tflite", data=data, inspection=inspect_tflite(data))
    rewrite = strip_zipmap(data)
    return ReadModel(
        format="onnx",
        data=rewrite.data,
        inspection=inspect_onnx(rewrite.data),
        labels=rewrite.labels,
    )
