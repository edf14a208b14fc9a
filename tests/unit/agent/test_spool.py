"""The telemetry spool: durable, bounded by its documented policy (bytes on disk
included), ordered per class, deleting only what the control plane receipted, and
never a single point of failure (real SQLite files throughout)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from edgefleet.agent.telemetry.counters import LatencyWindow
from edgefleet.agent.telemetry.spool import REPORT, ROW_OVERHEAD, Spool, disk_slack
from edgefleet.messages import InstallReport, TelemetryEvent


def event(priority: int, n: int, kind: str = "inference") -> TelemetryEvent:
    return TelemetryEvent(kind=kind, priority=priority, data={"n": n})  # type: ignore[arg-type]


def window(count: int) -> TelemetryEvent:
    latency = LatencyWindow()
    for _ in range(count):
        latency.add(2.0, True)
    return TelemetryEvent(kind="inference", priority=2, data=latency.to_data(10.0))


def sent(spool: Spool, limit: int = 10_000) -> list[tuple[int, int]]:
    out = []
    for row in spool.next_batch(limit):
        body = json.loads(row.payload)
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


def test_only_receipted_rows_are_deleted_and_the_rest_survive_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**7)
    for i in range(4):
        spool.append(event(1, i))
    spool.flush()
    rows = spool.next_batch(3)  # handed to the broker: that deletes nothing
    assert spool.depth() == 4
    assert spool.receipt([rows[0].event_id, "not-one-of-ours"]) == 1
    assert spool.depth() == 3
    assert [n for _, n in sent(spool)] == [1, 2, 3]
    assert len(spool.next_batch(10, exclude={rows[1].seq})) == 2
    spool.close()
    assert [n for _, n in sent(Spool(tmp_path / "s.db", max_bytes=10**7))] == [1, 2, 3]


def test_install_report_is_kept_for_up_report_until_receipted_across_a_restart(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**7)
    spool.append(event(2, 0))
    report = InstallReport(bundle_id="b-1", release=1, state="active")
    spool.append_report(report)  # committed at once, no flush needed
    spool._db.close()  # a crash: nothing flushed or closed cleanly
    reopened = Spool(tmp_path / "s.db", max_bytes=10**7)
    first = reopened.next_batch(10)[0]
    assert (first.channel, first.event_id) == (REPORT, report.event_id)
    assert json.loads(first.payload)["state"] == "active"
    reopened.receipt([report.event_id])
    assert [row.channel for row in reopened.next_batch(10)] == ["telemetry"]


def test_full_spool_drops_highest_priority_number_first_then_oldest(tmp_path: Path) -> None:
    size = len(event(3, 0).to_bytes()) + ROW_OVERHEAD
    spool = Spool(tmp_path / "s.db", max_bytes=size * 6 + 16)
    for i in range(4):
        spool.append(event(0, i))
    for i in range(4):
        spool.append(event(3, i, kind="resource"))
    spool.flush()
    assert sent(spool) == [(0, 0), (0, 1), (0, 2), (0, 3), (3, 2), (3, 3)]
    summary = spool.drop_summary()
    assert summary is not None
    assert summary["dropped"] == {"3": 2}
    assert summary["lost"] == {"resource": 2}


def test_drops_are_one_running_summary_in_kinds_and_inferences_not_rows(tmp_path: Path) -> None:
    size = len(window(7).to_bytes()) + ROW_OVERHEAD
    spool = Spool(tmp_path / "s.db", max_bytes=size * 3 + 16)
    for _ in range(10):
        spool.append(window(7))
        spool.flush()  # ten overflows, one after another
    for _ in range(3):
        spool.append(event(3, 0, kind="resource"))
        spool.flush()
    assert spool.depth() == 3  # the summary is not a row: it never pushes one out
    summary = spool.drop_summary()
    assert summary is not None
    assert summary["lost"] == {"inference": 7, "resource": 3}
    assert summary["inferences"] == 7 * 7
    assert summary["dropped"] == {"2": 7, "3": 3}
    spool.close()
    reopened = Spool(tmp_path / "s.db", max_bytes=size * 3 + 16)
    assert reopened.drop_summary() == summary  # persisted until sent


def test_sealed_summaries_never_displace_install_or_drift_events(tmp_path: Path) -> None:
    keep = [event(0, i, kind="install") for i in range(2)] + [event(1, 9, kind="drift")]
    size = max(len(e.to_bytes()) for e in keep) + ROW_OVERHEAD
    spool = Spool(tmp_path / "s.db", max_bytes=size * 3 + 16)
    for e in keep:
        spool.append(e)
    for _outage in range(30):  # thirty outages, each overflowing and each summarised
        for i in range(3):
            spool.append(event(3, i, kind="resource"))
        spool.flush()
        spool.seal_summary()
    kinds = [json.loads(row.payload)["kind"] for row in spool.next_batch(100)]
    assert kinds.count("install") == 2 and kinds.count("drift") == 1, kinds
    assert 1 <= kinds.count("spool") <= 16
    summaries = [json.loads(r.payload)["data"] for r in spool.next_batch(100)]
    lost = sum(d["lost"].get("resource", 0) for d in summaries if "lost" in d)
    still_open = spool.drop_summary() or {"lost": {}}
    assert lost + still_open["lost"].get("resource", 0) == 90


def test_a_dropped_event_that_is_receipted_after_all_comes_off_the_summary(
    tmp_path: Path,
) -> None:
    size = len(window(5).to_bytes()) + ROW_OVERHEAD
    spool = Spool(tmp_path / "s.db", max_bytes=size * 2 + 16)
    first = window(5)
    spool.append(first)
    spool.flush()
    spool.next_batch(1)  # handed to the broker just before the link went down
    for _ in range(3):
        spool.append(window(5))
    spool.flush()
    summary = spool.drop_summary()
    assert summary is not None and summary["inferences"] == 10
    spool.receipt([first.event_id])  # it did reach the control plane
    summary = spool.drop_summary()
    assert summary is not None and summary["inferences"] == 5
    assert summary["lost"] == {"inference": 1}


def test_cap_bounds_spool_file_plus_wal_after_a_burst_that_overflows_it(tmp_path: Path) -> None:
    cap = 40_000
    spool = Spool(tmp_path / "s.db", max_bytes=cap)
    wal = tmp_path / "s.db-wal"
    largest = 0
    for i in range(2500):
        spool.append(window(1 + i % 50))
        if i % 97 == 0:
            spool.flush()
        largest = max(largest, spool.disk_bytes())
    spool.flush()
    largest = max(largest, spool.disk_bytes())
    assert spool.drop_summary() is not None
    assert largest <= cap + disk_slack(cap), (largest, cap + disk_slack(cap))
    for row_batch in iter(lambda: spool.next_batch(500), []):
        spool.receipt([row.event_id for row in row_batch])
    assert spool.depth() == 0
    assert wal.stat().st_size <= spool.wal_limit  # nor does it keep growing after the drain
    assert spool.disk_bytes() <= cap + disk_slack(cap)


def test_corrupt_spool_is_moved_aside_and_recreated_with_an_error_event(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, max_bytes=10**7)
    for i in range(50):
        spool.append(event(2, i))
    spool.close()
    with path.open("r+b") as file:
        file.write(os.urandom(4096))  # garbage over the header and the first page
    reopened = Spool(path, max_bytes=10**7)
    aside = sorted(p.name for p in tmp_path.glob("spool.sqlite.corrupt-*"))
    assert aside and not aside[0].endswith("-wal")
    rows = [json.loads(row.payload) for row in reopened.next_batch(10)]
    assert [(r["kind"], r["data"]["where"]) for r in rows] == [("error", "spool")]
    assert "cannot open spool" in rows[0]["data"]["reason"]
    assert rows[0]["data"]["moved_to"] == aside[0]
    reopened.append(event(2, 1))
    reopened.flush()
    assert reopened.depth() == 2
    with sqlite3.connect(path) as db:  # a real, healthy database again
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_spool_missing_at_start_up_is_recreated_with_an_error_event(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    first = Spool(path, max_bytes=10**7)
    assert first.next_batch(10) == []  # a first start is not an error
    first.close()
    path.unlink()
    again = Spool(path, max_bytes=10**7, expect_existing=True)
    rows = [json.loads(row.payload)["data"] for row in again.next_batch(10)]
    assert rows and rows[0]["reason"] == "spool file missing at start-up"


def test_spool_deleted_while_running_is_recreated_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, max_bytes=10**7)
    for i in range(20):
        spool.append(event(2, i))
    spool.flush()
    path.unlink()
    assert spool.check()
    assert path.exists()
    assert spool.depth() == 21  # the twenty it could still read, plus the error event
    spool.close()
    assert Spool(path, max_bytes=10**7).depth() == 21


def test_spool_overwritten_while_running_is_moved_aside_and_recreated(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, max_bytes=10**7)
    for i in range(20):
        spool.append(event(2, i))
    spool.flush()
    with path.open("r+b") as file:
        file.write(b"\x00garbage" * 64)
    assert spool.check()
    assert list(tmp_path.glob("spool.sqlite.corrupt-*"))
    spool.append(event(2, 99))
    spool.flush()
    rows = [json.loads(row.payload) for row in spool.next_batch(100)]
    assert rows[0]["kind"] == "error"
    assert rows[-1]["data"]["n"] == 99
    assert spool.depth() == len(rows)
    assert not spool.check()


def test_a_spool_of_the_previous_version_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, priority INTEGER NOT "
            "NULL, size INTEGER NOT NULL, payload BLOB NOT NULL);"
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        )
        for i in range(3):
            payload = event(2, i).to_bytes()
            db.execute(
                "INSERT INTO events (priority, size, payload) VALUES (2, ?, ?)",
                (len(payload), payload),
            )
        db.execute("INSERT INTO meta VALUES ('dropped', '{\"3\": 4}')")
    spool = Spool(path, max_bytes=10**7)
    assert sent(spool) == [(2, 0), (2, 1), (2, 2)]
    summary = spool.drop_summary()
    assert summary is not None and summary["dropped"] == {"3": 4}


def test_batch_is_committed_once_full_without_an_explicit_flush(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.db", max_bytes=10**7, batch_size=3)
    for i in range(3):
        spool.append(event(1, i))
    assert len(spool.next_batch(10)) == 3


def test_spool_that_cannot_be_made_on_disk_runs_in_memory_and_returns_to_disk(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "data"
    blocked.write_text("a file where the data directory should be")
    spool = Spool(blocked / "spool.sqlite", max_bytes=10**7)
    for i in range(3):
        spool.append(event(2, i))
    spool.flush()
    assert spool.depth() == 4  # three events and the error event saying why
    blocked.unlink()
    blocked.mkdir()
    spool._memory_since = 0.0  # its next retry is due
    assert spool.check()
    spool.close()
    assert Spool(blocked / "spool.sqlite", max_bytes=10**7).depth() == 4
