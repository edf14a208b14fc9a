"""Replicas racing on one new device's status, on PostgreSQL: one row, no error.

Every replica receives every status (a plain subscription, for the retained ones), so
two replicas insert the same new device at the same moment.
"""

from __future__ import annotations

import logging
import threading

import pytest
from sqlmodel import Session, col, create_engine, func, select

from edgefleet.control_plane.core.db import create_db_and_tables
from edgefleet.control_plane.core.tables import Device
from edgefleet.control_plane.services.devices import StatusUpdate, upsert_device_status
from edgefleet.messages import DeviceStatus

pytestmark = pytest.mark.integration

ROUNDS = 25
REPLICAS = 2


def test_replicas_racing_to_insert_a_new_device_store_it_once_without_errors(
    pg_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = create_engine(pg_url)
    create_db_and_tables(engine)
    status = DeviceStatus(online=True, profile="x86-64-gateway-onnx", agent_version="1.0")
    barrier = threading.Barrier(REPLICAS)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def replica() -> None:
        for n in range(ROUNDS):
            device_id = f"dev-race{n:08d}"
            barrier.wait(timeout=30)
            try:
                with Session(engine) as session:
                    update: StatusUpdate = upsert_device_status(
                        session=session, device_id=device_id, status=status
                    )
                with lock:
                    results.append((device_id, update.came_online))
            except Exception as e:  # collected for the assertion below
                with lock:
                    errors.append(e)

    caplog.set_level(logging.INFO)
    threads = [threading.Thread(target=replica) for _ in range(REPLICAS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    try:
        assert errors == []
        assert len(results) == ROUNDS * REPLICAS
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(Device)).one() == ROUNDS
            online = session.exec(select(Device).where(col(Device.online).is_(True))).all()
            assert len(online) == ROUNDS
        # Exactly one replica saw each device come online (one re-offer, not two).
        for n in range(ROUNDS):
            device_id = f"dev-race{n:08d}"
            assert sum(came for d, came in results if d == device_id) == 1
        discovered = [r for r in caplog.records if "device discovered" in r.getMessage()]
        assert len(discovered) == ROUNDS
        assert "UniqueViolation" not in caplog.text
    finally:
        engine.dispose()
