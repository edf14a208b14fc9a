"""The update lock (taken, renewed, released, expired, kept across a restart) and the
gate a staged switch waits at."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path

from edgefleet.agent.install.deferral import SwitchGate, UpdateLock
from edgefleet.agent.install.updater import OfferWorker
from edgefleet.maintenance import MaintenanceWindow
from edgefleet.messages import BundleOffer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def post(lock: UpdateLock, body: dict[str, object]) -> tuple[HTTPStatus, dict[str, object]]:
    return lock.handle("POST", [], json.dumps(body).encode())


def test_a_holder_takes_renews_and_releases_its_lock(tmp_path: Path) -> None:
    clock = Clock()
    lock = UpdateLock(tmp_path, clock=clock)
    status, taken = post(lock, {"holder": "robot-arm", "ttl_s": 60})
    assert status == HTTPStatus.OK
    clock.now += 50
    _, renewed = post(lock, {"holder": "robot-arm", "ttl_s": 60})
    assert renewed["lock_id"] == taken["lock_id"]
    clock.now += 50  # past the first expiry, not the renewed one
    status, shown = lock.handle("GET", [], b"")
    assert shown["held"] is True
    status, released = lock.handle("DELETE", [str(taken["lock_id"])], b"")
    assert status == HTTPStatus.OK and released["released"] is True
    assert lock.handle("GET", [], b"")[1]["held"] is False
    assert lock.handle("DELETE", [str(taken["lock_id"])], b"")[0] == HTTPStatus.NOT_FOUND


def test_a_lock_not_renewed_expires_so_a_crashed_app_cannot_hold_the_device(
    tmp_path: Path,
) -> None:
    clock = Clock()
    lock = UpdateLock(tmp_path, clock=clock)
    post(lock, {"holder": "app", "ttl_s": 30})
    clock.now += 29.9
    assert [x.holder for x in lock.held()] == ["app"]
    clock.now += 0.2
    assert lock.held() == []


def test_locks_outlive_an_agent_restart_with_their_expiry(tmp_path: Path) -> None:
    clock = Clock()
    post(UpdateLock(tmp_path, clock=clock), {"holder": "app", "ttl_s": 30})
    again = UpdateLock(tmp_path, clock=clock)
    assert [x.holder for x in again.held()] == ["app"]
    clock.now += 31
    assert again.held() == []


def test_bad_requests_are_answered_not_raised(tmp_path: Path) -> None:
    lock = UpdateLock(tmp_path)
    assert post(lock, {"holder": ""})[0] == HTTPStatus.BAD_REQUEST
    assert post(lock, {"holder": "a", "ttl_s": 10**9})[0] == HTTPStatus.BAD_REQUEST
    assert post(lock, {"holder": "a", "colour": "red"})[0] == HTTPStatus.BAD_REQUEST
    assert lock.handle("POST", [], b"{torn")[0] == HTTPStatus.BAD_REQUEST
    assert lock.handle("PUT", [], b"")[0] == HTTPStatus.METHOD_NOT_ALLOWED


def test_the_gate_names_the_lock_first_then_the_window(tmp_path: Path) -> None:
    lock = UpdateLock(tmp_path)
    at = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)
    gate = SwitchGate(lock, now=lambda: at)
    nightly = MaintenanceWindow(cron="0 2 * * *", duration_s=3600, tz="Europe/Berlin")
    assert gate.hold_reason(None) is None
    assert gate.hold_reason(nightly) == (
        "outside maintenance window, next opens at 2026-12-08T02:00:00+01:00"
    )
    lock.acquire("robot-arm", 60)
    assert gate.hold_reason(None) == "update lock held by robot-arm"
    now_open = MaintenanceWindow(cron="0 22 * * *", duration_s=3600, tz="UTC")
    assert gate.hold_reason(now_open) == "update lock held by robot-arm"
    lock.release(lock.held()[0].lock_id)
    assert gate.hold_reason(now_open) is None


class _Installer:
    """What ``OfferWorker`` needs of an installer to be built (its thread never starts)."""

    def __init__(self) -> None:
        self.preempted = lambda _bundle_id: False
        self.stopping = threading.Event()


def test_a_deferred_install_gives_way_to_other_work_but_not_to_its_own_reoffer() -> None:
    installer = _Installer()
    worker = OfferWorker(installer)  # type: ignore[arg-type]
    assert installer.preempted == worker._preempted
    worker.submit(BundleOffer(bundle_id="b-2", target="b-2.tar", release=2))
    assert installer.preempted("b-2") is False  # a re-offer of the bundle waiting: dropped
    assert installer.preempted("b-2") is False
    worker.submit(BundleOffer(bundle_id="b-3", target="b-3.tar", release=3))
    assert installer.preempted("b-2") is True
