"""The request side of the Open Inference Protocol (KServe v2): a request body decoded
and checked against the model's signature before any model sees it.

Every refusal is a ``RequestError`` carrying the HTTP status and a reason that names
the offending input; the server (:mod:`.server`) turns it into ``{"error": reason}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import msgspec
import numpy as np

from edgefleet.agent.inference import binary
from edgefleet.agent.inference.runtime import ActiveModel
from edgefleet.tensors import (
    OIP_TO_NUMPY,
    ModelSignature,
    TensorSpec,
    decode_tensor,
    shown,
)

MAX_NESTING = 32
"""Deepest nesting of JSON arrays and objects in a request body: an infer request takes
three levels (request, ``inputs``, tensor) plus one per dimension of nested data."""

_CONTAINERS = frozenset({list, dict})
_FAST_JSON = msgspec.json.Decoder()
_MISSING = object()


class RequestError(Exception):
    """A request the server answers with an error status and ``{"error": reason}``."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _spec_json(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_metadata(model: ActiveModel) -> dict[str, Any]:
    """OIP model metadata for ``model``."""
    signature = model.runtime.signature
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": model.platform,
        "inputs": [_spec_json(s) for s in signature.inputs],
        "outputs": [_spec_json(s) for s in signature.outputs],
    }


def nested_deeper_than(value: Any, limit: int) -> bool:
    """True when JSON arrays and objects in decoded ``value`` nest more than ``limit``
    deep. Level by level, descending only into containers: a long flat list costs one
    pass in C, never a Python loop over its numbers."""
    if type(value) not in _CONTAINERS:
        return False
    level = [value]
    for _ in range(limit):
        inner: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            if not _CONTAINERS.isdisjoint(map(type, children)):
                inner.extend(c for c in children if type(c) in _CONTAINERS)
        if not inner:
            return False
        level = inner
    return True


def decode_json_body(body: bytes) -> Any:
    """The JSON value of a request body; ``RequestError`` (400) when it is not valid
    UTF-8 JSON or nests deeper than ``MAX_NESTING``."""
    try:
        # msgspec reads standard JSON several times faster than the json module; what
        # it refuses (NaN tokens, lone surrogates, deep nesting, malformed text) goes
        # to json, which gives the policy its NaN and every refusal its reason.
        value = _FAST_JSON.decode(body)
    except (msgspec.MsgspecError, RecursionError, ValueError):
        value = _MISSING
    try:
        if value is _MISSING:
            value = json.loads(body)
    except RecursionError as e:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"request body nested too deeply (limit {MAX_NESTING})"
        ) from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise RequestError(HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {e}") from e
    # Fewer opening brackets than the limit cannot nest past it (the usual request).
    brackets = body.count(b"[") + body.count(b"{")
    if brackets > MAX_NESTING and nested_deeper_than(value, MAX_NESTING):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"request body nested too deeply (limit {MAX_NESTING})"
        )
    return value


def _check_input(index: int, obj: Any, specs: dict[str, TensorSpec]) -> TensorSpec:
    """The spec ``obj`` feeds, once its name and datatype are the model's."""
    if not isinstance(obj, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"inputs[{index}] must be a JSON object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"inputs[{index}] needs a non-empty 'name'")
    spec = specs.get(name)
    if spec is None:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"model has no input {shown(name)}")
    datatype = obj.get("datatype")
    if datatype != spec.datatype:
        known = isinstance(datatype, str) and datatype in OIP_TO_NUMPY
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"input {name!r}: datatype {shown(datatype)} != expected {spec.datatype}"
            if known
            else f"input {name!r}: unknown datatype {shown(datatype)}",
        )
    return spec


@dataclass(frozen=True)
class InferRequest:
    """A checked infer request: the feeds, the request object, the outputs asked for
    (None: all of them) and which of them go back as raw bytes."""

    feeds: dict[str, np.ndarray]
    request: dict[str, Any]
    outputs: list[str] | None
    binary_outputs: frozenset[str]
    all_binary: bool

    def binary(self, name: str) -> bool:
        """Whether output ``name`` goes back as raw bytes after the JSON header."""
        return self.all_binary or name in self.binary_outputs


def _wanted_outputs(
    request: dict[str, Any], signature: ModelSignature
) -> tuple[list[str] | None, frozenset[str]]:
    """The output names the request asks for (None: all of them), and those it wants
    as binary data (``"parameters": {"binary_data": true}``)."""
    wanted = request.get("outputs")
    if wanted is None or wanted == []:
        return None, frozenset()
    if not isinstance(wanted, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in wanted
    ):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "'outputs' must be a list of objects with a 'name'"
        )
    known = {spec.name for spec in signature.outputs}
    names = [str(o["name"]) for o in wanted]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"model has no output {shown(unknown[0])}")
    as_binary = frozenset(
        str(o["name"])
        for o in wanted
        if isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True
    )
    return names, as_binary


def parse_infer_request(
    body: bytes,
    signature: ModelSignature,
    *,
    allow_non_finite: bool = False,
    header_length: int | None = None,
) -> InferRequest:
    """Decode and check an OIP infer request before the model sees it.

    With ``header_length`` (``Inference-Header-Content-Length``) the body is a JSON
    header of that many bytes followed by raw tensor bytes (:mod:`.binary`); without
    it, all JSON. ``RequestError`` (400) says what is wrong, naming the input.
    """
    view = memoryview(body)
    if header_length is None:
        request = decode_json_body(body)
        tail = view[:0]
    else:
        request = decode_json_body(body[:header_length])  # copies the header only
        tail = view[header_length:]
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "request must be an object with an 'inputs' list"
        )
    specs = {spec.name: spec for spec in signature.inputs}
    feeds: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    offset = 0
    for index, obj in enumerate(request["inputs"]):
        spec = _check_input(index, obj, specs)
        if spec.name in feeds:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"input {spec.name!r} given twice")
        try:
            size = binary.binary_size(obj, spec.name)
            if size is None:
                _, array = decode_tensor(obj, allow_non_finite=allow_non_finite)
            elif header_length is None:
                raise ValueError(
                    f"input {spec.name!r}: binary_data_size given but the request has no "
                    f"{binary.HEADER} header"
                )
            else:
                array = binary.decode_binary_input(
                    obj,
                    spec.name,
                    spec.datatype,
                    size,
                    tail,
                    offset,
                    allow_non_finite=allow_non_finite,
                )
                offset += size
        except ValueError as e:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(e)) from e
        if not spec.accepts_shape(array.shape, batch=signature.batch):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"input {spec.name!r}: shape {list(array.shape)} does not fit {spec.shape}",
            )
        if array.size == 0:  # runtimes fail on these, and a failure counts against the model
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"input {spec.name!r}: shape {list(array.shape)} holds no values to infer on",
            )
        feeds[spec.name] = array
        if signature.batched(spec):
            rows[spec.name] = int(array.shape[0])
    if offset != len(tail):
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"{len(tail) - offset} bytes of binary data after the JSON header belong to "
            "no input (binary_data_size of the inputs does not add up to the body)",
        )
    if len(set(rows.values())) > 1:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"batched inputs differ in row count: {shown(rows, 200)} "
            f"(the model runs in batches of {signature.batch})",
        )
    missing = sorted(set(specs) - set(feeds))
    if missing:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"missing input {missing[0]!r}")
    outputs, binary_outputs = _wanted_outputs(request, signature)
    return InferRequest(feeds, request, outputs, binary_outputs, binary.wants_binary(request))
