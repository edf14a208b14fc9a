"""A/B experiments against a real Mosquitto and simulated devices with real MQTT sessions.

Each arm goes out as a rollout; the devices send inference windows with the error rate
their bundle has; the control plane's scheduled pass tests the arms sequentially, and on
a significant difference promotes the winner by a rollout (or rolls the newer loser
back), writing each decision to the audit log with its numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.cli import experiments as experiment_cli
from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.client import ApiClient
from tests.support.polling import wait_until
from tests.support.rollout_fleet import NEW, OLD, Behaviour, Rig, SimDevice

pytestmark = pytest.mark.integration

COHORT = 6  # of 8 devices: the other 2 are "the rest" the winner is promoted to


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Rig]:
    instance = Rig(tmp_path, broker)
    instance.start_control_plane()
    try:
        yield instance
    finally:
        for device in instance.devices:
            device.stop()
        instance.stop_control_plane()


@pytest.fixture
def run_cli(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The real CLI and API client, carried to the rig's control plane without a socket."""
    assert rig.api is not None
    transport = rig.api._transport

    def client(api: str) -> ApiClient:
        real = ApiClient(api)
        real._http = httpx.Client(transport=transport, base_url="http://testserver/api/v1")
        return real

    monkeypatch.setattr(experiment_cli, "ApiClient", client)
    monkeypatch.setattr(experiment_cli.console, "width", 200)

    def run(*args: str) -> str:
        result = CliRunner().invoke(cli, ["experiment", *args])
        assert result.exit_code == 0, result.output
        return result.output

    return run


def _run_until_decided(rig: Rig, experiment_id: int) -> dict[str, Any]:
    """Every device sends a telemetry window per poll until the experiment has decided."""

    def decided() -> dict[str, Any] | None:
        for device in rig.devices:
            device.send_inference()
        experiment = rig.get(f"/experiments/{experiment_id}")
        return experiment if experiment["state"] != "running" else None

    return dict(wait_until(decided, "experiment decided", timeout=60))


def _on(devices: list[SimDevice], bundle: str) -> bool:
    return all(d.bundle_id == bundle for d in devices)


def _create(rig: Rig, cohort: list[str]) -> dict[str, Any]:
    return dict(
        rig.post(
            "/experiments",
            {
                "name": "digits-v2",
                "bundle_a": OLD,
                "bundle_b": NEW,
                "selector": {"device_ids": cohort},
                "metric": "error_rate",
                "min_samples": 200,
            },
            status=201,
        )
    )


def test_the_arm_with_fewer_errors_wins_and_is_promoted_to_the_rest(rig: Rig, run_cli: Any) -> None:
    devices = rig.fleet(8)
    for device in devices:
        device.behaviours[OLD] = Behaviour(error_rate=0.10)
        device.behaviours[NEW] = Behaviour(error_rate=0.02)
    cohort = [d.device_id for d in devices[:COHORT]]
    experiment = _create(rig, cohort)
    arms = {arm["arm"]: arm for arm in experiment["arms"]}
    assert sorted(arms["A"]["devices"] + arms["B"]["devices"]) == sorted(cohort)
    assert len(arms["A"]["devices"]) == len(arms["B"]["devices"]) == COHORT // 2
    arm_b = [d for d in devices if d.device_id in arms["B"]["devices"]]
    wait_until(lambda: _on(arm_b, NEW), "arm B installed")

    decided = _run_until_decided(rig, experiment["id"])
    assert decided["state"] == "promoted" and decided["winner"] == "B"
    result = decided["results"]["error_rate"]
    assert result["significant"] and result["mean_b"] < result["mean_a"]
    assert result["likelihood_ratio"] >= 1 / result["alpha"]

    rollout_id = wait_until(
        lambda: rig.get(f"/experiments/{experiment['id']}")["promotion_rollout_id"],
        "promotion rollout created",
    )
    promotion = rig.ended(rollout_id)
    assert promotion["bundle_id"] == NEW and promotion["state"] == "complete"
    promoted = {d["device_id"] for d in promotion["devices"]}
    assert promoted == {d.device_id for d in devices} - set(arms["B"]["devices"])
    assert _on(devices, NEW)

    (decision,) = rig.get("/audit", action="experiment.decide")
    assert decision["detail"]["winner"] == "B"
    assert decision["detail"]["results"]["error_rate"]["n_a"] >= 200
    (promote,) = rig.get("/audit", action="experiment.promote")
    assert promote["detail"]["rollout_id"] == rollout_id
    shown = run_cli("status", str(experiment["id"]))
    assert "promoted" in shown and "error_rate *" in shown and "significant" in shown


def test_a_newer_arm_with_more_errors_loses_and_is_rolled_back(rig: Rig) -> None:
    devices = rig.fleet(COHORT)
    for device in devices:
        device.behaviours[OLD] = Behaviour(error_rate=0.02)
        device.behaviours[NEW] = Behaviour(error_rate=0.15)
    experiment = _create(rig, [d.device_id for d in devices])
    arm_b = next(a for a in experiment["arms"] if a["arm"] == "B")
    wait_until(
        lambda: _on([d for d in devices if d.device_id in arm_b["devices"]], NEW),
        "arm B installed",
    )

    decided = _run_until_decided(rig, experiment["id"])
    assert decided["state"] == "promoted" and decided["winner"] == "A"
    rollout = rig.until(arm_b["rollout_ids"][0], "arm B rolled back", lambda r: (
        r["state"] == "rolled_back" and r["counts"].get("rolled_back") == len(arm_b["devices"])
    ))  # fmt: skip
    assert rollout["bundle_id"] == NEW
    assert _on(devices, OLD)
    (promote,) = wait_until(lambda: rig.get("/audit", action="experiment.promote"), "promoted")
    assert promote["detail"]["rollout_id"] is None  # every device of the profile was in it
    assert promote["detail"]["rolled_back_rollouts"] == arm_b["rollout_ids"]


