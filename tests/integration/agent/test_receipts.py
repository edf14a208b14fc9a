"""End-to-end receipts on the agent's side, against a real Mosquitto: the broker's
PUBACK deletes nothing, a receipt does, what stays unreceipted is sent again (install
reports too, across a restart), every down topic survives any payload, and a broker
that stops answering is noticed within seconds."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet import topics
from edgefleet.agent.config import AgentConfig, parse_config
from edgefleet.agent.daemon import Agent
from edgefleet.agent.session import agent_link
from edgefleet.agent.telemetry.counters import LatencyWindow, inference_event
from edgefleet.control_plane.broker.mosquitto import MAX_PACKET_SIZE, MosquittoBroker
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.messages import InstallReport, TelemetryEvent
from edgefleet.mqtt import MqttLink
from edgefleet.topics import Down
from tests.support.polling import wait_until
from tests.support.receipting import ReceiptingPlane

DEVICE = "dev-receipts01"


def agent_config(tmp: Path, broker: MosquittoBroker, extra: str = "") -> AgentConfig:
    root = tmp / "root.json"
    root.write_text("{}")  # never read: no offer reaches these agents
    return parse_config(
        f'device_id = "{DEVICE}"\nprofile = "x86-64-gateway-onnx"\n'
        f'broker = "{broker.url}"\ndata_dir = "{tmp / "agent"}"\ntrust_root = "{root}"\n'
        f"[inference]\nport = {free_port()}\n"
        f"[telemetry]\nwindow_s = 3600\n{extra}"
    )


@pytest.fixture
def plane(broker: MosquittoBroker) -> Iterator[ReceiptingPlane]:
    instance = ReceiptingPlane(broker.address)
    yield instance
    instance.stop()


def latency_window(count: int) -> LatencyWindow:
    window = LatencyWindow()
    for _ in range(count):
        window.add(2.0, True)
    return window


def started(config: AgentConfig) -> Agent:
    agent = Agent(config)
    agent.start()
    assert agent.link.wait_subscribed(10)
    return agent


def test_acknowledged_events_stay_spooled_until_the_control_plane_receipts_them(
    tmp_path: Path, broker: MosquittoBroker, plane: ReceiptingPlane
) -> None:
    agent = started(agent_config(tmp_path, broker, "receipt_timeout_s = 1.0\n"))
    try:
        events = [TelemetryEvent(kind="error", data={"n": i}) for i in range(20)]
        for e in events:
            agent.emit(e)
        # Nobody subscribed: the broker acknowledges every one and drops it.
        wait_until(lambda: agent.forwarder.acked >= 20, "the broker's PUBACKs")
        assert agent.spool.depth() >= 20
        plane.start()  # the control plane comes back: what it missed is sent again
        wait_until(
            lambda: {e.event_id for e in events} <= set(plane.telemetry), "every event to arrive"
        )
        wait_until(lambda: agent.spool.depth() == 0, "the receipted rows to be deleted")
    finally:
        agent.stop()


def test_install_report_is_sent_again_until_receipted_even_across_a_restart(
    tmp_path: Path, broker: MosquittoBroker, plane: ReceiptingPlane
) -> None:
    config = agent_config(tmp_path, broker, "receipt_timeout_s = 60\n")
    plane.receipting = False  # stored but never receipted (a control plane mid-crash)
    plane.start()
    agent = started(config)
    report = InstallReport(bundle_id="digits-1-x", release=1, state="active")
    try:
        agent.publish_report(report)
        wait_until(lambda: report.event_id in plane.reports, "the report on up/report")
    finally:
        agent.stop()
    plane.receipting = True
    again = started(config)
    try:
        wait_until(lambda: plane.copies[report.event_id] >= 2, "the report sent again")
        wait_until(lambda: again.spool.depth() == 0, "the receipted report to be deleted")
        assert plane.reports[report.event_id].state == "active"
    finally:
        again.stop()


POISON = {
    "deep": b"[" * 900_000,
    "huge": b'{"type": "receipt", "event_ids": ["' + b"a" * (MAX_PACKET_SIZE - 1024) + b'"]}',
    "wrong types": b'{"v": 1, "type": "receipt", "event_ids": [1, {"a": []}]}',
    "wrong message": b'{"v": 1, "type": "offer", "bundle_id": 5, "release": "x"}',
    "not json": b"\xff\xfe\x00garbage",
    "empty": b"",
    "nested object": b'{"v": 1, "type": "command", "args": '
    + b'{"a": ' * 5000
    + b"1"
    + b"}" * 5001,
}


def test_every_down_topic_survives_any_payload_and_the_agent_keeps_working(
    tmp_path: Path,
    broker: MosquittoBroker,
    plane: ReceiptingPlane,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    plane.start()
    agent = started(agent_config(tmp_path, broker))
    sender = MqttLink(client_id="cp-poisoner", broker=broker.address, clean_start=True)
    sender.start()
    assert sender.wait_connected(10)
    down = [topics.down(DEVICE, channel) for channel in Down] + [
        topics.down_all(Down.OFFER),
        "fleet/all/down/metadata",
    ]
    try:
        for payload in POISON.values():
            for topic in down:
                sender.publish(topic, payload, qos=1, wait=10)
        for channel in ("offer", "command", "receipt"):
            topic = topics.down(DEVICE, Down(channel))
            wait_until(lambda t=topic: f"topic={t}" in caplog.text, f"a dropped {channel} logged")
        # Every thread still works: telemetry goes out and receipts still delete it.
        event = TelemetryEvent(kind="error", data={"after": "poison"})
        agent.emit(event)
        wait_until(lambda: event.event_id in plane.telemetry, "telemetry after the poison")
        wait_until(lambda: agent.spool.depth() == 0, "receipts after the poison")
        assert agent.link.connected
        assert agent.worker._thread.is_alive()
    finally:
        sender.stop()
        agent.stop()


def test_agent_notices_a_broker_that_stopped_answering_within_seconds(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    link = agent_link(agent_config(tmp_path, broker))  # the agent's own link and settings
    link.start()
    assert link.wait_connected(10)
    pid = broker._process.pid if broker._process else 0
    os.kill(pid, signal.SIGSTOP)
    try:
        # keepalive_s = 3: about 6 s; with the former 30 s it took 42 s.
        wait_until(lambda: not link.connected, "the link to notice the broker is gone", 15)
    finally:
        os.kill(pid, signal.SIGCONT)
        link.stop()


def test_status_carries_the_current_spool_depth_as_it_grows_and_drains(
    tmp_path: Path, broker: MosquittoBroker, plane: ReceiptingPlane
) -> None:
    plane.receipting = False
    plane.start()
    agent = started(agent_config(tmp_path, broker, "receipt_timeout_s = 1.0\n"))
    try:
        for i in range(60):
            agent.emit(TelemetryEvent(kind="error", data={"n": i}))

        def depths() -> list[int]:
            return [s["spool_depth"] for s in plane.statuses if s.get("spool_depth") is not None]

        wait_until(lambda: max(depths(), default=0) >= 60, "a status with the grown depth")
        plane.receipting = True  # resent after the receipt timeout, receipted, deleted
        wait_until(lambda: agent.spool.depth() == 0, "the spool to drain")
        wait_until(lambda: depths()[-1] == 0, "a status saying the spool is empty")
    finally:
        agent.stop()


def test_loss_in_an_overflowing_outage_is_one_summary_that_reconciles_exactly(
    tmp_path: Path, broker: MosquittoBroker, plane: ReceiptingPlane
) -> None:
    plane.start()
    agent = started(
        agent_config(tmp_path, broker, "spool_max_mb = 0.004\n[link]\nreconnect_max_s = 2\n")
    )
    try:
        install = TelemetryEvent(kind="install", priority=0, data={"state": "active"})
        agent.emit(install)
        wait_until(lambda: agent.spool.depth() == 0, "the install event receipted")
        broker.kill()
        wait_until(lambda: not agent.link.connected, "the link to drop")
        windows = [inference_event(latency_window(n), 10.0, "digits-1-x", 1) for n in range(1, 41)]
        drift = TelemetryEvent(kind="drift", priority=1, data={"psi": [0.1] * 8})
        agent.emit(drift)
        for window in windows:
            agent.emit(window)
            agent.spool.flush()  # one overflow after another, each merged into one summary
        broker.start()
        summaries = wait_until(lambda: plane.events("spool"), "the drop summary", 60)
        wait_until(lambda: agent.spool.depth() == 0, "the spool to drain")
    finally:
        agent.stop()
    assert len(summaries) == 1
    summary = summaries[0].data
    received = plane.events("inference")
    assert drift.event_id in plane.telemetry  # never displaced by the summary
    assert summary["lost"]["inference"] + len(received) == len(windows)
    total = sum(int(w.data["count"]) for w in windows)
    assert summary["inferences"] + sum(int(e.data["count"]) for e in received) == total


def test_a_clean_stop_spools_the_open_window_so_no_answered_request_goes_uncounted(
    tmp_path: Path, broker: MosquittoBroker, plane: ReceiptingPlane
) -> None:
    config = agent_config(tmp_path, broker)  # a one-hour window: open when the agent stops
    agent = started(config)
    for _ in range(7):
        agent.stats.record(("no-bundle", 2.0, True))
    agent.stop()
    plane.start()
    agent = started(config)  # the next start sends what the stop spooled
    try:
        wait_until(
            lambda: [e.data.get("count") for e in plane.events("inference")] == [7],
            "the stopped agent's open window to arrive",
        )
    finally:
        agent.stop()
