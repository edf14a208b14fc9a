"""`edgefleet rollout`: deadlines given as durations, and status showing timed-out devices."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.control_plane.cli import rollouts
from edgefleet.control_plane.cli.main import app as cli

ROLLOUT: dict[str, Any] = {
    "id": 7, "bundle_id": "digits-2", "state": "in_progress", "wave": 1, "wave_count": 1,
    "phase": "installing", "strategy": "canary", "mode": "automatic", "reason": None,
    "install_timeout_s": 1800.0, "wave_timeout_s": 7200.0,
    "wave_status": [{"wave": 1, "size": 2, "state": "installing", "deadline":
                     "2026-01-01T14:00:00Z", "counts": {"timed_out": 1, "active": 1},
                     "gates": []}],
    "devices": [
        {"device_id": "dev-a", "wave": 1, "state": "timed_out", "timed_out_in": "downloading",
         "late_state": None, "reason": "install deadline passed in downloading",
         "deadline_at": None, "clock_paused": False, "updated_at": "2026-01-01T12:30:00Z"},
        {"device_id": "dev-b", "wave": 1, "state": "offered", "timed_out_in": None,
         "late_state": None, "reason": None, "deadline_at": "2026-01-01T12:40:00Z",
         "clock_paused": True, "updated_at": "2026-01-01T12:00:00Z"},
    ],
}  # fmt: skip


class FakeClient:
    created: dict[str, Any] = {}
    actions: list[str] = []

    def __init__(self, _api: str) -> None:
        pass

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def create_rollout(self, **body: Any) -> dict[str, Any]:
        FakeClient.created = body
        return ROLLOUT

    def get_rollout(self, _rollout_id: int) -> dict[str, Any]:
        return ROLLOUT

    def act_on_rollout(self, _rollout_id: int, action: str, **_kw: Any) -> dict[str, Any]:
        FakeClient.actions.append(action)
        return ROLLOUT


@pytest.fixture(autouse=True)
def fake_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollouts, "ApiClient", FakeClient)
    monkeypatch.setattr(rollouts.console, "width", 200)  # whatever the terminal


def test_create_reads_the_timeouts_as_durations() -> None:
    args = ["rollout", "create", "--bundle", "digits-2", "--install-timeout", "30m",
            "--wave-timeout", "2h"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert FakeClient.created["install_timeout_s"] == 1800
    assert FakeClient.created["wave_timeout_s"] == 7200


def test_create_leaves_the_timeouts_to_the_server_when_not_given() -> None:
    result = CliRunner().invoke(cli, ["rollout", "create", "--bundle", "digits-2"])
    assert result.exit_code == 0, result.output
    assert FakeClient.created["install_timeout_s"] is None


def test_status_shows_the_deadline_and_timed_out_devices_with_their_last_state() -> None:
    result = CliRunner().invoke(cli, ["rollout", "status", "7", "--devices"])
    assert result.exit_code == 0, result.output
    assert "install timeout 30m · wave timeout 2h" in result.output
    assert "14:00:00" in result.output  # the wave's deadline
    timed_out = result.output.split("timed out", 1)[1]
    assert "dev-a" in timed_out and "downloading" in timed_out
    assert "paused (offline)" in result.output  # dev-b's clock


def test_retry_is_an_operator_command() -> None:
    result = CliRunner().invoke(cli, ["rollout", "retry", "7", "--reason", "rebooted"])
    assert result.exit_code == 0, result.output
    assert FakeClient.actions[-1] == "retry"
