"""Every wait of a rollout is bounded: install and wave deadlines against a real Mosquitto.

Simulated devices that go silent after ``downloading``, disconnect mid-verification,
or never answer the offer; short time-outs (seconds) keep the tests fast. A timed-out
device counts against the install gate, keeps the state it last reported, is not
timed out while offline, and is offered again only by ``retry``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from tests.support.polling import wait_until
from tests.support.rollout_fleet import NEW, OLD, Behaviour, Rig

pytestmark = pytest.mark.integration


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


def _device(rollout: dict[str, object], device_id: str) -> dict[str, object]:
    devices = rollout["devices"]
    assert isinstance(devices, list)
    return next(d for d in devices if d["device_id"] == device_id)


def _moment(text: object) -> datetime:
    assert isinstance(text, str)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_canary_silent_after_downloading_times_out_and_breaches_the_install_gate(
    rig: Rig,
) -> None:
    devices = rig.fleet(3)
    canary = devices[0]  # the first wave takes the first device by id
    canary.behaviours[NEW] = Behaviour(stall_after="downloading", stall_once=False)
    rollout = rig.create(
        waves=[1, "100%"], install_timeout_s=1.0, gates={"max_install_failure_rate": 0.0}
    )
    running = rig.until(
        rollout["id"], "canary downloading", lambda r: r["counts"].get("downloading") == 1
    )
    assert running["wave_status"][0]["deadline"] is not None
    assert _device(running, canary.device_id)["deadline_at"] is not None

    done = rig.ended(rollout["id"])
    assert done["state"] == "aborted"
    assert "install_failure_rate 1.000 > 0.000 (1 of 1 devices failed)" in done["reason"]
    row = _device(done, canary.device_id)
    assert row["state"] == "timed_out" and row["timed_out_in"] == "downloading"
    assert "install deadline passed" in str(row["reason"])
    assert done["counts"] == {"timed_out": 1, "cancelled": 2}
    assert canary.reported == ["downloading"]
    assert all(len(d.offers) == 0 for d in devices[1:])
    (timeout,) = rig.get("/audit", rollout_id=rollout["id"], action="rollout.timeout")
    assert timeout["detail"]["devices"] == {canary.device_id: "downloading"}
    assert timeout["actor"].startswith("orchestrator@")


def test_device_that_never_answers_the_offer_times_out_at_the_wave_deadline_and_retry_reoffers(
    rig: Rig,
) -> None:
    devices = rig.fleet(2)
    mute = devices[0]
    mute.behaviours[NEW] = Behaviour(stall_after="offered")  # answers only a second offer
    rollout = rig.create(install_timeout_s=600, wave_timeout_s=3.0)

    failed = rig.ended(rollout["id"])
    assert failed["state"] == "failed"  # no gates: a device that timed out fails the rollout
    row = _device(failed, mute.device_id)
    assert (row["state"], row["timed_out_in"]) == ("timed_out", "offered")
    assert str(row["reason"]) == "wave 1 deadline passed (3 s) in offered"
    assert mute.reported == [] and len(mute.offers) == 1
    assert _device(failed, devices[1].device_id)["state"] == "active"
    (ended,) = rig.get("/audit", rollout_id=rollout["id"], action="rollout.failed")
    assert ended["detail"]["timed_out"] == {mute.device_id: "offered"}

    # Nobody offers it again unasked: the rollout ended, and the orchestrator passes on.
    assert rig.api is not None
    rig.api.app.state.orchestrator.tick()  # type: ignore[attr-defined]
    assert len(mute.offers) == 1

    retried = rig.post(f"/rollouts/{rollout['id']}/retry", {"reason": "device rebooted"})
    assert retried["state"] == "in_progress"
    row = _device(retried, mute.device_id)  # offered: it may have answered already
    assert row["state"] in ("offered", "downloading", "active") and row["timed_out_in"] is None
    done = rig.ended(rollout["id"])
    assert done["state"] == "complete", done
    assert done["counts"] == {"active": 2}
    assert len(mute.offers) == 2 and len(devices[1].offers) == 1
    assert mute.bundle_id == NEW
    (retry,) = rig.get("/audit", rollout_id=rollout["id"], action="rollout.retry")
    assert retry["reason"] == "device rebooted"
    assert retry["detail"]["devices"] == {mute.device_id: "timed_out (offered)"}
    # A second retry has nothing to offer.
    rig.post(f"/rollouts/{rollout['id']}/retry", status=409)


def test_device_disconnecting_mid_verification_is_not_timed_out_while_offline(
    rig: Rig,
) -> None:
    devices = rig.fleet(2)
    flaky = devices[0]
    flaky.behaviours[NEW] = Behaviour(stall_after="verified")  # installs when offered again
    rollout = rig.create(install_timeout_s=5.0, wave_timeout_s=60)
    verifying = rig.until(
        rollout["id"], "verified", lambda r: _device(r, flaky.device_id)["state"] == "verified"
    )
    first_deadline = _moment(_device(verifying, flaky.device_id)["deadline_at"])
    flaky.go_offline()

    paused = rig.until(
        rollout["id"], "clock paused", lambda r: _device(r, flaky.device_id)["clock_paused"]
    )
    assert _device(paused, flaky.device_id)["deadline_at"] is not None
    # Well past the deadline it had when it left: still verified, not timed out.
    wait_until(
        lambda: (datetime.now(UTC) - first_deadline).total_seconds() > 1.0,
        what="the first deadline long passed",
    )
    waiting = rig.get(f"/rollouts/{rollout['id']}")
    assert _device(waiting, flaky.device_id)["state"] == "verified"
    assert waiting["state"] == "in_progress" and waiting["phase"] == "waiting_offline"
    assert rig.get("/audit", rollout_id=rollout["id"], action="rollout.timeout") == []

    flaky.connect()  # re-offered on return; its remaining time runs again
    done = rig.ended(rollout["id"])
    assert done["state"] == "complete", done
    assert done["counts"] == {"active": 2}
    assert flaky.bundle_id == NEW and len(flaky.offers) == 2
    assert rig.get("/audit", rollout_id=rollout["id"], action="rollout.timeout") == []


def test_report_after_the_time_out_is_recorded_without_changing_the_verdict(rig: Rig) -> None:
    devices = rig.fleet(2)
    slow = devices[0]
    slow.behaviours[NEW] = Behaviour(stall_after="downloading")
    rollout = rig.create(install_timeout_s=3.0, gates={"max_install_failure_rate": 0.5})
    done = rig.ended(rollout["id"])
    assert done["state"] == "complete"  # one of two failed: within the gate's 50 %
    gate = done["wave_status"][0]["gates"][0]
    assert gate["detail"].endswith("(1 of 2 devices failed)")

    slow.finish_stalled()  # it finished after all
    late = rig.until(
        rollout["id"], "late report", lambda r: _device(r, slow.device_id)["late_state"] == "active"
    )
    row = _device(late, slow.device_id)
    assert (row["state"], row["timed_out_in"]) == ("timed_out", "downloading")
    assert late["state"] == "complete" and late["counts"] == {"active": 1, "timed_out": 1}
    assert rig.get(f"/devices/{slow.device_id}")["bundle_id"] == NEW  # what it really runs
    (entry,) = rig.get("/audit", rollout_id=rollout["id"], action="rollout.late_report")
    assert "stays timed_out" in entry["reason"]
    assert slow.bundle_id == NEW and devices[1].bundle_id == NEW
    assert OLD not in (slow.bundle_id, devices[1].bundle_id)
