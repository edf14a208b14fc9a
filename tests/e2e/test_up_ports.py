"""``edgefleet up`` refuses ports already in use instead of talking to whoever holds them.

Before, a taken MQTT port made the private Mosquitto fail to bind while the control
plane went on with whatever broker already listened there (on 1883, often a system
one). Now ``up`` names the port and the flag that moves it, and starts nothing.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.errors import BrokerError
from edgefleet.control_plane.core.netutil import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port something listens on for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def up(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgefleet.control_plane", "up"]
    command += ["--data-dir", str(tmp_path / "data"), *args]
    # Bounded: a regression would start the server and never return.
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_up_refuses_a_taken_broker_port_naming_it_and_the_flag(
    tmp_path: Path, taken_port: int
) -> None:
    result = up(tmp_path, "--mqtt-port", str(taken_port), "--port", str(free_port()))

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {taken_port} on 127.0.0.1 is already in use" in result.stderr
    assert "choose a free port with --mqtt-port" in result.stderr
    assert not (tmp_path / "data" / "broker").exists()  # nothing was started


def test_up_refuses_a_taken_api_port_naming_the_flag(tmp_path: Path, taken_port: int) -> None:
    result = up(tmp_path, "--mqtt-port", str(free_port()), "--port", str(taken_port))

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {taken_port} on 127.0.0.1 is already in use" in result.stderr
    assert "choose a free port with --port" in result.stderr


def test_mosquitto_refuses_to_start_on_a_taken_port(tmp_path: Path, taken_port: int) -> None:
    broker = MosquittoBroker(tmp_path / "broker", port=taken_port)

    with pytest.raises(BrokerError, match=f"port {taken_port} on 127.0.0.1 is already in use"):
        broker.start()
    assert not broker.running
