"""Enrolment through the API: who may enrol, with what id, how often, and what it yields."""

from __future__ import annotations

import stat
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from edgefleet.agent.config import parse_config
from edgefleet.agent.enrolment.credentials import load_credentials
from edgefleet.agent.enrolment.enrol import EnrolmentError, enrol
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.broker.security import (
    BrokerAuthFiles,
    read_password_file,
    verify_password,
)
from edgefleet.control_plane.core.netutil import free_port, wait_for_port
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import DeviceCredential, EnrolmentToken, utcnow
from tests.support.control_plane import ControlPlane, serve

pytestmark = pytest.mark.integration

DEVICE = "dev-enrol00001"


def make_settings(tmp_path: Path, broker: MosquittoBroker, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "cp",
        "broker_url": broker.url,
        "broker_auth_dir": tmp_path / "auth",
        "enrol_burst": 50,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def api(control_plane: ControlPlane, tmp_path: Path) -> TestClient:
    return control_plane(broker_auth_dir=tmp_path / "auth", enrol_burst=50)


def new_token(api: TestClient, **body: object) -> str:
    response = api.post("/api/v1/enrolment/tokens", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def enrol_as(api: TestClient, token: str, device_id: str = DEVICE):  # type: ignore[no-untyped-def]
    return api.post("/api/v1/enrol", json={"token": token, "device_id": device_id, "profile": "p1"})


def test_enrolment_issues_a_password_the_broker_file_accepts(
    api: TestClient, tmp_path: Path
) -> None:
    response = enrol_as(api, new_token(api))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["username"] == body["device_id"] == DEVICE
    files = BrokerAuthFiles(tmp_path / "auth")
    stored = read_password_file(files.password_file)[DEVICE]
    assert verify_password(body["password"], stored)
    assert body["password"] not in files.password_file.read_text()
    with Session(api.app.state.engine) as session:  # type: ignore[attr-defined]
        credential = session.get(DeviceCredential, DEVICE)
        assert credential is not None and body["password"] not in credential.password_hash


@pytest.mark.parametrize(
    "device_id",
    [
        "cp-controlplane",
        "cp-evil0000001",
        "dev-short",
        "dev-UPPERCASE1",
        "dev-abc/def#12",
        "dev-" + "a" * 33,
        "dev-abcdefgh\n",
        "+",
        "#",
    ],
)
def test_enrolment_refuses_ids_outside_the_device_pattern(api: TestClient, device_id: str) -> None:
    token = new_token(api)
    response = enrol_as(api, token, device_id)
    assert response.status_code == 422, response.text
    # The refused attempt did not use the token up.
    assert enrol_as(api, token).status_code == 201


def test_enrolment_token_works_once(api: TestClient) -> None:
    token = new_token(api)
    assert enrol_as(api, token).status_code == 201
    reused = enrol_as(api, token, "dev-another0001")
    assert reused.status_code == 403
    assert "invalid, used or expired" in reused.json()["detail"]
    assert api.get("/api/v1/devices").status_code == 200


def test_expired_and_unknown_tokens_are_refused(api: TestClient) -> None:
    token = new_token(api, ttl_seconds=60)
    with Session(api.app.state.engine) as session:  # type: ignore[attr-defined]
        row = session.exec(select(EnrolmentToken)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
        session.commit()
    assert enrol_as(api, token).status_code == 403
    assert enrol_as(api, "efe_made-up").status_code == 403


def test_an_enrolled_id_cannot_be_enrolled_again(api: TestClient) -> None:
    assert enrol_as(api, new_token(api)).status_code == 201
    second = new_token(api)
    assert enrol_as(api, second).status_code == 409
    assert enrol_as(api, second, "dev-different01").status_code == 201  # token not spent


def test_enrolment_is_rate_limited_per_client(tmp_path: Path, broker: MosquittoBroker) -> None:
    settings = make_settings(tmp_path, broker, enrol_burst=3, enrol_rate_per_minute=1)
    with serve(settings) as api:
        codes = [enrol_as(api, "efe_guess").status_code for _ in range(4)]
        assert codes == [403, 403, 403, 429]
        limited = enrol_as(api, new_token(api))  # even a good token waits its turn
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) > 0


def test_only_operators_issue_enrolment_tokens(tmp_path: Path, broker: MosquittoBroker) -> None:
    settings = make_settings(tmp_path, broker, api_auth=True)
    with serve(settings) as api:
        admin = (tmp_path / "cp" / "admin.token").read_text().strip()
        assert api.post("/api/v1/enrolment/tokens", json={}).status_code == 401
        viewer = api.post(
            "/api/v1/tokens",
            json={"name": "v", "role": "viewer"},
            headers={"Authorization": f"Bearer {admin}"},
        ).json()["token"]
        as_viewer = {"Authorization": f"Bearer {viewer}"}
        assert api.post("/api/v1/enrolment/tokens", json={}, headers=as_viewer).status_code == 403
        assert api.post(f"/api/v1/devices/{DEVICE}/revoke", headers=as_viewer).status_code == 403
        as_admin = {"Authorization": f"Bearer {admin}"}
        token = api.post("/api/v1/enrolment/tokens", json={}, headers=as_admin).json()["token"]
        assert enrol_as(api, token).status_code == 201  # the device itself needs no API token


def test_enrolment_needs_a_secured_broker(tmp_path: Path, broker: MosquittoBroker) -> None:
    with serve(make_settings(tmp_path, broker, broker_auth_dir=None)) as api:
        assert enrol_as(api, new_token(api)).status_code == 409


def test_agent_enrols_and_saves_its_credentials_privately(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    app = create_app(make_settings(tmp_path, broker))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert wait_for_port("127.0.0.1", port, 30)
        base = f"http://127.0.0.1:{port}"
        response = httpx.post(f"{base}/api/v1/enrolment/tokens", json={}, timeout=30)
        assert response.status_code == 201, response.text
        token = response.json()["token"]
        config = parse_config(
            f'device_id = "{DEVICE}"\nprofile = "p1"\n'
            f'data_dir = "{tmp_path / "agent"}"\ntrust_root = "{tmp_path / "root.json"}"\n'
        )
        credentials = enrol(config, api_url=base, token=token)
        assert credentials.username == DEVICE and "password=***" in repr(credentials)
        assert load_credentials(config.data_dir) == credentials
        saved = config.data_dir / "credentials.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        with pytest.raises(EnrolmentError, match="403"):
            enrol(config, api_url=base, token=token)
    finally:
        server.should_exit = True
        thread.join(30)
