"""Two control-plane replicas on one PostgreSQL database and one Mosquitto.

Each test run gets its own database on the local server (dropped afterwards). The
PostgreSQL tests skip when no server answers, except under ``CI=true``, where an
unreachable server is a failure: CI's setup script provides one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from harness import wait_for
from rollout_fleet import SimDevice, add_bundle

from control_plane.app import create_app
from control_plane.broker import MosquittoBroker
from control_plane.netutil import free_port
from control_plane.settings import Settings

pytestmark = pytest.mark.integration

ADMIN_DSN = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
OLD, NEW = "digits-1-x86", "digits-2-x86"
GROUP = "cp-replicas-test"  # replicas with data directories of their own share one group


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh database for this test on the local PostgreSQL, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL unreachable at {ADMIN_DSN} under CI: {e}")
        pytest.skip(f"PostgreSQL unreachable at {ADMIN_DSN}: {e}")
    name = f"edgefleet_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        try:
            yield f"{base}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_replica(tmp_path: Path, broker: MosquittoBroker, db: str, name: str):  # type: ignore[no-untyped-def]
    port = free_port()
    env = os.environ | {
        "EDGEFLEET_CLIENT_ID": f"cp-{name}",
        "EDGEFLEET_ROLLOUT_TICK_S": "0.1",
        "EDGEFLEET_API_AUTH": "false",
        "EDGEFLEET_MQTT_SHARED_GROUP": GROUP,
        # A dead replica's persistent session would keep taking its turn of the shared
        # subscription's reports until it expires; this one goes when the replica does.
        "EDGEFLEET_MQTT_SESSION_EXPIRY_S": "0",
    }
    command = [
        sys.executable, "-m", "control_plane", "serve", "--port", str(port),
        "--broker", broker.url, "--data-dir", str(tmp_path / name), "--database-url", db,
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env)

    def healthy() -> bool:
        try:
            return bool(httpx.get(f"http://127.0.0.1:{port}/api/v1/health").json())
        except (httpx.HTTPError, ValueError):
            return False

    wait_for(healthy, f"replica {name} up", timeout=60)
    return process


def test_surviving_replica_finishes_a_rollout_when_the_other_is_killed(
    tmp_path: Path, broker: MosquittoBroker, pg_url: str
) -> None:
    replica_a = start_replica(tmp_path, broker, pg_url, "a")
    devices: list[SimDevice] = []
    settings = Settings(
        data_dir=tmp_path / "b", broker_url=broker.url, database_url=pg_url,
        client_id="cp-b", rollout_tick_s=0.1, mqtt_shared_group=GROUP,
    )  # fmt: skip
    try:
        app = create_app(settings)
        with TestClient(app) as api:
            assert app.state.link.wait_subscribed(10)
            add_bundle(app.state.engine, OLD, 1)
            add_bundle(app.state.engine, NEW, 2)
            for i in range(4):
                device = SimDevice(broker, f"dev-pgsim{i:04d}")
                device.bundle_id = OLD
                device.connect()
                devices.append(device)
            wait_for(lambda: len(api.get("/api/v1/devices").json()) == 4, what="devices known")
            rollout = api.post(
                "/api/v1/rollouts",
                json={"bundle_id": NEW, "waves": [1, 2, 3, "100%"], "soak_seconds": 0.5},
            ).json()
            url = f"/api/v1/rollouts/{rollout['id']}"
            try:
                wait_for(lambda: api.get(url).json()["wave"] >= 2, what="wave 2 started")
            except AssertionError as e:
                raise AssertionError(f"{e}: {api.get(url).json()}") from None
            replica_a.send_signal(signal.SIGKILL)
            replica_a.wait(10)

            done = wait_for(
                lambda: (r := api.get(url).json())["state"] == "complete" and r,
                "complete",
                timeout=30,
            )
            assert done["counts"] == {"active": 4}
            # Every wave started exactly once across both replicas: one offer per device.
            assert sorted(len(d.offers) for d in devices) == [1, 1, 1, 1]
            starts = api.get(
                "/api/v1/audit",
                params={"rollout_id": rollout["id"], "action": "rollout.wave_start"},
            ).json()
            assert sorted(e["detail"]["wave"] for e in starts) == [1, 2, 3, 4]
    finally:
        for device in devices:
            device.stop()
        if replica_a.poll() is None:
            replica_a.kill()
            replica_a.wait(10)
