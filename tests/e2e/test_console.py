"""The operator console in a real browser against a real control plane, broker and agent.

The control plane runs as its own process (``python -m edgefleet.control_plane serve``) with API
tokens on, a private Mosquitto carries the fleet traffic, one ``edgefleet-agent``
process installs what the console rolls out, and a few simulated devices report
status, spool depth and drift windows. Headless Debian chromium, driven by
Playwright, does what an operator would: paste a token, read the fleet, start a
rollout and watch it complete, read the drift charts, decide a retraining request.

Each view is photographed: into a temporary directory, or into the directory named
by ``EDGEFLEET_SCREENSHOTS`` (``EDGEFLEET_SCREENSHOTS=docs/screenshots`` refreshes the
README's pictures). Without chromium the browser tests skip, except under ``CI=true``
where they fail: CI must run them.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.messages import DeviceStatus, TelemetryEvent
from edgefleet.mqtt import MqttLink
from edgefleet_demo.digits import train_digits_model
from tests.support.harness import provision_agent, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("EDGEFLEET_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROFILE = "x86-64-gateway-onnx"
AGENT = "dev-console001"
SIMULATED = ("dev-sim0000a1", "dev-sim0000b2", "dev-sim0000c3")
TIMEOUT = 90.0
UI_TIMEOUT_MS = 90_000


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or scripts/setup.sh)"
    return None


def require_browser() -> None:
    reason = browser_missing()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"console browser test cannot run under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Stack:
    base_url: str
    token: str
    api: httpx.Client
    bundle: dict[str, Any]
    cp_log: Path


def _start_control_plane(
    root: Path, broker: MosquittoBroker
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = root / "control-plane.log"
    env = {**os.environ, "EDGEFLEET_API_AUTH": "true", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.control_plane",
                "serve",
                "--port",
                str(port),
                "--broker",
                broker.url,
                "--data-dir",
                str(root / "cp"),
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"control plane exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{base}/api/v1/health", timeout=2).json()["broker_connected"]
        except httpx.HTTPError:
            return False

    wait_until(healthy, "the control plane to serve and reach the broker")
    return process, base


def _register_and_build(api: httpx.Client) -> dict[str, Any]:
    digits = train_digits_model()
    samples = io.BytesIO()
    np.save(samples, digits.samples, allow_pickle=False)
    response = api.post(
        "/api/v1/models",
        data={"name": "digits", "version": "1"},
        files={"model": ("m.onnx", digits.onnx_bytes), "samples": ("s.npy", samples.getvalue())},
    )
    assert response.status_code == 201, response.text
    response = api.post(
        "/api/v1/bundles", json={"model": "digits", "version": "1", "profile": PROFILE}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _start_agent(root: Path, broker: MosquittoBroker, api: httpx.Client) -> subprocess.Popen[bytes]:
    config, _port = provision_agent(root, api, broker=broker.url, device_id=AGENT, profile=PROFILE)
    return start_agent(config, root / "agent.log")


def _simulate_devices(broker: MosquittoBroker, bundle: dict[str, Any]) -> None:
    """Devices that run the bundle and report status, spool depth and 12 drift windows.

    The first drifts from the fourth window on, the second from the seventh, the third
    stays clean: enough for the fleet rule to fire and for the charts to show a trend.
    """
    start = time.time() - 12 * 240
    onset = {SIMULATED[0]: 3, SIMULATED[1]: 6, SIMULATED[2]: 99}
    for n, device_id in enumerate(SIMULATED):
        link = MqttLink(client_id=device_id, broker=broker.address, clean_start=True)
        link.start()
        assert link.wait_connected(10)
        status = DeviceStatus(
            online=True,
            profile=PROFILE,
            agent_version="0.1.0",
            model="digits",
            model_version="1",
            bundle_id=str(bundle["id"]),
            release=int(bundle["release"]),
            spool_depth=7 * n,
        )
        up = topics.up(device_id, topics.Up.STATUS)
        link.publish(up, status.to_bytes(), retain=True, wait=10)
        telemetry = topics.up(device_id, topics.Up.TELEMETRY)
        for i in range(12):
            drifted = i >= onset[device_id]
            strength = min(1.0, (i - onset[device_id] + 1) / 4) if drifted else 0.0
            psi = [0.02 + 0.004 * ((i + j + n) % 5) for j in range(64)]
            for feature in range(18, 46):  # the centre of the digit images shifts
                shape = (1 - abs(feature - 32) / 16) * (0.55 + 0.45 * ((feature * 7) % 5) / 4)
                psi[feature] += strength * 0.9 * shape
            event = TelemetryEvent(
                kind="drift",
                bundle_id=str(bundle["id"]),
                release=int(bundle["release"]),
                ts=start + 240 * i,
                data={
                    "window": 500,
                    "drifted": drifted,
                    "share_drifted": round(sum(v > 0.2 for v in psi) / len(psi), 4),
                    "psi": psi,
                },
            )
            link.publish(telemetry, event.to_bytes(), wait=10)
        # An old drop report's depth is history: the console shows the status's.
        spool = TelemetryEvent(kind="spool", data={"depth": 999, "dropped": {}})
        link.publish(telemetry, spool.to_bytes(), wait=10)
        link.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("console")
    broker = MosquittoBroker(root / "broker")
    broker.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        control_plane, base = _start_control_plane(root, broker)
        processes.append(control_plane)
        token = (root / "cp" / "admin.token").read_text().strip()
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as api:
            bundle = _register_and_build(api)
            processes.append(_start_agent(root, broker, api))
            _simulate_devices(broker, bundle)

            def agent_online() -> bool:
                response = api.get(f"/api/v1/devices/{AGENT}")
                return response.status_code == 200 and bool(response.json()["online"])

            wait_until(agent_online, "the agent to come online")
            for device_id, site in ((AGENT, "berlin"), *((d, "lyon") for d in SIMULATED)):
                labels = {"site": site, "ring": "early" if device_id == AGENT else "main"}
                response = api.put(f"/api/v1/devices/{device_id}/labels", json={"labels": labels})
                assert response.status_code == 200, response.text
            yield Stack(base, token, api, bundle, root / "control-plane.log")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        broker.kill()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``EDGEFLEET_SCREENSHOTS`` if set, else a temporary directory."""
    target = os.environ.get("EDGEFLEET_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(stack: Stack) -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            yield page
        finally:
            browser.close()
        assert not errors, f"JavaScript errors in the console: {errors}"


def open_view(page: Any, stack: Stack, view: str) -> None:
    page.goto(f"{stack.base_url}/console/#/{view}")
    page.wait_for_selector(f"body[data-loaded='{view.split('/')[0]}']")


@pytest.fixture(scope="module")
def signed_in(page: Any, stack: Stack) -> Any:
    """The console with the operator's token pasted in, as a person would do it."""
    from playwright.sync_api import expect

    page.goto(f"{stack.base_url}/")
    expect(page.locator("#banner")).to_contain_text("needs an API token")
    page.fill("#token", stack.token)
    page.click("#token-form button[type=submit]")
    page.wait_for_selector("body[data-loaded='fleet']")
    expect(page.locator("#banner")).to_be_hidden()
    return page


def test_root_redirects_to_the_console_and_its_files_need_no_token(stack: Stack) -> None:
    response = httpx.get(f"{stack.base_url}/", follow_redirects=True)
    assert response.status_code == 200
    assert str(response.url).endswith("/console/")
    assert "<title>edgefleet console</title>" in response.text
    script = httpx.get(f"{stack.base_url}/console/app.js")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert httpx.get(f"{stack.base_url}/api/v1/devices").status_code == 401


def test_fleet_view_lists_the_agent_online_with_simulated_devices(
    signed_in: Any, stack: Stack, shots: Path
) -> None:
    from playwright.sync_api import expect

    page = signed_in
    open_view(page, stack, "fleet")
    row = page.locator(f"tr[data-device='{AGENT}']")
    expect(row.locator(".pill[data-state='online']")).to_be_visible()
    expect(row).to_contain_text(PROFILE)
    simulated = page.locator(f"tr[data-device='{SIMULATED[2]}']")
    expect(simulated).to_contain_text(str(stack.bundle["id"])[:20])
    expect(simulated.locator("td.num").last).to_have_text("14")  # its spool depth
    page.screenshot(path=str(shots / "fleet.png"), full_page=True)


def test_rollout_started_from_the_console_is_followed_to_complete(
    signed_in: Any, stack: Stack, shots: Path
) -> None:
    from playwright.sync_api import expect

    page = signed_in
    open_view(page, stack, "rollouts")
    page.select_option("#rollout-bundle", str(stack.bundle["id"]))
    page.check(f"#rollout-devices input[value='{AGENT}']")
    page.click("#start-rollout")
    page.wait_for_url("**/console/#/rollouts/*")
    rollout_id = int(page.url.rsplit("/", 1)[1])
    expect(page.locator("h1 .pill")).to_have_attribute(
        "data-state", "complete", timeout=UI_TIMEOUT_MS
    )
    expect(page.locator(f"tr[data-device='{AGENT}'] .pill")).to_have_attribute(
        "data-state", "active"
    )
    page.screenshot(path=str(shots / "rollout.png"), full_page=True)

    rollout = stack.api.get(f"/api/v1/rollouts/{rollout_id}").json()
    assert rollout["bundle_id"] == stack.bundle["id"]
    assert [d["device_id"] for d in rollout["devices"]] == [AGENT]
    assert rollout["state"] == "complete"

    open_view(page, stack, "rollouts")
    expect(page.locator(f"tr[data-rollout='{rollout_id}'] .pill")).to_have_attribute(
        "data-state", "complete"
    )
    page.screenshot(path=str(shots / "rollouts.png"), full_page=True)


def test_drift_view_charts_each_cohort_with_the_drifted_features(
    signed_in: Any, stack: Stack, shots: Path
) -> None:
    from playwright.sync_api import expect

    page = signed_in
    wait_until(
        lambda: len(stack.api.get("/api/v1/drift/series").json()) >= 12 * len(SIMULATED),
        "the drift windows to be stored",
    )
    open_view(page, stack, "drift")
    group = page.locator(f".drift-group[data-cohort='{PROFILE}']")
    expect(group).to_contain_text("digits v1")
    expect(group.locator(".pill[data-state='drifting']")).to_be_visible()
    charts = group.locator("svg.chart")
    expect(charts).to_have_count(2)
    # One line per simulated device plus the fleet mean; then the six top features.
    expect(charts.nth(0).locator("path.series")).to_have_count(len(SIMULATED) + 1)
    expect(charts.nth(1).locator("path.series[data-label='feature 32']")).to_have_count(1)
    expect(charts.nth(1).locator("line.threshold")).to_have_count(1)
    page.screenshot(path=str(shots / "drift.png"), full_page=True)


def test_retraining_request_can_be_rejected_from_the_console(
    signed_in: Any, stack: Stack, shots: Path
) -> None:
    from playwright.sync_api import expect

    page = signed_in
    response = stack.api.post(
        "/api/v1/retraining",
        json={"model": "digits", "version": "1", "reason": "opened by the console test"},
    )
    assert response.status_code == 201, response.text
    request = response.json()
    assert request["state"] == "pending_approval"
    open_view(page, stack, "retraining")
    row = page.locator(f"tr[data-request='{request['id']}']")
    expect(row.locator(".pill")).to_have_attribute("data-state", "pending_approval")
    page.screenshot(path=str(shots / "retraining.png"), full_page=True)
    row.locator("button[data-action='reject']").click()
    expect(row.locator(".pill")).to_have_attribute("data-state", "rejected")
    decided = stack.api.get(f"/api/v1/retraining/{request['id']}").json()
    assert decided["state"] == "rejected"
    # Recorded under the token the console was given, not anything the page claims.
    assert decided["decided_by"] == "bootstrap-admin"
    assert decided["reason"] == "rejected by bootstrap-admin: rejected in the console"


def test_audit_view_shows_the_log_or_says_there_is_none(
    signed_in: Any, stack: Stack, shots: Path
) -> None:
    from playwright.sync_api import expect

    page = signed_in
    open_view(page, stack, "audit")
    paths = httpx.get(f"{stack.base_url}/api/v1/openapi.json").json()["paths"]
    body = page.locator("main .card")
    if "/api/v1/audit" in paths:
        expect(body.locator("table.grid, p.empty")).to_have_count(1)
    else:
        expect(body).to_contain_text("does not keep an audit log yet")
    page.screenshot(path=str(shots / "audit.png"), full_page=True)


def test_configuration_view_shows_the_fleet_values_and_each_devices_report(
    signed_in: Any, stack: Stack, shots: Path
) -> None:
    from playwright.sync_api import expect

    changed = stack.api.patch(
        "/api/v1/config/fleet", json={"set": {"flags.console-check": "on"}, "reason": "console"}
    )
    assert changed.status_code == 200, changed.text
    page = signed_in
    open_view(page, stack, "config")
    card = page.locator("main")
    expect(card).to_contain_text('flags.console-check="on"')
    expect(card).to_contain_text(AGENT)  # the real agent's row: desired and reported
    page.screenshot(path=str(shots / "config.png"), full_page=True)


def test_experiments_view_says_there_are_none_until_one_is_started(
    signed_in: Any, stack: Stack, shots: Path
) -> None:
    from playwright.sync_api import expect

    assert stack.api.get("/api/v1/experiments").json() == []
    page = signed_in
    open_view(page, stack, "experiments")
    expect(page.locator("main")).to_contain_text("No experiments.")
    page.screenshot(path=str(shots / "experiments.png"), full_page=True)
