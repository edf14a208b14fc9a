"""Fuzzing the parsers that face the network: wire messages and bundle archives.

Whatever bytes arrive, a parser either returns a valid object or raises its own
error type (MessageError, BundleError); anything else would crash a receiver.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.bundle import unpack_bundle
from edgefleet.errors import BundleError, MessageError
from edgefleet.messages import WireMessage, decode_message

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE_KEYS = st.sampled_from(
    [
        "type",
        "v",
        "online",
        "bundle_id",
        "state",
        "path",
        "offset",
        "length",
        "release",
        "target",
        "kind",
        "event_id",
        "data",
        "command",
        "priority",
        "ts",
    ]
)
TYPES = st.sampled_from(["status", "install", "fetch", "offer", "telemetry", "command", "x"])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_crashes(payload: bytes) -> None:
    with contextlib.suppress(MessageError):
        assert isinstance(decode_message(payload), WireMessage)


@settings(max_examples=600, deadline=None)
@given(TYPES, st.dictionaries(MESSAGE_KEYS, JSON_VALUES, max_size=8))
def test_decoding_message_shaped_json_never_crashes(kind: str, fields: dict[str, object]) -> None:
    import json

    payload = json.dumps({**fields, "type": kind}).encode()
    try:
        message = decode_message(payload)
    except MessageError:
        return
    # What validates must survive a round trip unchanged.
    assert decode_message(message.to_bytes()) == message


MEMBER_NAMES = st.sampled_from(
    ["manifest.json", "model.onnx", "a.npy", "x.json", "../x.json", "/abs.json", "d/x.npy", "m.pkl"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(MEMBER_NAMES, st.binary(max_size=200), st.sampled_from([b"0", b"2", b"5"])),
        max_size=5,
    )
)
def test_reading_arbitrary_archives_never_crashes(members: list[tuple[str, bytes, bytes]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.linkname = "/etc/passwd" if kind != tarfile.REGTYPE else ""
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b.tar"
        bundle.write_bytes(buffer.getvalue())
        with contextlib.suppress(BundleError):
            unpack_bundle(bundle, Path(tmp) / "out")
        assert not (Path(tmp).parent / "x.json").exists()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_reading_arbitrary_bytes_as_a_bundle_never_crashes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "b.tar"
        bundle.write_bytes(data)
        with contextlib.suppress(BundleError):
            unpack_bundle(bundle, Path(tmp) / "out")
