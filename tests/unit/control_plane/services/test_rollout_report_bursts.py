"""Install reports applied in bursts: one transaction, the same verdicts as one by one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlmodel import Session, SQLModel, create_engine

from edgefleet.control_plane.core.tables import Bundle, Device, Rollout, RolloutDevice
from edgefleet.control_plane.services.rollouts.reports import apply_install_reports
from edgefleet.messages import InstallReport


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _rollout(session: Session, states: dict[str, str]) -> int:
    session.add(
        Bundle(id="b-2", model="m", model_version="2", profile="p", release=2, target="b-2.tar",
               sha256="0" * 64, length=1, path="/nonexistent")
    )  # fmt: skip
    rollout = Rollout(bundle_id="b-2", state="in_progress", wave_sizes=[len(states)])
    session.add(rollout)
    session.flush()
    assert rollout.id is not None
    for device_id, state in states.items():
        session.add(Device(id=device_id, online=True))
        session.add(RolloutDevice(rollout_id=rollout.id, device_id=device_id, state=state))
    session.commit()
    return rollout.id


def test_a_burst_applies_each_report_in_order_and_judges_late_ones_as_alone(
    session: Session,
) -> None:
    rid = _rollout(session, {"dev-a": "offered", "dev-b": "offered", "dev-c": "active"})
    burst = [
        ("dev-a", InstallReport(bundle_id="b-2", rollout_id=rid, state="downloading")),
        ("dev-b", InstallReport(bundle_id="b-2", rollout_id=rid, state="failed", reason="x")),
        ("dev-a", InstallReport(bundle_id="b-2", rollout_id=rid, state="active")),
        # active already: a progress report arriving late changes nothing
        ("dev-c", InstallReport(bundle_id="b-2", rollout_id=rid, state="downloading")),
        # no such rollout: ignored, the rest of the burst still applied
        ("dev-a", InstallReport(bundle_id="b-2", rollout_id=rid + 7, state="failed")),
    ]
    rows = apply_install_reports(session=session, reports=burst)
    assert [r.state if r else None for r in rows] == [
        "active",  # the same row object: dev-a ended the burst active
        "failed",
        "active",
        "active",
        None,
    ]
    session.expire_all()
    states = {d: session.get(RolloutDevice, (rid, d)) for d in ("dev-a", "dev-b", "dev-c")}
    assert {d: r.state for d, r in states.items() if r} == {
        "dev-a": "active",
        "dev-b": "failed",
        "dev-c": "active",
    }
    device = session.get(Device, "dev-a")
    assert device is not None and device.bundle_id == "b-2" and device.release == 2
