"""Fleet-wide rollout controls against a real Mosquitto and simulated devices.

``max_concurrent``: the devices hold their offers (they neither install nor report)
until the test releases them, so the devices holding an offer are exactly the
devices installing at once; the control plane must never have more than N out,
however many passes it makes, and offers the next as soon as some finish.
``bandwidth_bytes_per_s``: the offers' own timestamps show the bundle bytes they
started stay within the budget (plus the one second's worth allowed at once).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlmodel import Session

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.tables import Bundle, Rollout
from tests.support.polling import wait_until
from tests.support.rollout_fleet import NEW, Rig, SimDevice

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


def _revision(rig: Rig, rollout_id: int) -> int:
    with Session(rig.engine) as session:
        rollout = session.get(Rollout, rollout_id)
        assert rollout is not None
        return rollout.revision


def _holding(devices: list[SimDevice]) -> list[SimDevice]:
    return [d for d in devices if d.held]


def test_max_concurrent_keeps_at_most_n_devices_installing_and_offers_the_next_as_they_finish(
    rig: Rig,
) -> None:
    devices = rig.fleet(7)
    for device in devices:
        device.holding = True
    rollout = rig.create(waves=["100%"], max_concurrent=3)
    assert rollout["max_concurrent"] == 3
    rid = rollout["id"]
    most = 0
    released = 0
    while released < len(devices):
        expected = min(3, len(devices) - released)
        held = wait_until(
            lambda n=expected: _holding(devices) if len(_holding(devices)) >= n else None,
            what=f"{expected} devices offered",
        )
        # Several more orchestrator passes with nobody finished: still no more offers.
        seen = _revision(rig, rid)
        wait_until(lambda s=seen: _revision(rig, rid) >= s + 5, what="five more passes")
        most = max(most, len(_holding(devices)))
        assert len(_holding(devices)) == expected
        assert sum(len(d.offers) for d in devices) == released + expected
        held[0].release()  # one finishes: the next is offered
        released += 1
        if len(held) > 1 and released < len(devices):
            wait_until(
                lambda r=released: sum(len(d.offers) for d in devices) == min(r + 3, 7),
                what="the next device offered as one finished",
            )
            for device in held[1:]:
                device.release()
            released += len(held) - 1
    done = rig.ended(rid)
    assert done["state"] == "complete"
    assert done["counts"] == {"active": 7}
    assert most == 3
    assert all(len(d.offers) == 1 for d in devices)


def test_bandwidth_budget_paces_offers_by_the_bundle_size(rig: Rig) -> None:
    devices = rig.fleet(8)
    length, budget = 100_000, 500_000  # five offers a second
    with Session(rig.engine) as session:
        bundle = session.get(Bundle, NEW)
        assert bundle is not None
        bundle.length = length
        session.add(bundle)
        session.commit()
    rollout = rig.create(waves=["100%"], bandwidth_bytes_per_s=budget)
    done = rig.ended(rollout["id"])
    assert done["state"] == "complete" and done["counts"] == {"active": 8}
    assert all(len(d.offers) == 1 for d in devices)
    offered = sorted(datetime.fromisoformat(d["offered_at"]) for d in done["devices"])
    # Every stretch of offers started at most the budget over its duration, plus the
    # one second's worth (and the one offer that opens it) allowed at once.
    for i, start in enumerate(offered):
        for j in range(i, len(offered)):
            span = (offered[j] - start).total_seconds()
            assert (j - i + 1) * length <= budget * (span + 1.0) + length, (i, j, span)
    # Paced, not refused: the last offer came after the budget allowed it, not at once.
    total_s = (offered[-1] - offered[0]).total_seconds()
    assert total_s >= (len(offered) * length - 2 * budget) / budget


def test_the_shadow_strategy_refuses_fleet_controls_and_says_why(rig: Rig) -> None:
    rig.fleet(1)
    body = rig.post(
        "/rollouts",
        {"bundle_id": NEW, "strategy": "shadow", "max_concurrent": 2},
        status=422,
    )
    assert "shadow strategy installs nothing" in str(body)
