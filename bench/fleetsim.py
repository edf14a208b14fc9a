"""The fleet simulator's worker side: many real device agents in one OS process.

``bench/fleet_rollout.py`` starts a few worker processes (``run_worker``) and drives
them over a pipe. Each simulated device is composed from the agent's own parts the
way ``edgefleet.agent.daemon.Agent`` composes them: its own ``DeviceSession`` (own client
id and persistent session, last will, retained status), the agent's transport
(``agent_verifier``: targets from the broker's retained blobs, metadata and anything
missing by MQTT request/response; ``--delivery fetch`` turns blobs off),
``Installer`` + ``OfferWorker`` (ngclient verification, release and profile checks,
unpack into a slot, smoke test in onnxruntime, journal, switch) and ``SlotStore``,
each device under its own data directory. Nothing is verified less than on a real
device.

What is left out, and why: the local HTTP inference server (one listening port per
device says nothing about rollouts), the drift supervisor (no inference traffic),
and the telemetry spool with its forwarder thread (a 50 ms tick per device, and a
status file fsync'd every second, would make 1,000 devices in four processes measure
the simulator instead of the system). Install events and telemetry are published
straight on the device's ``up/telemetry`` topic as the same ``TelemetryEvent``
messages the forwarder would send.

The same processes also host the broker baseline: plain paho subscribers, one TCP
session and one network thread each, like the devices' links.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from edgefleet.agent.config import AgentConfig, FetchConfig, ProbationConfig
from edgefleet.agent.daemon import agent_verifier
from edgefleet.agent.inference.runtime import ModelTable
from edgefleet.agent.install.layout import hosted_models, model_dir
from edgefleet.agent.install.slots import SlotStore
from edgefleet.agent.install.updater import Installer, OfferWorker, ensure_trust_root
from edgefleet.agent.session import DeviceSession, device_status
from edgefleet.agent.telemetry.counters import (
    InferenceStats,
    LatencyWindow,
    inference_event,
    install_event,
)
from edgefleet.messages import (
    BundleOffer,
    DeviceCommand,
    DeviceStatus,
    InstallReport,
    TelemetryEvent,
)
from edgefleet.mqtt import BrokerAddress

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 120.0
STOP_ACK_TIMEOUT_S = 10.0
PARALLEL_STOPS = 32
WORKER_TICK_S = 5.0
"""How often an idle offer worker wakes to judge probation (the daemon: 0.5 s).

