"""Control-plane replicas on one PostgreSQL database and one Mosquitto.

The layout is docs/replicas.md's: every replica gets the shared database URL and the
shared directory (``EDGEFLEET_SHARED_DIR``: keys, signed metadata, bundle files,
registered models) and has its own ``EDGEFLEET_CLIENT_ID`` and data directory; the
first replica is started (and initialises the repository) before the next.

Each test run gets its own database on the local server (dropped afterwards). The
PostgreSQL tests skip when no server answers, except under ``CI=true``, where an
unreachable server is a failure: CI's setup script provides one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.control_plane.core.settings import Settings
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.harness import provision_agent, register_model, start_agent
from tests.support.polling import wait_until
from tests.support.rollout_fleet import SimDevice, add_bundle

pytestmark = pytest.mark.integration

OLD, NEW = "digits-1-x86", "digits-2-x86"
PROFILE = "x86-64-gateway-onnx"
GROUP = "cp-replicas-test"  # replicas with data directories of their own share one group


def replica_env(tmp_path: Path, broker: MosquittoBroker, db: str, name: str) -> dict[str, str]:
    """What docs/replicas.md gives each replica: shared settings, then its own."""
    return {
        # shared by every replica
        "EDGEFLEET_DATABASE_URL": db,
        "EDGEFLEET_SHARED_DIR": str(tmp_path / "shared"),
        "EDGEFLEET_BROKER_URL": broker.url,
        "EDGEFLEET_MQTT_SHARED_GROUP": GROUP,
        # its own
        "EDGEFLEET_CLIENT_ID": f"cp-{name}",
        "EDGEFLEET_DATA_DIR": str(tmp_path / name),
    }


def start_replica(tmp_path: Path, broker: MosquittoBroker, db: str, name: str) -> Replica:
    """``edgefleet serve`` as its own process, in the documented layout; waits until healthy."""
    port = free_port()
    env = os.environ | replica_env(tmp_path, broker, db, name) | {
        "EDGEFLEET_ROLLOUT_TICK_S": "0.1",
        "EDGEFLEET_API_AUTH": "false",
    }  # fmt: skip
    command = [
        sys.executable, "-m", "edgefleet.control_plane", "serve", "--port", str(port),
        "--log-level", "warning",
    ]  # fmt: skip
    log = (tmp_path / f"replica-{name}.log").open("ab")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return bool(httpx.get(f"{url}/api/v1/health").json())
        except (httpx.HTTPError, ValueError):
            return False

    try:
        wait_until(healthy, f"replica {name} up", timeout=60)
    except AssertionError:
        process.kill()
        raise
    return Replica(process=process, api=httpx.Client(base_url=url, timeout=120))


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    api: httpx.Client

    def stop(self) -> None:
        self.api.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def test_surviving_replica_finishes_a_rollout_when_the_other_is_killed(
    tmp_path: Path, broker: MosquittoBroker, pg_url: str
) -> None:
    replica_a = start_replica(tmp_path, broker, pg_url, "a").process
    devices: list[SimDevice] = []
    settings = Settings(
        data_dir=tmp_path / "b", broker_url=broker.url, database_url=pg_url,
        shared_dir=tmp_path / "shared", client_id="cp-b", rollout_tick_s=0.1,
        mqtt_shared_group=GROUP,
    )  # fmt: skip
    try:
        with serve(settings) as api:
            app = api.app
            add_bundle(app.state.engine, OLD, 1)
            add_bundle(app.state.engine, NEW, 2)
            for i in range(4):
                device = SimDevice(broker, f"dev-pgsim{i:04d}")
                device.bundle_id = OLD
                device.connect()
                devices.append(device)
            wait_until(lambda: len(api.get("/api/v1/devices").json()) == 4, what="devices known")
            rollout = api.post(
                "/api/v1/rollouts",
                json={"bundle_id": NEW, "waves": [1, 2, 3, "100%"], "soak_seconds": 0.5},
            ).json()
            url = f"/api/v1/rollouts/{rollout['id']}"
            try:
                wait_until(lambda: api.get(url).json()["wave"] >= 2, what="wave 2 started")
            except AssertionError as e:
                raise AssertionError(f"{e}: {api.get(url).json()}") from None
            replica_a.send_signal(signal.SIGKILL)
            replica_a.wait(10)

            done = wait_until(
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


def test_bundles_built_alternately_through_two_replicas_all_install_on_real_agents(
    tmp_path: Path, broker: MosquittoBroker, pg_url: str, digits: DigitsModel
) -> None:
    """The issue's case: a bundle built through A, the next through B. B must sign on top
    of A's targets (not a second, different targets version without A's bundle), and real
    agents, whose fetches either replica answers, must install every one."""
    first = start_replica(tmp_path, broker, pg_url, "a")  # initialises the repository
    second = start_replica(tmp_path, broker, pg_url, "b")  # finds it: must not re-initialise
    replicas = [first, second]
    agents: list[subprocess.Popen[bytes]] = []
    devices = ["dev-replica001", "dev-replica002"]
    try:
        root = first.api.get("/api/v1/trust/root").content
        assert second.api.get("/api/v1/trust/root").content == root
        for version in ("1", "2", "3"):
            register_model(first.api, digits.onnx_bytes, digits.samples, version=version)
        for device_id in devices:
            (tmp_path / device_id).mkdir()
            config, _port = provision_agent(
                tmp_path / device_id, second.api, broker=broker.url, device_id=device_id,
                profile=PROFILE,
            )  # fmt: skip
            agents.append(start_agent(config, tmp_path / f"{device_id}.log"))
        wait_until(
            lambda: (
                {d["id"] for d in first.api.get("/api/v1/devices").json() if d["online"]}
                >= set(devices)
            ),
            "agents online",
        )

        bundles: list[dict[str, Any]] = []
        for n, version in enumerate(("1", "2", "3")):
            builder = replicas[n % 2]  # a, b, a
            response = builder.api.post(
                "/api/v1/bundles", json={"model": "digits", "version": version, "profile": PROFILE}
            )
            assert response.status_code == 201, response.text
            bundles.append(response.json())

        for n, bundle in enumerate(bundles):
            api = replicas[(n + 1) % 2].api  # rolled out through the other replica
            response = api.post(
                "/api/v1/rollouts", json={"bundle_id": bundle["id"], "device_ids": devices}
            )
            assert response.status_code == 201, response.text
            url = f"/api/v1/rollouts/{response.json()['id']}"
            done = wait_until(
                lambda: (r := api.get(url).json())["state"] != "in_progress" and r,  # noqa: B023
                f"rollout of {bundle['id']}",
                timeout=120,
            )
            assert (done["state"], done["counts"]) == ("complete", {"active": 2}), done
        for device_id in devices:
            device = first.api.get(f"/api/v1/devices/{device_id}").json()
            assert device["bundle_id"] == bundles[-1]["id"]
    finally:
        for agent in agents:
            agent.terminate()
            agent.wait(15)
        for replica in replicas:
            replica.stop()
