"""A disk filled beside the agent's spool, on a real 8 MiB tmpfs: what the spool gives
back by its drop policy, how long the disk worker's watch takes to do it, and what one
usage walk of the data dir costs (the worker does one every ``watch_interval_s``).

Needs root (``mount -t tmpfs``)::

    PYTHONPATH=. .venv/bin/python bench/disk_full.py
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from edgefleet.agent.config import parse_config
from edgefleet.agent.storage import DiskWorker
from edgefleet.agent.telemetry.spool import Spool
from edgefleet.messages import TelemetryEvent
from tests.support.small_disk import fill

MIB = 2**20


def run(disk: Path) -> None:
    config = parse_config(
        f'device_id = "dev-benchdisk01"\nprofile = "p"\ndata_dir = "{disk}"\n'
        f'trust_root = "{disk}/root.json"\n'
        "[disk]\nbudget_mb = 7\nreserve_mb = 1\n[disk.shares]\nspool = 0.5\n"
    )
    spool = Spool(disk / "spool.sqlite", max_bytes=3 * MIB)
    worker = DiskWorker(config, spool=spool, spool_cap_bytes=3 * MIB, job_lock=threading.Lock(),
                        shadow_running=lambda: False)  # fmt: skip
    for i in range(3000):
        spool.append(TelemetryEvent(kind="inference", priority=2 if i % 2 else 1,
                                    data={"n": i, "pad": "p" * 500}))  # fmt: skip
    spool.flush()
    held, rows = spool.disk_bytes(), spool.depth()
    fill(disk, leave_free=256 * 1024)
    started = time.perf_counter()
    worker.watch()
    watch_ms = (time.perf_counter() - started) * 1000
    summary = spool.drop_summary() or {}
    print(f"spool before: {held / MIB:.2f} MiB, {rows} rows; filesystem 256 KiB free "
          "(reserve 1 MiB)")  # fmt: skip
    print(
        f"spool after:  {spool.disk_bytes() / MIB:.2f} MiB, {spool.depth()} rows; "
        f"dropped per priority {summary.get('dropped')}; filesystem "
        f"{shutil.disk_usage(disk).free // 1024} KiB free; watch took {watch_ms:.0f} ms"
    )
    started = time.perf_counter()
    for _ in range(100):
        worker.budget.usage()
    print(f"usage walk of the data dir: {(time.perf_counter() - started) * 10:.2f} ms")
    spool.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        disk = Path(tmp)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
        try:
            run(disk)
        finally:
            subprocess.run(["umount", "-l", str(disk)], check=False)


if __name__ == "__main__":
    main()
