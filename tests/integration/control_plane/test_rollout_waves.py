"""Staged rollouts against a real Mosquitto with simulated devices.

Canary aborts (smoke-test failure, error rate in service), rollback of the wave,
the rest of the fleet untouched; an offline device catching up; pause / resume;
manual promotion; a restart of the control plane mid-rollout; the audit log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from tests.support.polling import wait_until
from tests.support.rollout_fleet import NEW, OLD, Behaviour, Rig, add_bundle

pytestmark = pytest.mark.integration

CANARY_WAVES = [1, "50%", "100%"]


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


def test_bundle_failing_its_smoke_test_aborts_at_the_canary_and_spares_the_fleet(
    rig: Rig,
) -> None:
    devices = rig.fleet(4, Behaviour(smoke_test_fails=True))
    rollout = rig.create(waves=CANARY_WAVES, gates={"max_install_failure_rate": 0.0})
    done = rig.ended(rollout["id"])

    assert done["state"] == "aborted"
    assert "wave 1 gate breached: install_failure_rate 1.000 > 0.000" in done["reason"]
    assert "(1 of 1 devices failed)" in done["reason"]
    assert done["counts"] == {"failed": 1, "cancelled": 3}
    assert [w["state"] for w in done["wave_status"]] == ["breached", "cancelled", "cancelled"]
    assert sum(len(d.offers) for d in devices) == 1
    assert all(d.bundle_id == OLD for d in devices)
    actions = [e["action"] for e in rig.get("/audit", rollout_id=rollout["id"])]
    assert actions[0] == "rollout.abort" and actions[-1] == "rollout.create"


def test_bundle_with_high_error_rate_in_service_is_rolled_back_at_the_canary(rig: Rig) -> None:
    devices = rig.fleet(4, Behaviour(error_rate=0.4))
    rollout = rig.create(
        waves=CANARY_WAVES,
        soak_seconds=0.5,
        gates={"max_install_failure_rate": 0.0, "max_error_rate": 0.05, "min_inferences": 100},
    )
    done = rig.ended(rollout["id"])

    assert done["state"] == "aborted"
    assert "error_rate 0.400 > 0.050 (80 errors / 200 inferences)" in done["reason"]
    canary = next(d for d in devices if d.offers)
    wait_until(lambda: rig.get(f"/rollouts/{rollout['id']}")["counts"].get("rolled_back") == 1)
    assert canary.commands == ["rollback"] and canary.bundle_id == OLD
    assert all(d.bundle_id == OLD for d in devices)
    assert sum(len(d.offers) for d in devices) == 1
    (abort,) = rig.get("/audit", rollout_id=rollout["id"], action="rollout.abort")
    assert abort["actor"].startswith("orchestrator@")
    assert abort["detail"]["rolled_back"] == [canary.device_id]
    gate = next(g for g in abort["detail"]["gates"] if g["name"] == "error_rate")
    assert (gate["value"], gate["threshold"], gate["ok"]) == (0.4, 0.05, False)


def test_healthy_bundle_goes_through_every_wave_with_latency_compared_to_the_old_bundle(
    rig: Rig,
) -> None:
    devices = rig.fleet(4, Behaviour(error_rate=0.0, p95_ms=8))
    for device in devices:
        device.behaviours[OLD] = Behaviour(p95_ms=10)
    rollout = rig.create(
        waves=CANARY_WAVES,
        soak_seconds=0.2,
        gates={"max_error_rate": 0.05, "max_p95_latency_ratio": 1.5, "min_inferences": 1},
    )
    wait_until(lambda: any(d.offers for d in devices))
    for device in devices:
        if not device.offers:
            device.send_inference(OLD)  # devices still on the previous bundle
    done = rig.ended(rollout["id"])

    assert done["state"] == "complete", done
    assert done["counts"] == {"active": 4}
    assert [w["size"] for w in done["wave_status"]] == [1, 1, 2]
    first = {g["name"]: g for g in done["wave_status"][0]["gates"]}
    assert first["p95_latency_ratio"]["value"] == pytest.approx(1.0)  # 10 ms buckets on both
    assert all(d.bundle_id == NEW for d in devices)


def test_offline_device_gets_the_bundle_when_it_comes_back(rig: Rig) -> None:
    devices = rig.fleet(3)
    late = devices[2]
    late.go_offline()
    wait_until(lambda: not rig.get(f"/devices/{late.device_id}")["online"], what="offline")
    rollout = rig.create(waves=[1, "100%"])

    waiting = rig.until(
        rollout["id"], "waits for offline", lambda r: r["phase"] == "waiting_offline"
    )
    assert waiting["state"] == "in_progress"
    assert {d["device_id"]: d["state"] for d in waiting["devices"]}[late.device_id] == "offered"
    late.connect()
    done = rig.ended(rollout["id"])
    assert done["state"] == "complete"
    assert late.bundle_id == NEW


def test_paused_rollout_starts_no_new_wave_until_resumed(rig: Rig) -> None:
    devices = rig.fleet(3)
    for device in devices:
        device.holding = True
    rollout = rig.create(waves=[1, "100%"])
    paused = rig.post(f"/rollouts/{rollout['id']}/pause", {"reason": "weekend freeze"})
    assert paused["state"] == "paused"
    for device in devices:
        device.release()
    rig.until(rollout["id"], "canary active", lambda r: r["counts"].get("active") == 1)
    # Without soak, any pass would start wave 2 now; a paused rollout does not move.
    assert rig.api is not None
    rig.api.app.state.orchestrator.tick()  # type: ignore[attr-defined]
    assert rig.get(f"/rollouts/{rollout['id']}")["wave"] == 1
    assert sum(len(d.offers) for d in devices) == 1
    resumed = rig.post(f"/rollouts/{rollout['id']}/resume")
    assert resumed["state"] == "in_progress"
    assert rig.ended(rollout["id"])["state"] == "complete"
    actions = [e["action"] for e in rig.get("/audit", rollout_id=rollout["id"])]
    assert "rollout.pause" in actions and "rollout.resume" in actions
    (pause,) = rig.get("/audit", rollout_id=rollout["id"], action="rollout.pause")
    assert pause["reason"] == "weekend freeze"


def test_manual_rollout_waits_for_promote_between_waves(rig: Rig) -> None:
    devices = rig.fleet(3)
    rollout = rig.create(waves=[1, "100%"], mode="manual")
    rig.until(rollout["id"], "awaiting promotion", lambda r: r["phase"] == "awaiting_promotion")
    assert sum(len(d.offers) for d in devices) == 1
    rig.post(f"/rollouts/{rollout['id']}/promote", {"reason": "canary looks fine"})
    assert rig.ended(rollout["id"])["state"] == "complete"
    assert rig.post(f"/rollouts/{rollout['id']}/promote", status=409)


def test_operator_rollback_switches_every_device_back(rig: Rig) -> None:
    devices = rig.fleet(3)
    rollout = rig.create(strategy="blue_green")
    assert rig.ended(rollout["id"])["state"] == "complete"
    rolled = rig.post(f"/rollouts/{rollout['id']}/rollback", {"reason": "switch back"})
    assert rolled["state"] == "rolled_back"
    rig.until(rollout["id"], "all rolled back", lambda r: r["counts"] == {"rolled_back": 3})
    assert all(d.bundle_id == OLD for d in devices)


def test_newest_rollout_supersedes_unfinished_devices_of_an_older_one(rig: Rig) -> None:
    rig.fleet(3)
    add_bundle(rig.engine, "digits-3-x86", 3)
    older = rig.create(waves=[1, "100%"], mode="manual")
    rig.until(older["id"], "awaiting promotion", lambda r: r["phase"] == "awaiting_promotion")
    newer = rig.post("/rollouts", {"bundle_id": "digits-3-x86"}, status=201)
    states = sorted(d["state"] for d in rig.get(f"/rollouts/{older['id']}")["devices"])
    assert states == ["active", "superseded", "superseded"]
    assert rig.ended(newer["id"])["state"] == "complete"


def test_control_plane_restart_mid_rollout_continues_where_it_was(rig: Rig) -> None:
    devices = rig.fleet(3)
    rollout = rig.create(waves=[1, "100%"], soak_seconds=1.5)
    rig.until(rollout["id"], "canary soaking", lambda r: r["phase"] == "soaking")
    rig.stop_control_plane()
    rig.start_control_plane()
    done = rig.ended(rollout["id"])
    assert done["state"] == "complete"
    assert all(d.bundle_id == NEW for d in devices)
    assert sum(len(d.offers) for d in devices) == 3  # nobody offered twice
