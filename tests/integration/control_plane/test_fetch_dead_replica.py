"""A fetch request stranded on a dead control-plane replica is asked again promptly.

The broker keeps handing a disconnected member of a shared subscription its turn until
that member's session expires, so with one live control plane and one dead replica's
session in the group, about every other fetch request lands where nobody answers. The
agent's fetcher re-asks such a request after a couple of seconds (the re-ask goes to
the live replica) instead of waiting out its long per-chunk timeout.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from edgefleet import topics
from edgefleet.agent.verification.fetcher import MqttFetcher
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.mqtt import MqttLink
from tests.support.control_plane import serve
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

DEVICE = "dev-stranded01"
GROUP = "cp-fetch-test-group"
FETCHES = 8
LONG_TIMEOUT = 300.0  # the fetcher's regular re-ask wait: far beyond the test's patience


def test_fetches_stranded_on_a_dead_replicas_session_are_reasked_on_the_live_one(
    tmp_path: Path, broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    # What a killed replica leaves behind: its session, holding a share of the group.
    dead = MqttLink(
        client_id="cp-deadreplica",
        broker=broker.address,
        clean_start=False,
        session_expiry=600,
    )
    dead.subscribe(topics.up_filter(topics.Up.FETCH), lambda _m: None, shared_group=GROUP)
    dead.start()
    assert dead.wait_subscribed(10)
    dead.stop()

    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url, mqtt_shared_group=GROUP)
    with serve(settings):
        device = MqttLink(client_id=DEVICE, broker=broker.address, clean_start=True)
        fetcher = MqttFetcher(device, DEVICE, timeout=LONG_TIMEOUT)
        device.start()
        assert device.wait_subscribed(10)
        caplog.set_level(logging.INFO, logger="edgefleet.agent.verification.fetcher")
        fetched: list[bytes] = []

        def fetch_all() -> None:
            for _ in range(FETCHES):
                fetched.append(b"".join(fetcher.stream("metadata/timestamp.json", 1 << 20)))

        worker = threading.Thread(target=fetch_all, daemon=True)
        try:
            worker.start()
            # Bounded far below LONG_TIMEOUT: only the quick re-ask can get here in time.
            wait_until(lambda: len(fetched) == FETCHES, "every fetch answered", timeout=60)
            assert len(set(fetched)) == 1 and fetched[0].startswith(b"{")
            reasked = [r for r in caplog.records if "fetch chunk timed out" in r.getMessage()]
            assert reasked, "no request landed on the dead replica's session"
        finally:
            device.stop()
            worker.join(5)
