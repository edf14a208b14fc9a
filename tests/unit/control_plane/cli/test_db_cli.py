"""`edgefleet db upgrade|status`, `backup` and `restore` as an operator runs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.control_plane.cli.main import app
from edgefleet.control_plane.core.migrate import head_revision

FIXTURE = Path(__file__).parents[3] / "fixtures" / "db" / "edgefleet-0.1-2026-12-07.sqlite"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in ("EDGEFLEET_DATABASE_URL", "EDGEFLEET_SHARED_DIR", "EDGEFLEET_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EDGEFLEET_KEY_PASSPHRASE", "a passphrase")
    return CliRunner()


def test_db_upgrade_brings_a_0_1_database_to_this_release(
    tmp_path: Path, runner: CliRunner
) -> None:
    data = tmp_path / "cp"
    data.mkdir()
    shutil.copyfile(FIXTURE, data / "control-plane.db")
    status = runner.invoke(app, ["db", "status", "--data-dir", str(data)])
    assert status.exit_code == 0 and "revision None" in status.output
    upgraded = runner.invoke(app, ["db", "upgrade", "--data-dir", str(data)])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"revision {head_revision()}" in upgraded.output
    status = runner.invoke(app, ["db", "status", "--data-dir", str(data), "--json"])
    assert f'"current": "{head_revision()}"' in status.output


def test_backup_then_restore_from_the_command_line(tmp_path: Path, runner: CliRunner) -> None:
    data = tmp_path / "cp"
    init = runner.invoke(app, ["keys", "init", "--data-dir", str(data), "--root-keys", "1",
                               "--root-threshold", "1"])  # fmt: skip
    assert init.exit_code == 0, init.output
    archive = tmp_path / "b.tar"
    done = runner.invoke(app, ["backup", str(archive), "--data-dir", str(data)])
    assert done.exit_code == 0, done.output
    assert archive.stat().st_mode & 0o077 == 0
    shutil.rmtree(data)
    done = runner.invoke(app, ["restore", str(archive), "--data-dir", str(data)])
    assert done.exit_code == 0, done.output
    assert "re-signed targets v2" in done.output.replace("\n", " ")
    missing = runner.invoke(app, ["restore", str(tmp_path / "nope.tar"), "--data-dir", str(data)])
    assert missing.exit_code == 1
