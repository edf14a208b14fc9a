"""The agent's remote configuration: per-key refusal, the last good kept on disk, live
keys applied through the callback, restart keys pending, and flags on the endpoint."""

from __future__ import annotations

import json
from http import HTTPStatus
from pathlib import Path

from edgefleet.agent.config import AgentConfig, parse_config
from edgefleet.agent.remote_config import HELD_FILE, RemoteConfig
from edgefleet.messages import ConfigReport, DesiredConfig


def agent_config(tmp_path: Path, extra: str = "") -> AgentConfig:
    return parse_config(
        f"""
device_id = "dev-remote0001"
profile = "x86-64-gateway-onnx"
data_dir = "{tmp_path}"
trust_root = "{tmp_path / "root.json"}"
disk = {{ budget_mb = 100 }}
{extra}
"""
    )


class Recorder:
    def __init__(self) -> None:
        self.reports: list[ConfigReport] = []
        self.applied: list[tuple[AgentConfig, frozenset[str]]] = []

    def attach(self, remote: RemoteConfig) -> RemoteConfig:
        remote.attach(
            report=self.reports.append,
            on_apply=lambda config, keys: self.applied.append((config, keys)),
        )
        return remote


def test_live_keys_are_applied_and_reported_and_restart_keys_wait(tmp_path: Path) -> None:
    seen = Recorder()
    remote = seen.attach(RemoteConfig(agent_config(tmp_path)))
    report = remote.receive(
        DesiredConfig(
            version=4,
            values={
                "telemetry.window_s": 2,
                "logs.level": "DEBUG",
                "telemetry.spool_max_mb": 50,
                "flags.greeting": "hi",
            },
        )
    )
    assert seen.reports == [report]
    assert report.version == report.applied_version == 4 and report.refused == {}
    assert report.applied["telemetry.window_s"] == 2.0
    assert report.pending_restart == ["telemetry.spool_max_mb"]
    ((config, keys),) = seen.applied
    assert keys == {"telemetry.window_s", "logs.level"}
    assert config.telemetry.window_s == 2.0 and config.logs.level == "DEBUG"
    # Same version again (the retained message on reconnect): nothing changes, reported again.
    again = remote.receive(DesiredConfig(version=4, values=dict(report.applied)))
    assert again.refused == {} and len(seen.applied) == 1 and len(seen.reports) == 2


def test_a_bad_value_is_refused_with_its_reason_and_the_last_good_stays(tmp_path: Path) -> None:
    seen = Recorder()
    remote = seen.attach(RemoteConfig(agent_config(tmp_path)))
    remote.receive(DesiredConfig(version=1, values={"logs.level": "WARNING", "flags.on": True}))
    report = remote.receive(
        DesiredConfig(
            version=2,
            values={
                "logs.level": "LOUD",  # the schema refuses it
                "telemetry.spool_max_mb": 500,  # only the device knows its budget is 100
                "flags.on": False,
                "future.key": 1,  # a key a newer control plane knows
            },
        )
    )
    assert set(report.refused) == {"logs.level", "telemetry.spool_max_mb", "future.key"}
    assert "must be one of" in report.refused["logs.level"]
    assert "disk budget (100 MB)" in report.refused["telemetry.spool_max_mb"]
    assert "unknown key" in report.refused["future.key"]
    assert report.applied == {"logs.level": "WARNING", "flags.on": False}
    assert remote.config.logs.level == "WARNING"
    assert remote.flags() == {"on": False}


def test_the_last_good_configuration_survives_a_restart(tmp_path: Path) -> None:
    first = Recorder().attach(RemoteConfig(agent_config(tmp_path)))
    first.receive(
        DesiredConfig(
            version=7,
            values={"telemetry.spool_max_mb": 20, "drift.window": 200, "flags.mode": "b"},
        )
    )
    assert first.pending_restart() == ["telemetry.spool_max_mb"]
    restarted = RemoteConfig(agent_config(tmp_path))
    assert restarted.version == 7
    assert restarted.config.telemetry.spool_max_mb == 20.0  # in effect from the start
    assert restarted.config.drift.window == 200
    assert restarted.pending_restart() == []
    # Unset by the control plane: back to agent.toml's value.
    report = restarted.receive(DesiredConfig(version=8, values={}))
    assert report.applied == {} and restarted.config.drift.window is None
    assert report.pending_restart == ["telemetry.spool_max_mb"]  # 64 MB again, at restart


def test_an_older_version_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    remote = Recorder().attach(RemoteConfig(agent_config(tmp_path)))
    remote.receive(DesiredConfig(version=5, values={"flags.a": 1}))
    report = remote.receive(DesiredConfig(version=3, values={"flags.a": 2}))
    assert report.refused == {"version": "older than the version held (5)"}
    assert report.applied_version == 5 and remote.flags() == {"a": 1}


def test_an_unreadable_held_file_starts_from_agent_toml(tmp_path: Path) -> None:
    (tmp_path / HELD_FILE).write_text("{not json")
    remote = RemoteConfig(agent_config(tmp_path, "[telemetry]\nwindow_s = 3"))
    assert remote.version == 0 and remote.values == {}
    assert remote.config.telemetry.window_s == 3.0
    (tmp_path / HELD_FILE).write_text(json.dumps({"version": 2, "values": [1, 2]}))
    assert RemoteConfig(agent_config(tmp_path)).values == {}


def test_flags_are_served_by_name_and_refusals_are_answers(tmp_path: Path) -> None:
    remote = Recorder().attach(RemoteConfig(agent_config(tmp_path)))
    remote.receive(DesiredConfig(version=1, values={"flags.dark-mode": True, "flags.limit": 5}))
    assert remote.handle_flags("GET", []) == (
        HTTPStatus.OK,
        {"version": 1, "flags": {"dark-mode": True, "limit": 5}},
    )
    assert remote.handle_flags("GET", ["limit"]) == (
        HTTPStatus.OK,
        {"name": "limit", "value": 5, "version": 1},
    )
    status, body = remote.handle_flags("GET", ["absent"])
    assert status == HTTPStatus.NOT_FOUND and body["error"] == "no flag named absent is set"
    status, body = remote.handle_flags("GET", ["Not A Name" * 50])
    assert status == HTTPStatus.NOT_FOUND and "a flag name must match" in body["error"]
    status, _ = remote.handle_flags("POST", [])
    assert status == HTTPStatus.METHOD_NOT_ALLOWED
