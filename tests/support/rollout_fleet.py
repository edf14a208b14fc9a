"""Simulated devices for rollout tests: speak the wire contract over a real Mosquitto.

Each ``SimDevice`` has its own persistent MQTT session (the agent's ``DeviceSession``:
status on connect, offline last will, decoded offers and commands), announces its status,
answers offers with install reports (``active`` or a smoke-test ``failed``), answers
``rollback`` commands with ``rolled_back``, and, once active, sends an ``inference``
telemetry window with the error rate and p95 it was told to have for that bundle.
A device can also stall an install (``Behaviour.stall_after``): never answer the
offer, or go silent after ``downloading`` or ``verified``, until the test calls
``finish_stalled`` (or, with ``stall_once``, until the bundle is offered again).
Bundles are rows inserted directly: these tests are about the orchestration, not
about building or verifying bundles (tests/integration/fleet/test_install_flow.py covers that).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet.agent.config import LinkConfig
from edgefleet.agent.session import DeviceSession, device_link
from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import Bundle
from edgefleet.messages import (
    BundleOffer,
    DeviceCommand,
    DeviceStatus,
    InstallReport,
    TelemetryEvent,
)
from tests.support.polling import wait_until

PROFILE = "x86-64-gateway-onnx"
TIMEOUT = 20.0


def add_bundle(engine: Engine, bundle_id: str, release: int, profile: str = PROFILE) -> None:
    with Session(engine) as session:
        session.add(
            Bundle(
                id=bundle_id,
                model="digits",
                model_version=str(release),
                profile=profile,
                release=release,
                target=f"{bundle_id}.tar",
                sha256="0" * 64,
                length=1,
                path="/nonexistent",
            )
        )
        session.commit()


@dataclass
class Behaviour:
    """How a simulated device answers a given bundle."""

    smoke_test_fails: bool = False
    error_rate: float = 0.0
    p95_ms: float = 5.0
    inferences: int = 200
    # Stop reporting after this state: "offered" never answers the offer, "downloading"
    # or "verified" go silent part-way. None installs straight through.
    stall_after: str | None = None
    stall_once: bool = True  # a later offer of the same bundle installs normally


STEPS = ("downloading", "verified", "staged", "smoke_tested")


@dataclass
class SimDevice:
    broker: MosquittoBroker
    device_id: str
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    bundle_id: str | None = None
    previous: str | None = None
    offers: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    session: DeviceSession | None = None
    holding: bool = False  # keep offers unanswered until ``release``
    held: list[BundleOffer] = field(default_factory=list)
    stalled: list[BundleOffer] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def connect(self) -> None:
        """Connect (the session announces the status on connect) and wait for it."""
        link = device_link(
            self.device_id,
            self.broker.address,
            will=DeviceStatus(online=False),
            settings=LinkConfig(keepalive_s=30),
            session_expiry=3600,
        )
        self.session = DeviceSession(link, self._status)
        self.session.on_offer(self._on_offer_message)
        self.session.on_command(self._on_command_message)
        self.session.start()
        assert self.session.wait_connected(TIMEOUT)

    def _status(self, online: bool) -> DeviceStatus:
        return DeviceStatus(
            online=online, profile=PROFILE, agent_version="sim", bundle_id=self.bundle_id
        )

    def go_offline(self) -> None:
        """A clean disconnect after saying so; the broker keeps the session's queue."""
        assert self.session is not None
        self.session.close(timeout=10)
        self.session = None

    def stop(self) -> None:
        if self.session is not None:
            self.session.stop()
            self.session = None

    def _report(self, bundle_id: str, rollout_id: int | None, state: Any, reason: str = "") -> None:
        report = InstallReport(
            bundle_id=bundle_id,
            rollout_id=rollout_id,
            state=state,
            reason=reason or None,
            install_seconds=0.1 if state == "active" else None,
        )
        if self.session is not None:  # network thread: never wait here
            self.reported.append(str(state))
            self.session.publish_report(report)

    def send_inference(self, bundle_id: str | None = None) -> None:
        bundle = bundle_id or self.bundle_id
        if bundle is None:
            return
        behaviour = self.behaviours.get(bundle, Behaviour())
        n = behaviour.inferences
        errors = round(n * behaviour.error_rate)
        bounds = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
        counts = [0] * (len(bounds) + 1)
        counts[next(i for i, b in enumerate(bounds) if b >= behaviour.p95_ms)] = n
        event = TelemetryEvent(
            kind="inference",
            bundle_id=bundle,
            data={
                "window_s": 10,
                "count": n,
                "errors": errors,
                "latency_ms": {"p50": behaviour.p95_ms, "p95": behaviour.p95_ms},
                "histogram": {"bounds_ms": bounds, "counts": counts},
            },
        )
        if self.session is not None:
            self.session.publish_event(event)

    def _on_offer_message(self, offer: BundleOffer) -> None:
        with self._lock:
            self._on_offer(offer)

    def _on_command_message(self, command: DeviceCommand) -> None:
        with self._lock:
            self._on_command(command)

    def release(self) -> None:
        with self._lock:
            self.holding = False
            held, self.held = self.held, []
            for offer in held:
                self._answer(offer)

    def _on_offer(self, offer: BundleOffer) -> None:
        self.offers.append(offer.bundle_id)
        if self.holding:
            self.held.append(offer)
        else:
            self._answer(offer)

    def finish_stalled(self) -> None:
        """Carry the stalled installs on to the end (the device finished after all)."""
        with self._lock:
            stalled, self.stalled = self.stalled, []
            for offer in stalled:
                self._finish(offer)

    def _answer(self, offer: BundleOffer) -> None:
        if self.bundle_id == offer.bundle_id:
            self._report(offer.bundle_id, offer.rollout_id, "active")
            return
        behaviour = self.behaviours.get(offer.bundle_id, Behaviour())
        if behaviour.stall_after is not None:
            steps = ("offered", *STEPS)
            for state in steps[1 : steps.index(behaviour.stall_after) + 1]:
                self._report(offer.bundle_id, offer.rollout_id, state)
            self.stalled.append(offer)
            if behaviour.stall_once:
                self.behaviours[offer.bundle_id] = replace(behaviour, stall_after=None)
            return
        self._report(offer.bundle_id, offer.rollout_id, "downloading")
        self._finish(offer)

    def _finish(self, offer: BundleOffer) -> None:
        behaviour = self.behaviours.get(offer.bundle_id, Behaviour())
        if behaviour.smoke_test_fails:
            self._report(offer.bundle_id, offer.rollout_id, "failed", "smoke test failed: 3/8")
            return
        self.previous, self.bundle_id = self.bundle_id, offer.bundle_id
        self._report(offer.bundle_id, offer.rollout_id, "active")
        self.send_inference()

    def _on_command(self, command: DeviceCommand) -> None:
        self.commands.append(command.command)
        if command.command != "rollback" or self.bundle_id != command.bundle_id:
            return
        rolled = self.bundle_id
        self.bundle_id, self.previous = self.previous, None
        assert rolled is not None
        self._report(rolled, command.rollout_id, "rolled_back", command.reason or "")


