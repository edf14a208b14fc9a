"""The contract's records on msgspec: typed, checked when built, open to newer peers.

The records both sides share (wire messages, the bundle manifest, the agent's config and
files on disk) are ``msgspec.Struct`` types, so the agent never loads pydantic and its
schema machinery, which would cost it far more memory than msgspec does. msgspec checks
types and constraints (``Annotated[int, msgspec.Meta(ge=1)]``) only while it decodes,
and drops the fields a type does not declare. This module adds what the contract needs
on top, once:

- ``Struct`` checks every field when a record is built in code too, and stores the
  converted value (an ``int`` given for a ``float`` field is kept as a float); a bad
  value raises ``FieldError`` naming the field. A record's own cross-field checks go in
  ``__post_init__`` (call ``super().__post_init__()`` first) and raise ``FieldError``.
- ``Open`` is a ``Struct`` that keeps the fields it does not declare, so a newer peer's
  additions survive a read-write round trip: ``convert`` and ``decode_json`` record
  them (at every level of nesting), ``to_builtins`` writes them back, ``replace``
  carries them over, and ``unrecognized_fields`` shows them. Plain ``msgspec``
  encoding and ``msgspec.structs.replace`` do not know about them: use these.
- ``locate`` and ``describe`` turn msgspec's ``ValidationError`` into the dotted path of
  the field at fault and the reason, for the callers' own errors.
- Thread safety. msgspec works out a record type's field types the first time the type
  is decoded or converted, and publishes that half-built while it calls into Python:
  a second thread using the same type at that moment reads a missing field type and
  the process dies (SIGSEGV; seen in the fleet benchmark, with 250 devices per process
  installing at once; ``tests/unit/contract/test_schema.py`` has the scenario).
  So every ``Struct`` type is registered when defined, and the first conversion in
  the process prepares all of them under one lock, in one thread, before any goes on.

Records are read-only. Declare every one with ``frozen=True, kw_only=True``: msgspec does
not inherit ``kw_only`` (records take keyword arguments only, and required fields may
follow defaulted ones), and mypy wants ``frozen`` said on every subclass.
"""

from __future__ import annotations

import contextvars
import functools
import re
import threading
import typing
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, TypeVar

import msgspec

from edgefleet.errors import FieldError

T = TypeVar("T")
S = TypeVar("S", bound="Struct")

_UNRECOGNIZED = "_unrecognized_fields"
"""Where an ``Open`` record keeps its undeclared fields: a key of its ``__dict__``."""

_decoding: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "edgefleet_schema_decoding", default=False
)
"""True while msgspec builds records from data it has just checked field by field."""


def _dec_hook(type_: Any, obj: Any) -> Any:
    """Build what msgspec has no JSON form for: paths, from strings."""
    if isinstance(type_, type) and isinstance(obj, type_):
        return obj
    if isinstance(type_, type) and issubclass(type_, PurePath) and isinstance(obj, str):
        return type_(obj)
    raise TypeError(f"Expected `{getattr(type_, '__name__', type_)}`, got `{type(obj).__name__}`")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"cannot encode objects of type {type(obj).__name__}")


def _holds_records(annotation: Any) -> bool:
    """Whether a field of this type can hold a record (directly, or in a list/dict/union)."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return False
    return any(_holds_records(arg) for arg in typing.get_args(annotation))


@dataclass(frozen=True)
class _Layout:
    """What the helpers below need to know about one record type, worked out once."""

    names: tuple[str, ...]
    keys: tuple[str, ...]  # the names on the wire
    declared: frozenset[str]
    nested: frozenset[str]  # fields whose values may hold records: walked, not encoded in C
    row: type[msgspec.Struct]  # the same fields, read from a tuple: checks them in one call


@functools.cache
def _layout(cls: type[msgspec.Struct]) -> _Layout:
    fields = msgspec.structs.fields(cls)
    return _Layout(
        names=tuple(f.name for f in fields),
        keys=tuple(f.encode_name for f in fields),
        declared=frozenset(f.encode_name for f in fields),
        nested=frozenset(f.name for f in fields if _holds_records(f.type)),
        row=msgspec.defstruct(
            f"{cls.__name__}Row", [(f.name, f.type) for f in fields], array_like=True
        ),
    )


_unprepared: list[type[msgspec.Struct]] = []
"""Record types defined but not yet known to msgspec (see "Thread safety" above)."""
_prepare_lock = threading.Lock()


def prepare() -> None:
    """Have msgspec work out every record type defined so far, once, in this thread.

    Cheap after the first call (a list check). A type that cannot be prepared yet (its
    module is still defining the types it refers to) stays listed for the next call.
    """
    if not _unprepared:
        return
    with _prepare_lock:
        for cls in list(_unprepared):
            try:
                msgspec.json.Decoder(cls)
                msgspec.json.Decoder(_layout(cls).row)
            except NameError:
                continue
            _unprepared.remove(cls)


class Struct(msgspec.Struct, frozen=True):
    """A read-only record whose fields are checked when it is built in code, as when decoded."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _unprepared.append(cls)

    def __post_init__(self) -> None:
        if _decoding.get():
            return
        prepare()
        layout = _layout(type(self))
        values = tuple(getattr(self, name) for name in layout.names)
        try:
            checked = msgspec.convert(values, layout.row, dec_hook=_dec_hook)
        except msgspec.ValidationError as e:
            path, reason = _split(str(e))
            index = int(path[0]) if path and path[0].isdigit() else None
            if index is None:
                raise FieldError(type(self).__name__, reason) from None
            raise FieldError(".".join([layout.names[index], *path[1:]]), reason) from None
        for name, value in zip(layout.names, values, strict=True):
            new = getattr(checked, name)
            if new is not value:
                msgspec.structs.force_setattr(self, name, new)


