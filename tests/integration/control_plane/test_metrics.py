"""``/metrics``: fleet, rollout, telemetry and drift figures read from the database on scrape."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import Session

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import (
    Bundle,
    Device,
    Event,
    Rollout,
    RolloutDevice,
    utcnow,
)
from tests.support.control_plane import ControlPlane, serve

pytestmark = pytest.mark.integration

PROFILE = "x86-64-gateway-onnx"


def scrape(api: TestClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = api.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def seed(session: Session) -> None:
    """Three devices (two online), two rollouts, telemetry and drift windows."""
    session.add(Device(id="dev-metrics001", profile=PROFILE, online=True))
    session.add(Device(id="dev-metrics002", profile=PROFILE, online=True))
    session.add(Device(id="dev-metrics003", profile="arm64-sbc-tflite", online=False))
    session.add(
        Bundle(
            id="digits-1-r1",
            model="digits",
            model_version="1",
            profile=PROFILE,
            release=1,
            target="digits-1-r1.tar",
            sha256="0" * 64,
            length=1,
            path="unused",
        )
    )
    session.flush()
    session.add(Rollout(id=1, bundle_id="digits-1-r1", state="complete"))
    session.add(Rollout(id=2, bundle_id="digits-1-r1", state="in_progress"))
    session.flush()
    session.add(RolloutDevice(rollout_id=2, device_id="dev-metrics001", state="active"))
    session.add(RolloutDevice(rollout_id=2, device_id="dev-metrics002", state="downloading"))
    now = utcnow()
    for n in range(5):
        session.add(
            Event(
                event_id=f"inference-{n:04d}",
                device_id="dev-metrics001",
                kind="inference",
                ts=now,
                data={"count": 10},
            )
        )
    # dev-metrics001: an old clean window, then a drifted one (the latest counts).
    # dev-metrics002: one clean window. dev-metrics003's window is too old to count.
    windows = [
        ("dev-metrics001", now - timedelta(minutes=10), False, [0.01, 0.02, 0.0]),
        ("dev-metrics001", now - timedelta(minutes=1), True, [0.6, 0.3, 0.0]),
        ("dev-metrics002", now - timedelta(minutes=1), False, [0.1, 0.0, 0.0]),
        ("dev-metrics003", now - timedelta(days=3), True, [0.9, 0.9, 0.9]),
    ]
    for n, (device_id, ts, drifted, psi) in enumerate(windows):
        session.add(
            Event(
                event_id=f"drift-{n:04d}",
                device_id=device_id,
                kind="drift",
                bundle_id="digits-1-r1",
                ts=ts,
                data={"drifted": drifted, "share_drifted": 0.5 if drifted else 0.0, "psi": psi},
            )
        )
    session.commit()


@pytest.fixture
def api(control_plane: ControlPlane) -> TestClient:
    return control_plane()


def test_empty_control_plane_exposes_zero_fleet_and_a_connected_broker(api: TestClient) -> None:
    assert api.app.state.link.wait_subscribed(10)  # type: ignore[attr-defined]
    samples = scrape(api)
    assert samples[("edgefleet_broker_connected", ())] == 1.0
    assert not [key for key in samples if key[0] == "edgefleet_devices"]


def test_scrape_reports_fleet_rollouts_ingest_and_latest_drift(api: TestClient) -> None:
    with Session(api.app.state.engine) as session:  # type: ignore[attr-defined]
        seed(session)
    samples = scrape(api)

    assert samples[("edgefleet_devices", (("profile", PROFILE),))] == 2
    assert samples[("edgefleet_devices_online", (("profile", PROFILE),))] == 2
    assert samples[("edgefleet_devices", (("profile", "arm64-sbc-tflite"),))] == 1
    assert samples[("edgefleet_devices_online", (("profile", "arm64-sbc-tflite"),))] == 0

    assert samples[("edgefleet_rollouts", (("state", "complete"),))] == 1
    assert samples[("edgefleet_rollouts", (("state", "in_progress"),))] == 1
    assert samples[("edgefleet_rollout_devices", (("state", "downloading"),))] == 1

    assert samples[("edgefleet_telemetry_events_total", (("kind", "inference"),))] == 5
    assert samples[("edgefleet_telemetry_events_total", (("kind", "drift"),))] == 4

    cohort = (("cohort", PROFILE), ("model", "digits"), ("model_version", "1"))
    assert samples[("edgefleet_drift_devices_reporting", cohort)] == 2
    assert samples[("edgefleet_drift_devices_drifted", cohort)] == 1
    assert samples[("edgefleet_drift_share_drifted", cohort)] == pytest.approx(0.25)
    assert samples[("edgefleet_drift_psi_max", cohort)] == pytest.approx(0.6)
    feature0 = tuple(sorted((*cohort, ("feature", "0"))))
    assert samples[("edgefleet_drift_feature_psi", feature0)] == pytest.approx(0.35)


def test_metrics_need_a_viewer_token_when_api_auth_is_on(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_API_AUTH", "true")
    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url)
    with serve(settings) as api:
        assert api.get("/metrics").status_code == 401
        bad = api.get("/metrics", headers={"Authorization": "Bearer eft_not-a-token"})
        assert bad.status_code == 401
        admin = (settings.data_dir / "admin.token").read_text().strip()
        created = api.post(
            "/api/v1/tokens",
            json={"name": "prometheus", "role": "viewer"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert created.status_code == 201, created.text
        viewer = created.json()["token"]
        samples = scrape(api, Authorization=f"Bearer {viewer}")
        assert ("edgefleet_broker_connected", ()) in samples


def test_console_is_served_without_a_token_and_the_root_redirects_to_it(
    tmp_path: Path, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_API_AUTH", "true")
    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url)
    with serve(settings) as api:
        root = api.get("/", follow_redirects=False)
        assert root.status_code == 307
        assert root.headers["location"] == "/console/"
        page = api.get("/console/")
        assert page.status_code == 200
        assert "edgefleet console" in page.text
        for asset in ("app.js", "api.js", "charts.js", "style.css", "views/rollouts.js"):
            assert api.get(f"/console/{asset}").status_code == 200, asset
        assert api.get("/console/../control_plane/settings.py").status_code == 404


def test_grafana_dashboard_queries_only_metrics_the_control_plane_exposes(
    api: TestClient,
) -> None:
    with Session(api.app.state.engine) as session:  # type: ignore[attr-defined]
        seed(session)
    text = api.get("/metrics").text
    exposed = {
        name
        for family in text_string_to_metric_families(text)
        for name in (family.name, *(sample.name for sample in family.samples))
    }
    dashboard = (Path(__file__).parents[3] / "deploy" / "grafana" / "edgefleet.json").read_text()
    queried = set(re.findall(r"edgefleet_[a-z_]+", dashboard))
    assert queried, "the dashboard queries no edgefleet metric"
    assert queried <= exposed, sorted(queried - exposed)
