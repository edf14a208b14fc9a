"""The spool and the disk worker on a real 8 MiB filesystem (a tmpfs) that another
file fills: the spool gives back room by its own drop policy, never raises to its
callers, and takes its share again once the disk has room."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.config import parse_config
from edgefleet.agent.storage import DiskWorker
from edgefleet.agent.telemetry.spool import Spool
from edgefleet.messages import TelemetryEvent
from tests.support.small_disk import fill, mounted_tmpfs

MIB = 2**20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk", 8) as path:
        yield path


def events(spool: Spool, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        spool.append(TelemetryEvent(kind="inference", priority=2 if i % 2 else 1,
                                    data={"n": i, "pad": "p" * 500}))  # fmt: skip
    spool.flush()


def test_a_disk_filled_beside_the_spool_makes_it_drop_by_policy_then_recover(
    small_disk: Path,
) -> None:
    config = parse_config(
        f'device_id = "dev-smalldisk1"\nprofile = "p"\ndata_dir = "{small_disk}"\n'
        f'trust_root = "{small_disk}/root.json"\n'
        "[disk]\nbudget_mb = 7\nreserve_mb = 1\n[disk.shares]\nspool = 0.5\n"
    )
    spool = Spool(small_disk / "spool.sqlite", max_bytes=3 * MIB)
    worker = DiskWorker(config, spool=spool, spool_cap_bytes=3 * MIB, job_lock=threading.Lock(),
                        shadow_running=lambda: False)  # fmt: skip
    events(spool, 3000)  # ~1.7 MiB of rows
    worker.watch()
    assert worker.cap_now == 3 * MIB and spool.drop_summary() is None
    held = spool.disk_bytes()

    filler = fill(small_disk, leave_free=256 * 1024)  # below the 1 MiB reserve
    worker.watch()

    assert worker.cap_now < held
    summary = spool.drop_summary()
    assert summary is not None and summary["dropped"].get("2", 0) > 0
    assert spool.disk_bytes() < held
    assert shutil.disk_usage(small_disk).free > 256 * 1024  # the drops gave room back
    # The spool keeps taking events under the lowered cap; nothing raises.
    events(spool, 500, start=3000)
    worker.watch()
    status = worker.status()
    assert status["spool_cap_bytes"] == worker.cap_now
    assert isinstance(status["uses"], dict) and status["uses"]["spool"]["used_bytes"] > 0

    filler.unlink()
    worker.watch()
    assert worker.cap_now == 3 * MIB
    spool.close()


def test_a_completely_full_disk_keeps_the_batch_in_memory_and_writes_it_later(
    small_disk: Path,
) -> None:
    spool = Spool(small_disk / "spool.sqlite", max_bytes=3 * MIB)
    events(spool, 200)
    filler = fill(small_disk, leave_free=0)
    for i in range(200, 800):  # flushes fail with SQLITE_FULL: the forwarder's case
        spool.append(TelemetryEvent(kind="drift", priority=1, data={"n": i, "pad": "q" * 500}))
    with pytest.raises(Exception, match="spool"):
        spool.flush()
    assert spool.depth() >= 200
    filler.unlink()
    spool.flush()
    assert spool.depth() >= 700  # what was buffered is on disk once there is room
    spool.close()
