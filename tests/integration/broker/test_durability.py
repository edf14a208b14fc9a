"""The broker the project starts keeps what it acknowledged across a crash.

Started by root (as CI runs), it must run as an unprivileged user that owns its
directory, so that it can write its persistence file and its log at all; it saves
every ``AUTOSAVE_INTERVAL_S`` seconds, so a SIGKILL loses at most that much, never
a persistent session's queue that was saved before.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.control_plane.broker.mosquitto import AUTOSAVE_INTERVAL_S, MosquittoBroker
from edgefleet.mqtt import MqttLink
from tests.support.harness import Inbox
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

TIMEOUT = 20.0
MESSAGES = 50
TOPIC = "fleet/dev-durable0001/down/command"


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A directory the broker's user can pass through (pytest's own tmp is root's 0700)."""
    path = Path(tempfile.mkdtemp(prefix="edgefleet-broker-"))
    os.chmod(path, 0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_broker_runs_unprivileged_and_keeps_a_sessions_queue_through_sigkill(
    reachable_dir: Path,
) -> None:
    broker = MosquittoBroker(reachable_dir / "broker")
    broker.start()
    links: list[MqttLink] = []
    try:
        assert broker._process is not None
        pid = broker._process.pid
        expected_user = os.getuid()
        if os.geteuid() == 0:
            assert broker.user == "mosquitto", "the test machine has a mosquitto user"
            expected_user = pwd.getpwnam("mosquitto").pw_uid
        assert _uid_of(pid) == expected_user
        # Its stderr is a file, never a pipe that fills up when nobody reads it.
        assert os.readlink(f"/proc/{pid}/fd/2") == str(broker.stderr_log)

        inbox = Inbox()

        def subscriber() -> MqttLink:
            link = MqttLink(client_id="cp-durable01", broker=broker.address, session_expiry=3600)
            link.subscribe("fleet/+/down/#", inbox)
            links.append(link)
            return link

        first = subscriber()
        first.start()
        assert first.wait_subscribed(TIMEOUT)
        first.stop()  # offline now: the broker queues for the session

        publisher = MqttLink(client_id="publisher01", broker=broker.address, clean_start=True)
        links.append(publisher)
        publisher.start()
        assert publisher.wait_connected(TIMEOUT)
        for i in range(MESSAGES):
            publisher.publish(TOPIC, f"m{i}".encode(), wait=TIMEOUT)
        acknowledged = time.time()
        publisher.stop()

        database = broker.data_dir / "mosquitto.db"
        wait_until(
            lambda: database.exists() and database.stat().st_mtime > acknowledged,
            f"an autosave of mosquitto.db (every {AUTOSAVE_INTERVAL_S} s)",
        )
        broker.kill()
        broker.start()

        second = subscriber()
        second.start()
        wait_until(lambda: len(inbox.on(TOPIC)) >= MESSAGES, "the queued messages after restart")
        assert sorted(inbox.on(TOPIC)) == sorted(f"m{i}".encode() for i in range(MESSAGES))

        # The broker's files are its own, and nobody else's to read.
        owner = os.stat(broker.data_dir).st_uid
        assert owner == expected_user
        assert stat.S_IMODE(os.stat(broker.data_dir).st_mode) == 0o700
        for name in ("mosquitto.db", "mosquitto.log", "mosquitto.conf"):
            info = os.stat(broker.data_dir / name)
            assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (expected_user, 0o600), name
        assert "mosquitto version" in (broker.data_dir / "mosquitto.log").read_text()
    finally:
        for link in links:
            link.stop()
        broker.kill()
