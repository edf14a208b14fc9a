"""How long the agent's MQTT link takes to notice a broker that stopped answering.

A stopped (SIGSTOP) or partitioned broker keeps its TCP connection open, so nothing
fails by itself: only MQTT keepalive tells. This starts a private Mosquitto, connects
a link with the agent's settings (``edgefleet.agent.session.agent_link``; telemetry-like QoS 1
publishes at 5/s), SIGSTOPs the broker and times until the link reports itself
disconnected; then SIGCONT. Once with the former keepalive (30 s) and once with the
agent's configured default (``[link] keepalive_s``).

    .venv/bin/python bench/link_stall.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

from edgefleet.agent.config import LinkConfig, parse_config
from edgefleet.agent.session import agent_link
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker

DEVICE = "dev-linkstall01"


def time_to_notice(tmp: Path, keepalive: int) -> float:
    """Seconds from SIGSTOP of the broker until the link says it is disconnected."""
    broker = MosquittoBroker(tmp / f"broker-{keepalive}-{time.monotonic_ns()}")
    broker.start()
    try:
        config = parse_config(
            f'device_id = "{DEVICE}"\nprofile = "x86-64-gateway-onnx"\n'
            f'broker = "{broker.url}"\ndata_dir = "{tmp / "agent"}"\n'
            f'trust_root = "{tmp / "root.json"}"\n[link]\nkeepalive_s = {keepalive}\n'
        )
        link = agent_link(config)
        link.start()
        assert link.wait_connected(10), "no connection"
        stop = threading.Event()

        def publish() -> None:
            while not stop.wait(0.2):
                link.publish(f"fleet/{DEVICE}/up/telemetry", b"{}", qos=1)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        time.sleep(1.0)
        pid = broker._process.pid if broker._process else 0
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            while link.connected and time.monotonic() - started < 180:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
            stop.set()
            link.stop()
        return elapsed
    finally:
        broker.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    default = LinkConfig().keepalive_s
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "root.json").write_text("{}")
        for keepalive, label in ((30, "former keepalive 30 s"), (default, "agent default")):
            times = [time_to_notice(tmp, keepalive) for _ in range(args.rounds)]
            print(
                f"{label} (keepalive_s = {keepalive}): noticed after "
                f"{', '.join(f'{t:.1f}' for t in times)} s "
                f"(median {statistics.median(times):.1f} s)"
            )


if __name__ == "__main__":
    main()