OLD, NEW = "digits-1-x86", "digits-2-x86"


class Rig:
    """A control plane (in-process, ticking every 0.1 s) and a simulated fleet on ``broker``."""

    def __init__(self, tmp_path: Path, broker: MosquittoBroker) -> None:
        self.tmp_path = tmp_path
        self.broker = broker
        self.devices: list[SimDevice] = []
        self.api: TestClient | None = None
        self.settings = Settings(
            data_dir=tmp_path / "cp", broker_url=broker.url, client_id="cp-rollouts",
            rollout_tick_s=0.1,
        )  # fmt: skip

    def start_control_plane(self) -> TestClient:
        app = create_app(self.settings)
        self.api = TestClient(app)
        self.api.__enter__()
        assert app.state.link.wait_subscribed(10)
        return self.api

    def stop_control_plane(self) -> None:
        if self.api is not None:
            self.api.__exit__(None, None, None)
            self.api = None

    @property
    def engine(self) -> Any:
        assert self.api is not None
        return self.api.app.state.engine  # type: ignore[attr-defined]

    def fleet(self, n: int, new: Behaviour | None = None) -> list[SimDevice]:
        """``n`` devices all on OLD, each answering NEW with ``new``."""
        add_bundle(self.engine, OLD, 1)
        add_bundle(self.engine, NEW, 2)
        for i in range(n):
            device = SimDevice(self.broker, f"dev-sim{i:05d}", {NEW: new or Behaviour()})
            device.bundle_id = OLD
            device.connect()
            self.devices.append(device)
        wait_until(lambda: len(self.get("/devices")) == n, what="devices known")
        return self.devices

    def get(self, path: str, **params: Any) -> Any:
        assert self.api is not None
        response = self.api.get(f"/api/v1{path}", params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def post(self, path: str, body: Any = None, status: int = 200) -> Any:
        assert self.api is not None
        response = self.api.post(f"/api/v1{path}", json=body)
        assert response.status_code == status, response.text
        return response.json()

    def create(self, **body: Any) -> dict[str, Any]:
        return dict(self.post("/rollouts", {"bundle_id": NEW, **body}, status=201))

    def until(self, rollout_id: int, what: str, predicate: Any, timeout: float = 20) -> Any:
        def check() -> Any:
            rollout = self.get(f"/rollouts/{rollout_id}")
            return rollout if predicate(rollout) else None

        return wait_until(check, what, timeout=timeout)

    def ended(self, rollout_id: int) -> dict[str, Any]:
        return dict(self.until(rollout_id, "rollout ended", lambda r: r["state"] not in RUNNING))


RUNNING = ("in_progress", "paused", "draft")
