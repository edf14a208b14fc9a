"""The control plane's link workers are supervised: one that dies comes back, visibly.

The telemetry worker of a real control plane is killed for real — an exception
raised inside its thread from outside (``PyThreadState_SetAsyncExc``), the way a
fault nothing in the worker catches would end it — while real Mosquitto carries
the traffic.
"""

from __future__ import annotations

import ctypes
import re
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import MqttLink
from tests.support.control_plane import serve
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

DEVICE = "dev-supervise01"


class WorkerKilled(BaseException):
    """Raised inside the worker thread; not an ``Exception``, so nothing there catches it."""


def kill_thread(name: str) -> None:
    (thread,) = [t for t in threading.enumerate() if t.name == name]
    assert thread.ident is not None
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(WorkerKilled)
    )
    assert hit == 1


def restarts(api: TestClient, worker: str) -> float:
    match = re.search(
        rf'^edgefleet_worker_restarts_total{{worker="{worker}"}} (\S+)$',
        api.get("/metrics").text,
        re.MULTILINE,
    )
    return float(match.group(1)) if match else -1.0


def test_a_killed_telemetry_worker_is_restarted_and_shows_in_health_and_metrics(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    with serve(Settings(data_dir=tmp_path / "cp", broker_url=broker.url)) as api:
        app = api.app
        assert api.get("/api/v1/health").json() == {
            "status": "ok",
            "broker_connected": True,
            "workers": [],
        }
        assert restarts(api, "cp-telemetry") == 0.0
        device = MqttLink(client_id=DEVICE, broker=broker.address, clean_start=True)
        device.start()
        assert device.wait_connected(10)
        topic = topics.up(DEVICE, topics.Up.TELEMETRY)
        try:
            # The worker sleeps in its queue; the exception lands when a message wakes it.
            kill_thread("cp-telemetry")
            device.publish(topic, TelemetryEvent(kind="inference").to_bytes(), wait=10)

            health = wait_until(
                lambda: (h := api.get("/api/v1/health").json())["status"] == "degraded" and h,
                "health to degrade",
            )
            (worker,) = health["workers"]
            assert worker["name"] == "cp-telemetry"
            assert worker["restarts"] == 1
            assert worker["last_error"].startswith("WorkerKilled")
            assert worker["last_death_at"] is not None
            wait_until(lambda: restarts(api, "cp-telemetry") == 1.0, "the restart in /metrics")
            wait_until(
                lambda: any(
                    w.name == "cp-telemetry" and w.running for w in app.state.link.workers()
                ),
                "the worker running again",
            )
            assert 'edgefleet_worker_up{worker="cp-telemetry"} 1.0' in api.get("/metrics").text

            # The restarted worker stores telemetry again.
            after = TelemetryEvent(kind="inference", data={"count": 7})
            device.publish(topic, after.to_bytes(), wait=10)
            wait_until(
                lambda: any(
                    e["event_id"] == after.event_id
                    for e in api.get("/api/v1/events", params={"device_id": DEVICE}).json()
                ),
                "telemetry stored by the restarted worker",
            )
            # Still reported for a while after the death, though running again.
            assert api.get("/api/v1/health").json()["status"] == "degraded"
        finally:
            device.stop()