class Open(Struct, frozen=True, dict=True):
    """A record that keeps the fields it does not declare (see the module docstring)."""

    @property
    def unrecognized_fields(self) -> dict[str, Any]:
        """The fields this version does not declare, as they were read."""
        return dict(self.__dict__.get(_UNRECOGNIZED, {}))


def convert(data: Any, type_: type[T]) -> T:
    """Check ``data`` and build a ``type_`` from it.

    Args:
        data: Dicts, lists and scalars, as decoded from JSON (or TOML).
        type_: A record type, or any type msgspec can convert to (``list[Record]``, ...).

    Returns:
        The record, with the undeclared fields of every ``Open`` record in it kept.

    Raises:
        msgspec.ValidationError: ``data`` does not fit ``type_``; ``locate`` says which
            field and why.
    """
    prepare()
    token = _decoding.set(True)
    try:
        result: T = msgspec.convert(data, type_, dec_hook=_dec_hook)
    finally:
        _decoding.reset(token)
    _keep_unrecognized(result, data)
    return result


def decode_json(data: bytes | str, type_: type[T]) -> T:
    """Decode a JSON document into a ``type_``.

    Returns:
        The record, undeclared fields of ``Open`` records kept (as ``convert``).

    Raises:
        msgspec.DecodeError: The document is not JSON; its subclass
            ``msgspec.ValidationError`` when it is but does not fit ``type_``.
    """
    return convert(msgspec.json.decode(data), type_)


def to_builtins(obj: Any, *, omit_none: bool = False) -> Any:
    """``obj`` as dicts, lists and scalars, ready for ``json.dumps``.

    Undeclared fields of ``Open`` records are written back; fields left ``msgspec.UNSET``
    are left out. ``omit_none`` leaves out
    the fields of records (declared or not) whose value is None; None inside a
    ``dict`` or ``list`` value is kept.
    """
    if isinstance(obj, msgspec.Struct):
        layout = _layout(type(obj))
        out: dict[str, Any] = {}
        for name, key in zip(layout.names, layout.keys, strict=True):
            value = getattr(obj, name)
            if value is msgspec.UNSET:  # a field the record leaves out when not given
                continue
            if value is None:
                if not omit_none:
                    out[key] = None
            elif name in layout.nested:
                out[key] = to_builtins(value, omit_none=omit_none)
            else:
                out[key] = msgspec.to_builtins(value, enc_hook=_enc_hook)
        if isinstance(obj, Open):
            for key, value in obj.__dict__.get(_UNRECOGNIZED, {}).items():
                if value is not None or not omit_none:
                    out.setdefault(key, value)
        return out
    if isinstance(obj, dict):
        return {key: to_builtins(value, omit_none=omit_none) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_builtins(value, omit_none=omit_none) for value in obj]
    return msgspec.to_builtins(obj, enc_hook=_enc_hook)


def replace(record: S, **changes: Any) -> S:
    """A copy of ``record`` with ``changes``, keeping its undeclared fields.

    Raises:
        FieldError: A changed value is one its field does not allow.
    """
    copy = msgspec.structs.replace(record, **changes)
    if isinstance(record, Open) and _UNRECOGNIZED in record.__dict__:
        copy.__dict__[_UNRECOGNIZED] = record.__dict__[_UNRECOGNIZED]
    return copy


def _keep_unrecognized(obj: Any, data: Any) -> None:
    """Record, on every ``Open`` record in ``obj``, the keys of ``data`` it did not take."""
    if isinstance(obj, msgspec.Struct):
        if not isinstance(data, dict):
            return  # a record passed in as an object, not as data
        layout = _layout(type(obj))
        if isinstance(obj, Open):
            unrecognized = {k: v for k, v in data.items() if k not in layout.declared}
            if unrecognized:
                obj.__dict__[_UNRECOGNIZED] = unrecognized
        for name, key in zip(layout.names, layout.keys, strict=True):
            if name in layout.nested and key in data:
                _keep_unrecognized(getattr(obj, name), data[key])
    elif isinstance(obj, list) and isinstance(data, list | tuple):
        for item, raw in zip(obj, data, strict=False):
            _keep_unrecognized(item, raw)
    elif isinstance(obj, dict) and isinstance(data, dict):
        for key, value in obj.items():
            if key in data:
                _keep_unrecognized(value, data[key])


_LOCATION = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[\]]+)|\[([^\]]*)\]")
_NAMED_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]+)`")


def _split(message: str) -> tuple[list[str], str]:
    """msgspec's ``"<reason> - at `$.a[0].b`"`` as (["a", "0", "b"], reason)."""
    match = _LOCATION.search(message)
    if match is None:
        return [], message
    path = [attr or index for attr, index in _STEP.findall(match["path"])]
    return path, message[: match.start()]


def locate(error: msgspec.ValidationError) -> tuple[str | None, str]:
    """Where a validation error lies, as a dotted field path, and why.

    An unknown or missing field is named in the path; a ``FieldError`` raised by a
    record's own check adds its field to the record's path.

    Returns:
        (path, reason); the path is None when the record as a whole is at fault.
    """
    path, reason = _split(str(error))
    named = _NAMED_FIELD.match(reason)
    if named:
        path.append(named["name"])
    cause = error.__cause__
    if isinstance(cause, FieldError):
        path.append(cause.field)
        reason = cause.reason
    return ".".join(path) or None, reason


def describe(error: msgspec.DecodeError) -> str:
    """One line for a decode failure: ``"<field>: <reason>"``, or msgspec's own message."""
    if not isinstance(error, msgspec.ValidationError):
        return str(error)
    field, reason = locate(error)
    return f"{field}: {reason}" if field else reason
