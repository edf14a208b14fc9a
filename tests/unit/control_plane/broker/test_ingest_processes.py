"""How many ingest worker processes a control plane runs, and what it makes of their
status lines (anything a dying child may print is survived)."""

from __future__ import annotations

import json
from pathlib import Path

from edgefleet.control_plane.broker.ingest_worker import IngestProcess
from edgefleet.control_plane.broker.telemetry import ingest_processes
from edgefleet.control_plane.core.settings import Settings


def test_ingest_leaves_the_api_process_on_postgresql_only_unless_set(tmp_path: Path) -> None:
    pg = "postgresql+psycopg://postgres@127.0.0.1/x"
    assert ingest_processes(Settings(data_dir=tmp_path)) == 0  # SQLite
    assert ingest_processes(Settings(data_dir=tmp_path, database_url=pg)) == 2
    assert ingest_processes(Settings(data_dir=tmp_path, database_url=pg, ingest_processes=0)) == 0
    assert ingest_processes(Settings(data_dir=tmp_path, ingest_processes=2)) == 2


def test_status_lines_are_read_and_garbage_is_ignored(tmp_path: Path) -> None:
    process = IngestProcess(
        settings=Settings(data_dir=tmp_path), client_id="cp-x-ingest-0", shared_group="g" * 8
    )
    good = {
        "subscribed": True,
        "stored": 7,
        "shed": 1,
        "workers": [
            {"name": "cp-telemetry", "running": True, "restarts": 2,
             "last_death_at": "2026-01-01T00:00:00+00:00", "last_error": "ValueError: x"},
        ],
    }  # fmt: skip
    process._read_status(json.dumps(good).encode())
    assert process.subscribed.is_set() and process.status.stored == 7
    [worker] = process.status.workers
    assert worker.name == "cp-x-ingest-0/cp-telemetry" and worker.restarts == 2
    for garbage in (
        b"",
        b"not json",
        b"[]",
        b'{"subscribed": true}',
        b"{" * 10_000,
        b"[" * 100_000,
        b"\xff",
    ):
        process._read_status(garbage)
    assert process.status.stored == 7  # the last good line stands
