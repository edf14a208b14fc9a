"""Every API route needs a token of the right role; tokens can be issued and revoked."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet.control_plane.core.auth import required_role
from tests.support.control_plane import ControlPlane

pytestmark = pytest.mark.integration


@pytest.fixture
def app_and_admin(control_plane: ControlPlane, tmp_path: Path) -> tuple[TestClient, str]:
    api = control_plane(api_auth=True)
    token_file = tmp_path / "cp" / "admin.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    return api, token_file.read_text().strip()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def issue(api: TestClient, admin: str, role: str) -> str:
    response = api.post(
        "/api/v1/tokens", json={"name": f"{role}-1", "role": role}, headers=bearer(admin)
    )
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


def test_every_protected_route_refuses_a_call_without_a_token(
    app_and_admin: tuple[TestClient, str],
) -> None:
    api, _admin = app_and_admin
    schema = api.get("/api/v1/openapi.json").json()
    checked = 0
    for path, methods in schema["paths"].items():
        concrete = path.replace("{", "").replace("}", "")  # any value: auth comes first
        for method in methods:
            if required_role(method.upper(), path) is None:
                continue
            response = api.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.text)
            checked += 1
    assert checked >= 20


def test_open_routes_need_no_token(app_and_admin: tuple[TestClient, str]) -> None:
    api, _admin = app_and_admin
    assert api.get("/api/v1/health").status_code == 200
    assert api.get("/api/v1/trust/root").status_code == 200


def test_viewer_reads_but_cannot_change_anything(app_and_admin: tuple[TestClient, str]) -> None:
    api, admin = app_and_admin
    viewer = issue(api, admin, "viewer")
    assert api.get("/api/v1/devices", headers=bearer(viewer)).status_code == 200
    response = api.post("/api/v1/rollouts", json={"bundle_id": "x"}, headers=bearer(viewer))
    assert response.status_code == 403
    assert "operator role required" in response.json()["detail"]


def test_operator_changes_the_fleet_but_not_keys_or_tokens(
    app_and_admin: tuple[TestClient, str],
) -> None:
    api, admin = app_and_admin
    operator = issue(api, admin, "operator")
    # Past authorization: the request itself is judged (unknown bundle -> 404).
    response = api.post("/api/v1/rollouts", json={"bundle_id": "nope"}, headers=bearer(operator))
    assert response.status_code == 404
    assert api.get("/api/v1/keys", headers=bearer(operator)).status_code == 403
    forbidden = api.post(
        "/api/v1/tokens", json={"name": "x", "role": "admin"}, headers=bearer(operator)
    )
    assert forbidden.status_code == 403


def test_revoked_and_forged_tokens_are_refused(app_and_admin: tuple[TestClient, str]) -> None:
    api, admin = app_and_admin
    viewer = issue(api, admin, "viewer")
    tokens = api.get("/api/v1/tokens", headers=bearer(admin)).json()
    (row,) = [t for t in tokens if t["role"] == "viewer"]
    assert "token" not in row  # secrets are shown once, never listed
    assert api.post(f"/api/v1/tokens/{row['id']}/revoke", headers=bearer(admin)).json()["revoked"]
    assert api.get("/api/v1/devices", headers=bearer(viewer)).status_code == 401
    assert api.get("/api/v1/devices", headers=bearer(viewer + "x")).status_code == 401
    assert api.get("/api/v1/devices", headers={"Authorization": "Basic abc"}).status_code == 401


def test_admin_manages_keys(app_and_admin: tuple[TestClient, str]) -> None:
    api, admin = app_and_admin
    keys = api.get("/api/v1/keys", headers=bearer(admin)).json()
    assert [r["role"] for r in keys] == ["root", "targets", "snapshot", "timestamp"]
    rotated = api.post("/api/v1/keys/rotate", json={"role": "timestamp"}, headers=bearer(admin))
    assert rotated.status_code == 200, rotated.text
    refused = api.post(
        "/api/v1/keys/revoke", json={"keyid": rotated.json()["keyid"]}, headers=bearer(admin)
    )
    assert refused.status_code == 422
    assert "threshold" in refused.json()["detail"]
    audit = api.get("/api/v1/audit", params={"action": "key.rotate"}, headers=bearer(admin))
    (entry,) = audit.json()
    assert entry["actor"] == "bootstrap-admin"
    assert entry["target"] == "timestamp"


def test_reading_a_devices_log_needs_the_operator_role(
    app_and_admin: tuple[TestClient, str],
) -> None:
    api, admin = app_and_admin
    viewer, operator = issue(api, admin, "viewer"), issue(api, admin, "operator")
    path = "/api/v1/devices/dev-unknown0001/logs"
    response = api.get(path, headers=bearer(viewer))
    assert response.status_code == 403
    assert "operator role required" in response.json()["detail"]
    # Past authorization: the request itself is judged (unknown device -> 404).
    assert api.get(path, headers=bearer(operator)).status_code == 404
    assert required_role("GET", "/api/v1/devices/dev-x/logs") == "operator"
    assert required_role("GET", "/api/v1/devices/dev-x") == "viewer"
