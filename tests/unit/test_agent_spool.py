"""The telemetry spool: durable, bounded by its documented policy, ordered per class."""

from __future__ import annotations

import json
from pathlib import Path

from agent.spool import ROW_OVERHEAD, Spool
from edgefleet.messages import TelemetryEvent


def event(priority: int, n: int) -> TelemetryEvent:
    return TelemetryEvent(kind="inference", priority=priority, data={"n": n})


def sent(spool: Spool, limit: int = 10_000) -> list[tuple[int, int]]:
    rows = spool.next_batch(limit, exclude=set())
    out = []
    for _seq, payload in rows:
        body = json.loads(payload)
        out.append((body["priority"], body["data"]["n"]))
    return out


def test_events_survive_closing_and_reopening_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**7)
    for i in range(5):
        spool.append(event(1, i))
    spool.close()
    reopened = Spool(tmp_path / "s.db", max_bytes=10**7)
    assert reopened.depth() == 5
    assert sent(reopened) == [(1, i) for i in range(5)]


def test_rows_are_sent_most_important_class_first_in_order_within_a_class(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**7)
    for i in range(3):
        spool.append(event(2, i))
        spool.append(event(0, i))
    spool.flush()
    assert sent(spool) == [(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2)]


def test_only_acknowledged_rows_are_deleted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**7)
    for i in range(4):
        spool.append(event(1, i))
    spool.flush()
    rows = spool.next_batch(2, exclude=set())
    spool.ack([rows[0][0]])
    assert spool.depth() == 3
    assert sent(spool) == [(1, 1), (1, 2), (1, 3)]
    assert [n for _, n in sent(spool)][:1] == [1]
    assert len(spool.next_batch(10, exclude={rows[1][0]})) == 2


def test_full_spool_drops_highest_priority_number_first_then_oldest(tmp_path: Path) -> None:
    size = len(event(3, 0).to_bytes()) + ROW_OVERHEAD
    spool = Spool(tmp_path / "s.db", max_bytes=size * 6 + 16)
    for i in range(4):
        spool.append(event(0, i))
    for i in range(4):
        spool.append(event(3, i))
    spool.flush()
    assert sent(spool) == [(0, 0), (0, 1), (0, 2), (0, 3), (3, 2), (3, 3)]
    assert spool.take_drops() == {3: 2}
    assert spool.take_drops() == {}


def test_drops_are_counted_across_a_restart_until_reported(tmp_path: Path) -> None:
    size = len(event(2, 0).to_bytes()) + ROW_OVERHEAD
    spool = Spool(tmp_path / "s.db", max_bytes=size * 2 + 16)
    for i in range(5):
        spool.append(event(2, i))
    spool.close()
    assert Spool(tmp_path / "s.db", max_bytes=size * 2 + 16).take_drops() == {2: 3}


def test_batch_is_committed_once_full_without_an_explicit_flush(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**7, batch_size=3)
    for i in range(3):
        spool.append(event(1, i))
    assert len(spool.next_batch(10, exclude=set())) == 3
