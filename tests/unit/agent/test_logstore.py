"""The agent's bounded on-disk log ring and the chunks it answers a log request with."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec

from edgefleet.agent.telemetry.logstore import LogResponder, LogStore, log_chunks
from edgefleet.messages import (
    LOG_CHUNK_BYTES,
    LOG_LINE_MAX_CHARS,
    MAX_MESSAGE_BYTES,
    LogChunk,
    LogRequest,
    decode_as,
)

NOW = 1_800_000_000.0


def record(message: str, *, at: float, level: int = logging.INFO) -> logging.LogRecord:
    entry = logging.LogRecord("edgefleet.agent.test", level, __file__, 1, message, None, None)
    entry.created = at
    return entry


def test_records_survive_a_new_store_on_the_same_directory(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.handle(record("first line", at=NOW - 10))
    store.close()
    reopened = LogStore(tmp_path)
    reopened.handle(record("second line", at=NOW - 5))
    selection = reopened.read(since_s=60, max_bytes=10_000, now=NOW)
    assert [r.message for r in selection.records] == ["first line", "second line"]
    assert selection.records[0].level == "INFO"
    assert selection.records[0].logger == "edgefleet.agent.test"
    assert selection.omitted == 0


def test_since_keeps_only_the_window(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    for age in (7200, 1800, 60):
        store.handle(record(f"{age}s ago", at=NOW - age))
    selection = store.read(since_s=3600, max_bytes=10_000, now=NOW)
    assert [r.message for r in selection.records] == ["1800s ago", "60s ago"]
    assert selection.omitted == 0  # outside the window is not "left out"


def test_max_bytes_keeps_the_newest_and_counts_the_rest(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    for i in range(100):
        store.handle(record(f"line {i:03d} " + "x" * 80, at=NOW - 100 + i))
    selection = store.read(since_s=3600, max_bytes=1000, now=NOW)
    assert sum(selection.sizes) <= 1000
    assert selection.records[-1].message.startswith("line 099")
    assert selection.omitted == 100 - len(selection.records) > 0
    assert [r.message[:8] for r in selection.records] == [
        f"line {i:03d}" for i in range(100 - len(selection.records), 100)
    ]


def test_the_ring_stays_within_its_cap(tmp_path: Path) -> None:
    cap = 64 * 1024
    store = LogStore(tmp_path, max_bytes=cap)
    for i in range(5000):
        store.handle(record(f"line {i} " + "y" * 100, at=NOW - 5000 + i))
    on_disk = sum(p.stat().st_size for p in store.directory.iterdir())
    assert on_disk <= cap + 1024
    selection = store.read(since_s=10_000, max_bytes=10 * cap, now=NOW)
    assert selection.records[-1].message.startswith("line 4999 ")
    assert len(selection.records) < 5000  # the oldest rotated away


def test_long_lines_are_cut_and_say_so(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.handle(record("z" * (LOG_LINE_MAX_CHARS * 3), at=NOW))
    (line,) = store.read(since_s=60, max_bytes=100_000, now=NOW).records
    assert line.message.startswith("z" * LOG_LINE_MAX_CHARS)
    assert line.message.endswith(f"[{LOG_LINE_MAX_CHARS * 2} more chars cut]")


def test_a_torn_line_is_skipped(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.handle(record("whole", at=NOW))
    store.close()
    with store.path.open("ab") as f:
        f.write(b'{"ts": 1800000000.0, "level": "INF')  # a power cut mid-write
    selection = LogStore(tmp_path).read(since_s=60, max_bytes=10_000, now=NOW)
    assert [r.message for r in selection.records] == ["whole"]


def test_tracebacks_are_kept_with_their_record(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    log = logging.getLogger("edgefleet.agent.test.traceback")
    log.addHandler(store)
    log.propagate = False
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")
    finally:
        log.removeHandler(store)
    (line,) = store.read(since_s=60, max_bytes=100_000).records
    assert line.level == "ERROR"
    assert line.message.startswith("it failed\nTraceback")
    assert "ValueError: boom" in line.message


def test_a_large_answer_is_split_into_chunks_under_the_message_limit(tmp_path: Path) -> None:
    store = LogStore(tmp_path, max_bytes=8 * 1024 * 1024)
    for i in range(3000):
        store.handle(record(f"{i} " + "w" * 400, at=NOW - 3000 + i))
    request = LogRequest(since_s=3600, max_bytes=1024 * 1024)
    selection = store.read(since_s=request.since_s, max_bytes=request.max_bytes, now=NOW)
    chunks = log_chunks(request, selection)
    assert len(chunks) > 1
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    for chunk in chunks:
        payload = chunk.to_bytes()
        assert len(payload) < MAX_MESSAGE_BYTES
        assert len(payload) < LOG_CHUNK_BYTES + 64 * 1024
        assert decode_as(payload, LogChunk).request_id == request.request_id
    received = [r.message for c in chunks for r in c.records]
    assert received == [r.message for r in selection.records]
    assert all(c.truncated and c.omitted == selection.omitted for c in chunks)


def test_an_empty_window_is_one_empty_last_chunk(tmp_path: Path) -> None:
    request = LogRequest(since_s=60)
    (chunk,) = log_chunks(request, LogStore(tmp_path).read(since_s=60, max_bytes=1000))
    assert chunk.last and chunk.records == [] and not chunk.truncated


def test_responder_publishes_the_answer(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.handle(record("hello from the device", at=time.time()))
    sent: list[LogChunk] = []
    responder = LogResponder(store, sent.append)
    request = LogRequest(since_s=60, max_bytes=10_000)
    assert responder.answer(request) == 1
    assert [r.message for r in sent[0].records] == ["hello from the device"]
    assert msgspec.json.decode(sent[0].to_bytes())["request_id"] == request.request_id