Probation lasts 0 s here and is judged at the end of each install, so the tick has
nothing to do; a thousand workers waking twice a second cost the shared CPU ~10 %.
"""


@dataclass(frozen=True)
class WorkerSpec:
    """What one worker process simulates: its devices and where they connect."""

    index: int
    broker_url: str
    trust_root: Path
    profile: str
    device_ids: list[str]
    data_dir: Path
    log_path: Path
    fetch: FetchConfig = field(default_factory=FetchConfig)
    skip_model: bool = False
    """Plumbing mode: fetch, verify (TUF hashes, the manifest's member hashes), unpack and
    switch as a device does, but neither load the model nor run the smoke test, so the
    figure measures the fleet's delivery rather than 1,000 devices' onnxruntime on
    the simulator's shared cores."""


class _UnloadedRuntime:
    """What a plumbing-mode device has in place of a loaded model: its signature only."""

    def __init__(self, signature: Any) -> None:
        self._signature = signature

    @property
    def signature(self) -> Any:
        return self._signature

    def infer(self, feeds: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("plumbing mode: no model was loaded")


def skip_model_work() -> None:
    """Plumbing mode, for this worker process: no model load, no smoke test."""
    from edgefleet.agent.install import pipeline

    def unloaded(manifest: Any, _slot_dir: Path) -> _UnloadedRuntime:
        return _UnloadedRuntime(manifest.signature)

    def no_smoke_test(_runtime: Any, _manifest: Any, _slot_dir: Path) -> None:
        return None

    pipeline.load_runtime = unloaded  # type: ignore[assignment]
    pipeline.run_smoke_test = no_smoke_test


@dataclass
class DeviceRecord:
    """What one simulated device saw and did, sent back to the parent after a phase."""

    device_id: str
    offered_at: float | None = None  # wall clock, when the offer arrived
    active_at: float | None = None  # wall clock, when it reported active
    install_seconds: float | None = None
    states: list[str] = field(default_factory=list)
    failure: str | None = None
    installed_bundle: str | None = None  # read back from the device's own active.json


def device_config(spec: WorkerSpec, device_id: str) -> AgentConfig:
    """The configuration a real agent of this fleet would read from its agent.toml.

    Probation lasts 0 s: the simulated devices serve no inference, so the health
    rule has nothing to judge; the model is committed right after the switch.
    """
    return AgentConfig(
        device_id=device_id,
        profile=spec.profile,
        broker=spec.broker_url,
        data_dir=spec.data_dir / device_id,
        trust_root=spec.trust_root,
        fetch=spec.fetch,
        probation=ProbationConfig(seconds=0),
    )


class SimDevice:
    """One device: the agent's link, verifier, installer and offer worker, no HTTP server."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_id = config.device_id
        self.record = DeviceRecord(config.device_id)
        self.models = ModelTable()
        self.session = DeviceSession.for_agent(config, self._status)
        self.installer = Installer(
            config=config,
            holder=self.models,
            # In-process: a child process per device would measure process start-up.
            verifier=agent_verifier(self.session.link, config, isolated=False),
            report=self.publish_report,
            on_active=self.publish_status,
            stats=InferenceStats(),
        )
        self.worker = OfferWorker(self.installer, tick_s=WORKER_TICK_S)

    def start(self) -> None:
        """As ``Agent.start`` minus the endpoint: trust root, worker, subscriptions, link."""
        ensure_trust_root(self.config)
        self.worker.start()
        self.session.on_offer(self.handle_offer)
        self.session.on_command(self.handle_command)
        self.session.start()

    def stop(self, acked: threading.Semaphore) -> None:
        """Say offline (the ack releases ``acked``), stop the worker, then the link."""
        self.worker.stop()
        self.session.publish_status(False, on_published=acked.release)

    def handle_offer(self, offer: BundleOffer) -> None:
        """Network thread: queue, as the daemon does."""
        self.record.offered_at = time.time()
        self.worker.submit(offer)

    def handle_command(self, command: DeviceCommand) -> None:
        self.worker.submit(command)

    def publish_report(self, report: InstallReport) -> None:
        """Install progress on ``up/report``, and the install event the daemon would spool."""
        self.record.states.append(report.state)
        if report.state == "active":
            self.record.active_at = time.time()
            self.record.install_seconds = report.install_seconds
        elif report.state == "failed":
            self.record.failure = report.reason
        self.session.publish_report(report)
        self.publish_event(install_event(report))

    def publish_event(self, event: TelemetryEvent, on_published: Any = None) -> None:
        self.session.publish_event(event, on_published=on_published)

    def publish_status(self) -> None:
        self.session.publish_status()

    def _status(self, online: bool) -> DeviceStatus:
        return device_status(self.config.profile, self.models.models(), online=online)

    def final_record(self) -> DeviceRecord:
        """The record, with what the device's own ``active.json`` says is installed."""
        names = hosted_models(self.config.data_dir)
        active = (
            SlotStore(model_dir(self.config.data_dir, names[0])).read_active() if names else None
        )
        self.record.installed_bundle = active.bundle_id if active else None
        return self.record


# -- the broker baseline: plain paho subscribers ---------------------------------------


class FanoutSubscriber:
    """A plain paho MQTT 5 subscriber that counts the chunks of one broadcast.

    Same network set-up as a device's link (own client id, own TCP session, network
    thread, TCP_NODELAY), none of the agent: this is what the broker alone costs.
    """

    def __init__(self, client_id: str, broker: BrokerAddress, topic: str, chunks: int) -> None:
        self.topic = topic
        self.chunks = chunks
        self.received = 0
        self.bytes = 0
        self.done_at: float | None = None
        self.subscribed = threading.Event()
        client = paho.Client(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
        )
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.connect_async(broker.host, broker.port, keepalive=60, clean_start=True)
        self.client = client

    def start(self) -> None:
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: paho.Client, *_args: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self.subscribed.set()

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self.received += 1
        self.bytes += len(message.payload)
        if self.received == self.chunks:
            self.done_at = time.monotonic()


# -- the worker process ------------------------------------------------------------------


class Worker:
    """Runs the commands the parent sends; every wait is bounded."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.broker = BrokerAddress.parse(spec.broker_url)
        self.devices: list[SimDevice] = []
        self.subscribers: list[FanoutSubscriber] = []

    def start_devices(self) -> dict[str, Any]:
        started = time.monotonic()
        for device_id in self.spec.device_ids:
            device = SimDevice(device_config(self.spec, device_id))
            device.start()
            self.devices.append(device)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        connected = sum(
            d.session.wait_connected(max(0.0, deadline - time.monotonic())) for d in self.devices
        )
        return {"connected": connected, "seconds": time.monotonic() - started}

    def fanout_subscribe(self, topic: str, chunks: int, count: int) -> dict[str, Any]:
        self.subscribers = [
            FanoutSubscriber(f"bench-fan-{self.spec.index}-{i}", self.broker, topic, chunks)
            for i in range(count)
        ]
        for subscriber in self.subscribers:
            subscriber.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        ready = sum(
            s.subscribed.wait(max(0.0, deadline - time.monotonic())) for s in self.subscribers
        )
        return {"subscribed": ready}

    def fanout_wait(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s.done_at is None for s in self.subscribers):
            time.sleep(0.02)
        result = {
            "done_at": [s.done_at for s in self.subscribers if s.done_at is not None],
            "incomplete": sum(s.done_at is None for s in self.subscribers),
            "bytes": sum(s.bytes for s in self.subscribers),
        }
        with ThreadPoolExecutor(PARALLEL_STOPS) as pool:
            list(pool.map(lambda s: s.stop(), self.subscribers))
        self.subscribers = []
        return result

    def telemetry(self, events_per_device: int, bundle_id: str, release: int) -> dict[str, Any]:
        """Every device publishes ``events_per_device`` inference windows, round robin, QoS 1."""
        acked = threading.Semaphore(0)
        window = LatencyWindow()
        for latency in (0.4, 0.6, 0.9, 1.5, 3.0):
            window.add(latency, ok=True)
        started = time.monotonic()
        published = 0
        for _ in range(events_per_device):
            for device in self.devices:
                event = inference_event(window, 10.0, bundle_id, release)
                device.publish_event(event, on_published=acked.release)
                published += 1
        sent = time.monotonic()
        deadline = sent + 120.0
        confirmed = 0
        while confirmed < published and acked.acquire(
            timeout=max(0.0, deadline - time.monotonic())
        ):
            confirmed += 1
        return {
            "started": started,
            "sent": sent,
            "acked_at": time.monotonic(),
            "published": published,
            "acked": confirmed,
        }

    def results(self) -> list[DeviceRecord]:
        return [d.final_record() for d in self.devices]

    def stop(self) -> None:
        acked = threading.Semaphore(0)
        for device in self.devices:
            device.stop(acked)
        deadline = time.monotonic() + STOP_ACK_TIMEOUT_S
        for _ in self.devices:
            if not acked.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        with ThreadPoolExecutor(PARALLEL_STOPS) as pool:
            list(pool.map(lambda d: d.session.stop(), self.devices))


def run_worker(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a worker process: answer commands until ``stop`` or the pipe closes.

    Logs go to ``spec.log_path`` at WARNING (a failed install is a warning), so a
    thousand devices do not flood the benchmark's output.
    """
    logging.basicConfig(
        filename=spec.log_path,
        level=logging.WARNING,
        format="%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    # A worker killed by a signal (a crash in a C extension) leaves every thread's
    # Python stack in its log instead of vanishing.
    crash_log = open(spec.log_path, "a")  # noqa: SIM115 - open for the process's lifetime
    faulthandler.enable(file=crash_log, all_threads=True)
    if spec.skip_model:
        skip_model_work()
    worker = Worker(spec)
    try:
        while True:
            try:
                command, args = conn.recv()
            except EOFError:
                return
            reply: Any
            try:
                if command == "ping":
                    reply = None
                elif command == "start":
                    reply = worker.start_devices()
                elif command == "fanout_subscribe":
                    reply = worker.fanout_subscribe(**args)
                elif command == "fanout_wait":
                    reply = worker.fanout_wait(**args)
                elif command == "telemetry":
                    reply = worker.telemetry(**args)
                elif command == "results":
                    reply = worker.results()
                elif command == "stop":
                    worker.stop()
                    conn.send(("ok", None))
                    return
                else:
                    raise ValueError(f"unknown command {command!r}")
            except Exception as e:  # top of the worker's command loop: report, keep serving
                logger.exception("worker command failed command=%s", command)
                conn.send(("error", f"{type(e).__name__}: {e}"))
                continue
            conn.send(("ok", reply))
    finally:
        conn.close()


if __name__ == "__main__":
    print("fleetsim.py is the worker side of bench/fleet_rollout.py; run that script")
