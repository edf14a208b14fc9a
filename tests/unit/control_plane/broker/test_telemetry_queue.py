"""The telemetry queue is bounded: past it, messages are acknowledged and left unreceipted
to the devices' spools instead of piling up in the control plane's memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine

from edgefleet.control_plane.broker import telemetry as telemetry_module
from edgefleet.control_plane.broker.link import FleetLink
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import Incoming


def test_a_full_telemetry_queue_acknowledges_and_sheds_instead_of_growing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry_module, "TELEMETRY_QUEUE_MAX", 3)
    settings = Settings(data_dir=tmp_path, broker_url="mqtt://127.0.0.1:1", blob_delivery=False)
    fleet = FleetLink(
        settings=settings,
        engine=create_engine("sqlite://"),
        repository=None,  # type: ignore[arg-type]  # not started: nothing is served
    )
    assert fleet.telemetry is not None  # SQLite: ingest runs in the control plane's process
    acked: list[int] = []
    for n in range(5):
        fleet.telemetry.on_message(
            Incoming(
                topic="fleet/dev-queue00001/up/telemetry",
                payload=TelemetryEvent(kind="inference").to_bytes(),
                ack=lambda n=n: acked.append(n),  # type: ignore[misc]
            )
        )
    assert fleet.telemetry.queued() == 3  # waiting for cp-telemetry, not yet acknowledged
    assert acked == [3, 4] and fleet.telemetry_shed == 2