def test_an_operator_stops_an_experiment_from_the_cli_and_the_audit_says_why(
    rig: Rig, run_cli: Any
) -> None:
    devices = rig.fleet(2)
    created = run_cli(
        "create", "--name", "try", "--a", OLD, "--b", NEW,
        *(arg for d in devices for arg in ("--device", d.device_id)),
    )  # fmt: skip
    assert "experiment 1 running" in created and "on 1 devices" in created
    assert "experiment 1 stopped" in run_cli("stop", "1", "--reason", "wrong cohort")
    assert rig.get("/experiments/1")["state"] == "stopped"
    (entry,) = rig.get("/audit", action="experiment.stop")
    assert entry["reason"] == "wrong cohort"
    assert "try" in run_cli("status")


def test_bandit_mode_moves_devices_toward_the_arm_with_fewer_errors(rig: Rig) -> None:
    devices = rig.fleet(COHORT)
    for device in devices:
        device.behaviours[OLD] = Behaviour(error_rate=0.10)
        device.behaviours[NEW] = Behaviour(error_rate=0.02)
    experiment = rig.post(
        "/experiments",
        {
            "name": "bandit", "bundle_a": OLD, "bundle_b": NEW, "mode": "bandit",
            "selector": {"device_ids": [d.device_id for d in devices]},
            "min_samples": 10_000_000,  # never decides: only the bandit acts
            "reassign_every_s": 0.2, "min_share": 0.1,
        },
        status=201,
    )  # fmt: skip

    def shifted() -> dict[str, Any] | None:
        for device in devices:
            device.send_inference()
        current = rig.get(f"/experiments/{experiment['id']}")
        arm_b = next(a for a in current["arms"] if a["arm"] == "B")
        # the moved devices get B through a rollout of it, recorded after the move
        return current if current["share_b"] >= 0.8 and len(arm_b["rollout_ids"]) > 1 else None

    current = wait_until(shifted, "share moved to arm B")
    arm_b = next(a for a in current["arms"] if a["arm"] == "B")
    assert len(arm_b["devices"]) == round(0.9 * COHORT)  # the share stops at 1 - min_share
    on_b = [d for d in devices if d.device_id in arm_b["devices"]]
    wait_until(lambda: _on(on_b, NEW), "moved devices run arm B")
    moves = rig.get("/audit", action="experiment.reassign")
    assert any(m["detail"]["moved"] and m["detail"]["p_b_better"] > 0.9 for m in moves)
    assert current["state"] == "running"


def test_bandit_in_requests_mode_moves_each_devices_share_toward_its_better_arm(
    rig: Rig,
) -> None:
    devices = rig.fleet(4)
    older_b = rig.post(
        "/experiments",
        {"name": "older-b", "bundle_a": NEW, "bundle_b": OLD, "mode": "requests"},
        status=422,
    )
    assert "newer release" in older_b["detail"]  # a device takes no older bundle beside its own
    on_accuracy = rig.post(
        "/experiments",
        {"name": "acc", "bundle_a": OLD, "bundle_b": NEW, "mode": "requests",
         "metric": "accuracy"},
        status=422,
    )  # fmt: skip
    assert "labels are counted per model" in on_accuracy["detail"]
    for i, device in enumerate(devices):  # B is better on the first two devices only
        device.behaviours[OLD] = Behaviour(error_rate=0.10 if i < 2 else 0.02)
        device.behaviours[NEW] = Behaviour(error_rate=0.02 if i < 2 else 0.10)
    experiment = rig.post(
        "/experiments",
        {
            "name": "per-device", "bundle_a": OLD, "bundle_b": NEW, "mode": "requests_bandit",
            "selector": {"device_ids": [d.device_id for d in devices]},
            "metric": "error_rate", "min_samples": 10_000_000,  # only the bandit acts
            "reassign_every_s": 0.2, "min_share": 0.1,
        },
        status=201,
    )  # fmt: skip
    assert experiment["shares"] == {d.device_id: 0.5 for d in devices}
    wait_until(lambda: _on(devices, OLD), "arm A active on every device")

    def shifted() -> dict[str, Any] | None:
        for device in devices:  # each device answers with both arms: a window per bundle
            device.send_inference(OLD)
            device.send_inference(NEW)
        current = rig.get(f"/experiments/{experiment['id']}")
        shares = [current["shares"][d.device_id] for d in devices]
        return current if min(shares[:2]) >= 0.8 and max(shares[2:]) <= 0.2 else None

    current = wait_until(shifted, "each device's share moved toward its better arm")
    # No device changed arm: every device still serves both, arm A stays active.
    assert all(a["devices"] == sorted(d.device_id for d in devices) for a in current["arms"])
    assert _on(devices, OLD) and current["state"] == "running"
    # The share reached each device as a split command beside the challenger's shadow.
    assert all(d.commands.count("shadow_start") >= 3 for d in devices)
    reshares = rig.get("/audit", action="experiment.reshare")
    assert any(r["detail"]["devices"][devices[0].device_id]["p_b_better"] > 0.9 for r in reshares)

    stopped = rig.post(f"/experiments/{experiment['id']}/stop", {"reason": "enough"})
    assert stopped["state"] == "stopped"
    wait_until(lambda: all("shadow_stop" in d.commands for d in devices), "the challenger dropped")
