"""The API's role decisions, walked route by route, and what an operator cannot do.

The table ``ROLE_NEEDED`` is the decision for every route of the OpenAPI spec: a
route added without an entry fails ``test_every_route_has_a_role_decision``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.auth import ApiToken
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import utcnow
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.harness import register_model

pytestmark = pytest.mark.integration

ROLE_NEEDED: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/health"): "open",
    ("GET", "/api/v1/trust/root"): "open",
    ("POST", "/api/v1/enrol"): "open",  # devices: a one-time token in the body, rate-limited
    ("GET", "/api/v1/models"): "viewer",
    ("GET", "/api/v1/models/{name}/field-data"): "operator",  # the inputs devices saw
    ("POST", "/api/v1/agent-releases"): "admin",  # code every device runs
    ("GET", "/api/v1/config/schema"): "viewer",
    ("GET", "/api/v1/config/fleet"): "viewer",
    ("PATCH", "/api/v1/config/fleet"): "operator",
    ("GET", "/api/v1/config/groups/{name}"): "viewer",
    ("PATCH", "/api/v1/config/groups/{name}"): "operator",
    ("GET", "/api/v1/config/devices"): "viewer",
    ("GET", "/api/v1/config/devices/{device_id}"): "viewer",
    ("PATCH", "/api/v1/config/devices/{device_id}"): "operator",
    ("PUT", "/api/v1/groups/{name}/window"): "operator",
    ("GET", "/api/v1/experiments"): "viewer",
    ("POST", "/api/v1/experiments"): "operator",
    ("GET", "/api/v1/experiments/{experiment_id}"): "viewer",
    ("POST", "/api/v1/experiments/{experiment_id}/stop"): "operator",
    ("POST", "/api/v1/models"): "operator",
    ("GET", "/api/v1/profiles"): "viewer",
    ("GET", "/api/v1/bundles"): "viewer",
    ("POST", "/api/v1/bundles"): "operator",
    ("GET", "/api/v1/builds"): "viewer",
    ("POST", "/api/v1/builds"): "operator",
    ("GET", "/api/v1/builds/{build_id}"): "viewer",
    ("GET", "/api/v1/bundles/{bundle_id}"): "viewer",
    ("GET", "/api/v1/devices"): "viewer",
    ("GET", "/api/v1/devices/{device_id}"): "viewer",
    ("GET", "/api/v1/devices/{device_id}/logs"): "operator",  # a device's log is more
    ("PUT", "/api/v1/devices/{device_id}/labels"): "operator",
    ("POST", "/api/v1/devices/{device_id}/revoke"): "operator",
    ("GET", "/api/v1/groups"): "viewer",
    ("GET", "/api/v1/groups/{name}"): "viewer",
    ("PUT", "/api/v1/groups/{name}"): "operator",
    ("DELETE", "/api/v1/groups/{name}"): "operator",
    ("POST", "/api/v1/enrolment/tokens"): "operator",
    ("GET", "/api/v1/rollouts"): "viewer",
    ("POST", "/api/v1/rollouts"): "operator",
    ("GET", "/api/v1/rollouts/{rollout_id}"): "viewer",
    ("POST", "/api/v1/rollouts/{rollout_id}/{action}"): "operator",
    ("GET", "/api/v1/audit"): "viewer",
    ("GET", "/api/v1/events"): "viewer",
    ("GET", "/api/v1/events/count"): "viewer",
    ("GET", "/api/v1/events/summary"): "viewer",
    ("GET", "/api/v1/drift/series"): "viewer",
    ("GET", "/api/v1/drift/status"): "viewer",
    ("GET", "/api/v1/retraining"): "viewer",
    ("POST", "/api/v1/retraining"): "operator",
    ("GET", "/api/v1/retraining/{request_id}"): "viewer",
    ("POST", "/api/v1/retraining/{request_id}/approve"): "operator",
    ("POST", "/api/v1/retraining/{request_id}/reject"): "operator",
    ("GET", "/api/v1/policies/{model}"): "viewer",
    ("PATCH", "/api/v1/policies/{model}"): "operator",
    ("GET", "/api/v1/hooks"): "viewer",
    ("GET", "/api/v1/keys"): "admin",
    ("POST", "/api/v1/keys/rotate"): "admin",
    ("POST", "/api/v1/keys/revoke"): "admin",
    ("GET", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens"): "admin",
    ("POST", "/api/v1/tokens/{token_id}/revoke"): "admin",
}
RANK = {"viewer": 0, "operator": 1, "admin": 2}
# Path parameters that exist nowhere, so a call that passes authorization changes nothing.
PATH_VALUES = {
    "bundle_id": "no-such-bundle",
    "build_id": "999999",
    "device_id": "dev-nosuchdevice",
    "name": "no-such-group",
    "rollout_id": "999999",
    "action": "pause",
    "request_id": "999999",
    "model": "no-such-model",
    "token_id": "999999",
    "experiment_id": "999999",
}
MARKER_HOOK = "write-marker"


@dataclass
class Api:
    client: TestClient
    tokens: dict[str, str]  # role -> secret
    token_ids: dict[str, int]
    settings: Settings

    def as_role(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
def api(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Api]:
    marker = tmp_path / "hook-ran"
    settings = Settings(
        data_dir=tmp_path / "cp",
        broker_url=broker.url,
        api_auth=True,
        retraining_hooks={  # type: ignore[arg-type]
            MARKER_HOOK: {
                "command": [
                    sys.executable,
                    "-c",
                    "import json, os; seen = [os.getcwd(), dict(os.environ)];"
                    f"open({str(marker)!r}, 'w').write(json.dumps(seen))",
                ]
            }
        },
    )
    with serve(settings) as client:
        admin = (tmp_path / "cp" / "admin.token").read_text().strip()
        tokens, token_ids = {"admin": admin}, {"admin": 1}
        for role in ("viewer", "operator"):
            response = client.post(
                "/api/v1/tokens",
                json={"name": f"{role}-alice", "role": role},
                headers={"Authorization": f"Bearer {admin}"},
            )
            assert response.status_code == 201, response.text
            tokens[role], token_ids[role] = response.json()["token"], response.json()["id"]
        yield Api(client, tokens, token_ids, settings)


@pytest.fixture
def digits(api: Api, digits: DigitsModel) -> Api:
    """``api`` with digits v1 registered (the trained model is the session's ``digits``,
    which this fixture overrides for the module)."""
    model = digits

    class Authed:
        def post(self, url: str, **kwargs: Any) -> Any:
            return api.client.post(url, headers=api.as_role("operator"), **kwargs)

    register_model(Authed(), model.onnx_bytes, model.samples, version="1")
    return api


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: PATH_VALUES[m.group(1)], path)


def test_every_route_has_a_role_decision(api: Api) -> None:
    schema = api.client.get("/api/v1/openapi.json").json()
    routes = {(m.upper(), p) for p, methods in schema["paths"].items() for m in methods}
    assert routes - ROLE_NEEDED.keys() == set(), "routes without a role decision in ROLE_NEEDED"
    assert ROLE_NEEDED.keys() - routes == set(), "decisions for routes that no longer exist"


@pytest.mark.parametrize("caller", ["none", "garbage", "viewer", "operator", "admin"])
def test_every_route_answers_each_caller_as_its_role_decision_says(api: Api, caller: str) -> None:
    if caller == "none":
        headers = {}
    elif caller == "garbage":
        headers = {"Authorization": "Bearer eft_not-a-token"}
    else:
        headers = api.as_role(caller)
    wrong = []
    for (method, path), needed in sorted(ROLE_NEEDED.items()):
        status = api.client.request(method, concrete(path), headers=headers).status_code
        if needed == "open":
            expected_ok = True
        elif caller in ("none", "garbage"):
            expected_ok = False
            if status != 401:
                wrong.append((method, path, status, "expected 401"))
            continue
        else:
            expected_ok = RANK[caller] >= RANK[needed]
        if expected_ok and status in (401, 403):
            wrong.append((method, path, status, "expected to pass authorization"))
        if not expected_ok and status != 403:
            wrong.append((method, path, status, "expected 403"))
    assert wrong == []


def test_operator_cannot_set_a_command_or_url_in_a_policy(digits: Api) -> None:
    operator = digits.as_role("operator")
    attempts: list[dict[str, Any]] = [
        {"hook_command": "sh -c 'cat admin.token'"},
        {"hook_webhook": "http://attacker.example/"},
        {"hook_kind": "command", "hook_target": ["/bin/sh", "-c", "id"]},
        {"hook_kind": "webhook", "hook_target": "http://attacker.example/"},
        {"hook": {"command": ["/bin/sh"]}},
        {"hook": ["/bin/sh", "-c", "id"]},
    ]
    for body in attempts:
        response = digits.client.patch("/api/v1/policies/digits", json=body, headers=operator)
        assert response.status_code == 422, (body, response.text)
    # The old whole-policy PUT is gone, so nothing can slip in through it either.
    put = digits.client.put("/api/v1/policies/digits", json={}, headers=operator)
    assert put.status_code == 405
    assert digits.client.get("/api/v1/policies/digits", headers=operator).json()["hook"] is None


@pytest.mark.parametrize(
    "name",
    [
        "no-such-hook",
        "../write-marker",
        "write-marker/../../bin/sh",
        "/bin/sh",
        "./write-marker",
        "write-marker ",
        "Write-Marker",
        "%2e%2e%2fbin%2fsh",
        "write-marker\x00",
        "",
    ],
)
def test_operator_can_only_select_a_hook_an_admin_defined(digits: Api, name: str) -> None:
    response = digits.client.patch(
        "/api/v1/policies/digits", json={"hook": name}, headers=digits.as_role("operator")
    )
    assert response.status_code == 422, response.text
    if name == "no-such-hook":
        assert f"no retraining hook named '{name}'" in response.json()["detail"]
        assert MARKER_HOOK in response.json()["detail"]


def test_hooks_list_shows_names_not_commands(digits: Api) -> None:
    hooks = digits.client.get("/api/v1/hooks", headers=digits.as_role("viewer")).json()
    assert hooks == [
        {"name": MARKER_HOOK, "kind": "command", "description": None, "timeout_s": 1800.0}
    ]


def test_approved_request_runs_only_the_selected_admin_hook(digits: Api, tmp_path: Path) -> None:
    operator = digits.as_role("operator")
    filed = digits.client.post(
        "/api/v1/retraining", json={"model": "digits", "version": "1"}, headers=operator
    ).json()
    digits.client.post(f"/api/v1/retraining/{filed['id']}/approve", headers=operator)
    digits.client.app.state.drift_loop.tick()  # type: ignore[attr-defined]
    failed = digits.client.get(f"/api/v1/retraining/{filed['id']}", headers=operator).json()
    assert failed["state"] == "failed"
    assert "selects no retraining hook" in failed["reason"]
    assert not (tmp_path / "hook-ran").exists()

    selected = digits.client.patch(
        "/api/v1/policies/digits", json={"hook": MARKER_HOOK}, headers=operator
    )
    assert selected.status_code == 200, selected.text
    second = digits.client.post(
        "/api/v1/retraining", json={"model": "digits", "version": "1"}, headers=operator
    ).json()
    digits.client.post(f"/api/v1/retraining/{second['id']}/approve", headers=operator)
    digits.client.app.state.drift_loop.tick()  # type: ignore[attr-defined]
    ran = digits.client.get(f"/api/v1/retraining/{second['id']}", headers=operator).json()
    cwd, env = json.loads((tmp_path / "hook-ran").read_text())
    assert ran["detail"]["hook"] == MARKER_HOOK
    assert "did not write model.onnx" in ran["reason"]
    # It ran away from the data directory and its secrets, in a directory since removed.
    data_dir = str(digits.settings.data_dir.resolve())
    assert not Path(cwd).resolve().is_relative_to(data_dir) and not Path(cwd).exists()
    assert not any(data_dir in value for value in env.values())
    assert not any(digits.tokens["admin"] in value for value in env.values())
    assert "EDGEFLEET_API_AUTH" not in env and "PYTHONPATH" not in env

    digits.settings.retraining_hooks.clear()  # the admin removes the hook from the config
    third = digits.client.post(
        "/api/v1/retraining", json={"model": "digits", "version": "1"}, headers=operator
    ).json()
    digits.client.post(f"/api/v1/retraining/{third['id']}/approve", headers=operator)
    digits.client.app.state.drift_loop.tick()  # type: ignore[attr-defined]
    gone = digits.client.get(f"/api/v1/retraining/{third['id']}", headers=operator).json()
    assert gone["state"] == "failed"
    assert f"hook '{MARKER_HOOK}' is not defined" in gone["reason"]


def test_policy_change_keeps_what_it_does_not_name(digits: Api) -> None:
    operator = digits.as_role("operator")
    first = digits.client.patch(
        "/api/v1/policies/digits",
        json={"retrain": "automatic", "hook": MARKER_HOOK, "canary_device_count": 2},
        headers=operator,
    )
    assert first.status_code == 200, first.text
    margin = digits.client.patch(
        "/api/v1/policies/digits", json={"comparison_margin": 0.01}, headers=operator
    ).json()
    assert margin["hook"] == MARKER_HOOK
    assert margin["retrain"] == "automatic"
    assert margin["canary_device_count"] == 2
    assert margin["comparison_margin"] == 0.01
    cleared = digits.client.patch(
        "/api/v1/policies/digits", json={"hook": None}, headers=operator
    ).json()
    assert cleared["hook"] is None and cleared["retrain"] == "automatic"
    (entry, *_) = digits.client.get(
        "/api/v1/audit", params={"action": "policy.set"}, headers=operator
    ).json()
    assert entry["detail"] == {"hook": None}


def test_manual_retraining_request_for_an_unknown_model_is_refused(digits: Api) -> None:
    operator = digits.as_role("operator")
    unknown = digits.client.post(
        "/api/v1/retraining", json={"model": "nope", "version": "1"}, headers=operator
    )
    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("model nope not found")
    no_version = digits.client.post(
        "/api/v1/retraining", json={"model": "digits", "version": "9"}, headers=operator
    )
    assert no_version.status_code == 404
    assert "model digits has no version 9" in no_version.json()["detail"]
    assert digits.client.get("/api/v1/retraining", headers=operator).json() == []


def test_manual_retraining_request_is_audited_with_its_requester(digits: Api) -> None:
    operator = digits.as_role("operator")
    response = digits.client.post(
        "/api/v1/retraining",
        json={"model": "digits", "version": "1", "reason": "new sensor batch"},
        headers=operator,
    )
    assert response.status_code == 201, response.text
    request = response.json()
    assert request["requested_by"] == "operator-alice"
    assert request["requested_by_token_id"] == digits.token_ids["operator"]
    (entry,) = digits.client.get(
        "/api/v1/audit", params={"action": "retraining.request"}, headers=operator
    ).json()
    assert entry["actor"] == "operator-alice"
    assert entry["actor_token_id"] == digits.token_ids["operator"]
    assert entry["target"] == f"request {request['id']}"
    assert entry["reason"] == "new sensor batch"


def test_token_names_are_unique_and_the_audit_log_names_the_token_id(api: Api) -> None:
    admin = api.as_role("admin")
    duplicate = api.client.post(
        "/api/v1/tokens", json={"name": "operator-alice", "role": "viewer"}, headers=admin
    )
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["detail"]
    (entry, *_) = api.client.get(
        "/api/v1/audit", params={"action": "token.create"}, headers=admin
    ).json()
    assert entry["actor"] == "bootstrap-admin"
    assert entry["actor_token_id"] == api.token_ids["admin"]
    # An action audited by a service the route hands only a name to still gets the id.
    api.client.put(
        "/api/v1/groups/line-1", json={"device_ids": []}, headers=api.as_role("operator")
    )
    (group_entry, *_) = api.client.get("/api/v1/audit", headers=admin).json()
    assert group_entry["actor"] == "operator-alice"
    assert group_entry["actor_token_id"] == api.token_ids["operator"]


@pytest.mark.parametrize(
    "name",
    ["drift-loop", "system", "System-bot", "systemd", "edgefleet", "EdgeFleet-ci",
     "bootstrap-admin", "auth-disabled", "anonymous", "cp-replica"],
)  # fmt: skip
def test_reserved_token_names_are_refused(api: Api, name: str) -> None:
    response = api.client.post(
        "/api/v1/tokens", json={"name": name, "role": "viewer"}, headers=api.as_role("admin")
    )
    assert response.status_code == 422
    assert "reserved" in response.json()["detail"]


def test_expired_token_fails_authentication_saying_so(api: Api) -> None:
    admin = api.as_role("admin")
    issued = api.client.post(
        "/api/v1/tokens",
        json={"name": "ci-30d", "role": "operator", "expires_in_s": 30 * 86_400},
        headers=admin,
    ).json()
    headers = {"Authorization": f"Bearer {issued['token']}"}
    assert api.client.get("/api/v1/devices", headers=headers).status_code == 200
    assert issued["expires_at"] is not None
    engine = api.client.app.state.engine  # type: ignore[attr-defined]
    with Session(engine) as session:  # 30 days pass
        token = session.get(ApiToken, issued["id"])
        assert token is not None
        token.expires_at = utcnow() - timedelta(seconds=1)
        session.add(token)
        session.commit()
    for method, path in (("GET", "/api/v1/devices"), ("POST", "/api/v1/enrolment/tokens")):
        response = api.client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (path, response.text)
        assert "expired" in response.json()["detail"]
    too_short = api.client.post(
        "/api/v1/tokens", json={"name": "x", "role": "viewer", "expires_in_s": 5}, headers=admin
    )
    assert too_short.status_code == 422
