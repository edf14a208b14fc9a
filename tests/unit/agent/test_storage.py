"""The disk budget (a share per use, the whole budget, the filesystem's reserve) and
garbage collection of the data dir, on real files under a temporary directory."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from edgefleet.agent.config import DiskConfig, DiskShares, parse_config
from edgefleet.agent.errors import ConfigError, DiskBudgetError
from edgefleet.agent.install.journal import Journal, JournalRecord
from edgefleet.agent.storage import DiskBudget, DiskWorker, collect_garbage, spool_cap
from edgefleet.agent.telemetry.spool import Spool
from edgefleet.messages import TelemetryEvent

MIB = 2**20
OLD = time.time() - 10 * 86400


def write(path: Path, size: int, *, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def budget(tmp_path: Path, mb: float = 10, **shares: float) -> DiskBudget:
    return DiskBudget(tmp_path, DiskConfig(budget_mb=mb, reserve_mb=0, shares=DiskShares(**shares)))


def test_usage_puts_every_data_dir_entry_under_its_use(tmp_path: Path) -> None:
    write(tmp_path / "models/digits/slots/a/model.onnx", 3000)
    write(tmp_path / "downloads/parts/abc.b.tar.part", 2000)
    write(tmp_path / "spool.sqlite", 1000)
    write(tmp_path / "spool.sqlite-wal", 500)
    write(tmp_path / "logs/agent.log", 700)
    write(tmp_path / "tuf/metadata/timestamp.json", 100)
    write(tmp_path / "agent-versions/1.2/site/x.py", 50)
    write(tmp_path / "status.json", 10)
    usage = budget(tmp_path).usage()
    by_use = {u.use: u.used for u in usage.uses}
    # Allocated blocks count (a 500-byte file takes a whole block on most filesystems).
    assert by_use["slots"] >= 3000 and by_use["staging"] >= 2000 and by_use["spool"] >= 1500
    assert by_use["logs"] >= 700 and by_use["metadata"] >= 100
    assert by_use["agent_versions"] >= 50 and by_use["other"] >= 10
    assert by_use["shadow"] == 0
    assert usage.used == sum(by_use.values())


def test_a_write_over_its_use_share_is_refused_naming_the_use_and_the_budget(
    tmp_path: Path,
) -> None:
    write(tmp_path / "models/digits/slots/a/model.onnx", 2 * MIB)
    with pytest.raises(DiskBudgetError) as refused:
        budget(tmp_path, slots=0.3).check({"staging": MIB, "slots": 2 * MIB})
    assert refused.value.use == "slots"
    assert "shares.slots" in refused.value.reason and "10 MiB disk budget" in refused.value.reason


def test_the_directory_a_write_replaces_is_not_counted_against_its_share(
    tmp_path: Path,
) -> None:
    write(tmp_path / "models/digits/slots/b/model.onnx", 2 * MIB)
    check = budget(tmp_path, slots=0.3)
    check.check({"slots": 2 * MIB}, freed={"slots": 2 * MIB})  # fits once b is emptied
    with pytest.raises(DiskBudgetError):
        check.check({"slots": 2 * MIB})


def test_all_uses_together_are_held_to_the_whole_budget(tmp_path: Path) -> None:
    write(tmp_path / "logs/agent.log", 7 * MIB)
    with pytest.raises(DiskBudgetError) as refused:
        budget(tmp_path, logs=1.0).check({"staging": 2 * MIB, "slots": 2 * MIB})
    assert refused.value.use == "budget" and "[disk] budget_mb" in refused.value.reason


def test_the_filesystem_reserve_refuses_what_the_budget_would_allow(tmp_path: Path) -> None:
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize / MIB
    config = DiskConfig(budget_mb=free_mb * 4, reserve_mb=free_mb)
    with pytest.raises(DiskBudgetError) as refused:
        DiskBudget(tmp_path, config).check({"staging": MIB, "slots": MIB})
    assert refused.value.use == "disk" and "[disk] reserve_mb" in refused.value.reason


def test_disk_config_forbids_unknown_keys_and_shares_above_one(tmp_path: Path) -> None:
    base = f'device_id = "dev-disk00001"\nprofile = "p"\ndata_dir = "{tmp_path}"\n'
    base += f'trust_root = "{tmp_path}/root.json"\n'
    config = parse_config(base + "[disk]\nbudget_mb = 64\n[disk.shares]\nspool = 0.25\n")
    assert config.disk.budget_mb == 64 and config.disk.shares.spool == 0.25
    legacy = parse_config(base + "disk_budget_mb = 100\n")  # an agent.toml of before [disk]
    assert legacy.disk.budget_mb == 100
    with pytest.raises(ConfigError) as unknown:
        parse_config(base + "[disk]\nbudget = 64\n")
    assert unknown.value.field == "disk.budget"
    with pytest.raises(ConfigError):
        parse_config(base + "[disk.shares]\nlogs = 1.5\n")


def journal(model_dir: Path, record: JournalRecord) -> None:
    """An install under way, as its journal records it."""
    model_dir.mkdir(parents=True, exist_ok=True)
    Journal(model_dir).begin(record)


def test_gc_removes_orphans_and_keeps_slots_held_targets_and_fresh_parts(tmp_path: Path) -> None:
    digits = tmp_path / "models/digits"
    slot_a = write(digits / "slots/a/model.onnx", 100)
    slot_b = write(digits / "slots/b/model.onnx", 100)
    stray = write(digits / "slots/c/model.onnx", 100)
    journal(digits, JournalRecord(bundle_id="b-7", target="digits-7.tar", release=7,
                                  ))  # fmt: skip
    parts = tmp_path / "downloads/parts"
    held = write(parts / "aa11.digits-7.tar.part", 100, mtime=OLD)
    orphan = write(parts / "bb22.digits-5.tar.part", 100, mtime=OLD)
    fresh = write(parts / "cc33.digits-6.tar.part", 100)
    superseded = write(tmp_path / "downloads/digits-4.tar", 100, mtime=OLD)
    collected = collect_garbage(tmp_path, part_grace_s=3600, shadow_running=False)
    assert slot_a.exists() and slot_b.exists() and held.exists() and fresh.exists()
    assert not stray.exists() and not orphan.exists() and not superseded.exists()
    assert collected.freed >= 300
    assert sorted(collected.removed) == [
        "downloads/digits-4.tar",
        "downloads/parts/bb22.digits-5.tar.part",
        "models/digits/slots/c",
    ]


def test_gc_keeps_the_trusted_root_and_newer_ones_and_drops_older_versions(
    tmp_path: Path,
) -> None:
    metadata = tmp_path / "tuf/metadata"
    history = metadata / "root_history"
    for version in (1, 2, 3):
        write(history / f"{version}.root.json", 10)
    (metadata / "root.json").write_text(json.dumps({"signed": {"version": 2}}))
    write(metadata / "timestamp.json", 10)
    crash_leftover = write(metadata / "tmpab12cd", 10, mtime=OLD)
    collect_garbage(tmp_path, part_grace_s=3600, shadow_running=False)
    assert sorted(p.name for p in history.iterdir()) == ["2.root.json", "3.root.json"]
    assert (metadata / "timestamp.json").exists() and not crash_leftover.exists()


def test_gc_keeps_current_previous_and_pending_agent_versions_only(tmp_path: Path) -> None:
    root = tmp_path / "agent-versions"
    for version in ("1.0", "1.1", "1.2", "1.3"):
        write(root / version / "site/edgefleet.py", 10)
    write(root / ".staging-b-9/bundle.tar", 10)
    (root / "current.json").write_text(json.dumps({"version": "1.2", "previous": "1.1"}))
    (root / "handover.json").write_text(json.dumps({"version": "1.3", "bundle_id": "x"}))
    collect_garbage(tmp_path, part_grace_s=3600, shadow_running=False)
    assert sorted(p.name for p in root.iterdir()) == [
        "1.1", "1.2", "1.3", "current.json", "handover.json"
    ]  # fmt: skip


def test_gc_removes_the_shadow_directory_only_once_no_shadow_runs(tmp_path: Path) -> None:
    shadow = write(tmp_path / "shadow/model.onnx", 10)
    collect_garbage(tmp_path, part_grace_s=0, shadow_running=True)
    assert shadow.exists()
    collect_garbage(tmp_path, part_grace_s=0, shadow_running=False)
    assert not shadow.parent.exists()


def test_gc_waits_while_an_install_job_holds_the_worker(tmp_path: Path) -> None:
    orphan = write(tmp_path / "downloads/parts/dd.x.tar.part", 10, mtime=OLD)
    config = parse_config(
        f'device_id = "dev-disk00001"\nprofile = "p"\ndata_dir = "{tmp_path}"\n'
        f'trust_root = "{tmp_path}/root.json"\n'
    )
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=MIB)
    lock = threading.Lock()
    worker = DiskWorker(config, spool=spool, spool_cap_bytes=MIB, job_lock=lock,
                        shadow_running=lambda: False)  # fmt: skip
    with lock:
        assert worker.collect() is False
    assert orphan.exists()
    assert worker.collect() is True
    assert not orphan.exists() and worker.status()["gc_runs"] == 1
    spool.close()


def test_spool_cap_follows_free_space_below_the_reserve() -> None:
    assert spool_cap(8 * MIB, MIB, free=100 * MIB, reserve=MIB) == 8 * MIB
    lowered = spool_cap(8 * MIB, 4 * MIB, free=MIB // 2, reserve=MIB)
    assert lowered < 4 * MIB - MIB // 2  # gives back the shortfall, and some slack


def test_a_lowered_spool_cap_drops_by_the_spool_policy_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=8 * MIB)
    for i in range(3000):
        spool.append(TelemetryEvent(kind="inference", priority=2 if i % 2 else 1,
                                    data={"n": i, "pad": "p" * 200}))  # fmt: skip
    spool.flush()
    before = spool.depth()
    assert spool.limit(128 * 1024) == 128 * 1024
    summary = spool.drop_summary()
    assert summary is not None and spool.depth() < before
    # Every row of priority 2 goes before any of priority 1 (the spool's policy).
    assert summary["dropped"]["2"] == before // 2
    spool.close()
