"""Wire messages validate on receipt and keep unknown fields; topics confine devices."""

from __future__ import annotations

import json

import pytest

from edgefleet import topics
from edgefleet.errors import MessageError
from edgefleet.messages import (
    MAX_MESSAGE_BYTES,
    BlobIndex,
    BundleOffer,
    DeviceStatus,
    FetchRequest,
    InstallReport,
    Receipt,
    decode_as,
    decode_message,
    nesting_depth,
)
from edgefleet.topics import Down, Up


@pytest.mark.parametrize(
    "message",
    [
        DeviceStatus(online=True, profile="x86-64-gateway-onnx", release=3),
        InstallReport(bundle_id="b-1", state="failed", reason="sha256 mismatch"),
        FetchRequest(path="targets/abc.b.tar", offset=0, length=1024),
        BundleOffer(bundle_id="b-1", target="b-1.tar", release=1, rollout_id=7),
        BlobIndex(sha256="ab" * 32, size=300_000, chunk_size=131072, chunks=3),
    ],
)
def test_every_message_round_trips(message: object) -> None:
    assert decode_message(message.to_bytes()) == message  # type: ignore[attr-defined]


def test_unknown_fields_survive_a_round_trip() -> None:
    raw = json.dumps({"type": "status", "online": True, "battery": 0.8}).encode()
    message = decode_message(raw)
    assert json.loads(message.to_bytes())["battery"] == 0.8


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"{not json", "invalid message"),
        (b'{"type": "teleport"}', "type"),
        (b'{"type": "status"}', "online"),
        (b'{"type": "fetch", "path": "../../etc/passwd", "offset": 0, "length": 10}', "path"),
        (b'{"type": "fetch", "path": "targets/x", "offset": 0, "length": 99999999}', "length"),
        (b'{"type": "status", "online": true, "v": 99}', "schema version"),
        (b"[]", "invalid message"),
        (b'{"type": "blob_index", "sha256": "AB", "size": 1, "chunk_size": 1, "chunks": 1}', "sha"),
        (
            b'{"type": "blob_index", "sha256": "' + b"ab" * 32 + b'", "size": 10, '
            b'"chunk_size": 4, "chunks": 2}',
            "chunks",
        ),
    ],
)
def test_malformed_messages_raise_message_error(payload: bytes, fragment: str) -> None:
    with pytest.raises(MessageError, match=fragment):
        decode_message(payload, topic="fleet/dev-abcdefgh/up/status")


def test_decode_as_refuses_a_message_of_another_type() -> None:
    with pytest.raises(MessageError, match="expected BundleOffer"):
        decode_as(DeviceStatus(online=False).to_bytes(), BundleOffer)


def test_topics_are_per_device_and_parse_back() -> None:
    assert topics.up("dev-abcdefgh", Up.STATUS) == "fleet/dev-abcdefgh/up/status"
    assert topics.down("dev-abcdefgh", Down.OFFER) == "fleet/dev-abcdefgh/down/offer"
    assert topics.parse_up("fleet/dev-abcdefgh/up/report") == ("dev-abcdefgh", Up.REPORT)


@pytest.mark.parametrize(
    "device_id", ["cp-controlplane", "dev-short", "dev-UPPERCASE1", "dev-abc/def12", "dev-+", "all"]
)
def test_invalid_or_reserved_device_ids_are_refused(device_id: str) -> None:
    assert not topics.is_device_id(device_id)
    with pytest.raises(ValueError):
        topics.up(device_id, Up.STATUS)


@pytest.mark.parametrize(
    "topic",
    [
        "fleet/dev-abcdefgh/down/offer",
        "fleet/cp-abcdefgh/up/status",
        "fleet/dev-abcdefgh/up/status/extra",
        "fleet/dev-abcdefgh/up/unknown",
        "other/dev-abcdefgh/up/status",
    ],
)
def test_parse_up_refuses_anything_but_a_device_up_topic(topic: str) -> None:
    with pytest.raises(ValueError):
        topics.parse_up(topic)


def test_deeply_nested_payload_is_refused_as_a_message_error_before_decoding():
    payload = b"[" * 900_000
    with pytest.raises(MessageError, match="too large"):
        decode_message(payload, topic="fleet/dev-abcdefgh/up/telemetry")
    with pytest.raises(MessageError, match="nested too deeply"):
        decode_message(b"[" * 5000 + b"]" * 5000)


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = '{"type": "telemetry", "kind": "error", "data": {"reason": "[[[[\\"[[[[[[[[[[[[[["}}'
    assert nesting_depth(text.encode()) == 2
    assert nesting_depth(b'{"a": [[{"b": []}]]}') == 5


def test_receipt_round_trips_and_bounds_its_ids():
    receipt = Receipt(event_ids=["a" * 32, "b" * 32])
    assert decode_as(receipt.to_bytes(), Receipt).event_ids == ["a" * 32, "b" * 32]
    too_many = b'{"type": "receipt", "event_ids": [' + b",".join([b'"x"'] * 1001) + b"]}"
    with pytest.raises(MessageError):
        decode_message(too_many)


def test_an_unclosed_run_of_escaped_quotes_is_scanned_in_one_pass():
    # Quadratic before: minutes of CPU for a payload at the size limit.
    payload = b'"' + b'\\"' * (MAX_MESSAGE_BYTES // 2 - 1)
    assert nesting_depth(payload) == 0
    with pytest.raises(MessageError):
        decode_message(payload)


def test_blob_topics_are_content_addressed_under_the_broadcast_and_parse_back() -> None:
    sha = "0f" * 32
    assert topics.blob_chunk(sha, 7) == f"fleet/all/down/blobs/{sha}/7"
    assert topics.parse_blob_index(topics.blob_index(sha)) == sha
    for bad in ("0F" * 32, "0f" * 31, "../" + "0f" * 31):
        with pytest.raises(ValueError):
            topics.blob_index(bad)
    with pytest.raises(ValueError):
        topics.blob_chunk(sha, -1)
    for topic in (topics.blob_chunk(sha, 0), f"fleet/all/down/blobs/{sha}/index/x", "x"):
        with pytest.raises(ValueError):
            topics.parse_blob_index(topic)
