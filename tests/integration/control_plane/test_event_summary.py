"""Per-device event summaries, aggregated in the database: the same figures on SQLite and
on PostgreSQL, whose JSON functions differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import EventSummary
from edgefleet.control_plane.services.events import ingest_events, summarize_events
from edgefleet.messages import TelemetryEvent
from tests.support.control_plane import serve

pytestmark = pytest.mark.integration

A, B, C = "dev-summary001", "dev-summary002", "dev-summary003"


def inference(data: dict[str, Any]) -> TelemetryEvent:
    return TelemetryEvent(kind="inference", priority=2, data=data)


def store_mixed_events(engine: Engine) -> None:
    batch = [
        (A, inference({"count": 5, "errors": 0})),
        (A, inference({"count": 7})),
        (A, inference({"count": 2.0})),  # a real, as some JSON encoders write it
        (B, inference({"count": 3})),
        (B, inference({"count": "12"})),  # not a number: a window, but no inferences
        (B, inference({"count": True})),
        (B, inference({"count": None})),
        (B, inference({"count": {"nested": 4}})),
        (B, inference({})),
        (C, TelemetryEvent(kind="shadow", data={"count": 40})),
        (C, TelemetryEvent(kind="spool", data={"depth": 3, "dropped": {"2": 1}})),
    ]
    with Session(engine) as session:
        assert ingest_events(session=session, batch=batch) == len(batch)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    made = make_engine(Settings(data_dir=tmp_path, database_url=url))
    create_db_and_tables(made)
    return made


def test_summary_counts_windows_and_sums_numeric_counts_per_device(engine: Engine) -> None:
    store_mixed_events(engine)
    with Session(engine) as session:
        inferences = summarize_events(session=session, kind="inference")
        shadow = summarize_events(session=session, kind="shadow")
        only_b = summarize_events(session=session, kind="inference", device_id=B)
        nothing = summarize_events(session=session, kind="drift")
    assert inferences == [
        EventSummary(device_id=A, events=3, count_total=14),
        EventSummary(device_id=B, events=6, count_total=3),
    ]
    assert shadow == [EventSummary(device_id=C, events=1, count_total=40)]
    assert only_b == [EventSummary(device_id=B, events=6, count_total=3)]
    assert nothing == []


def test_summary_route_answers_per_device_for_inference_by_default(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with serve(Settings(data_dir=tmp_path / "cp", broker_url=broker.url)) as client:
        store_mixed_events(client.app.state.engine)  # type: ignore[attr-defined]
        response = client.get("/api/v1/events/summary")
        assert response.status_code == 200, response.text
        assert response.json() == [
            {"device_id": A, "events": 3, "count_total": 14},
            {"device_id": B, "events": 6, "count_total": 3},
        ]
        spool = client.get("/api/v1/events/summary", params={"kind": "spool"}).json()
        assert spool == [{"device_id": C, "events": 1, "count_total": 0}]
