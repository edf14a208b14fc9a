"""The TUF fetcher over MQTT request/response, against a real Mosquitto.

A tiny responder built on ``MqttLink`` plays the control plane: it serves files
from a dict in the chunks asked for, answering with correlation data and the
``status``/``total``/``offset`` user properties.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import DownloadError, DownloadHTTPError
from tuf.ngclient import Updater

from agent.fetcher import MqttFetcher, repository_path
from control_plane.broker import MosquittoBroker
from control_plane.errors import ControlPlaneError
from control_plane.repository import SignedRepository
from edgefleet import topics
from edgefleet.messages import (
    FETCH_OFFSET,
    FETCH_REASON,
    FETCH_STATUS,
    FETCH_TOTAL,
    FetchRequest,
    decode_as,
)
from edgefleet.mqtt import Incoming, MqttLink
from edgefleet.topics import Up

pytestmark = pytest.mark.integration

DEVICE = "dev-fetchtest01"
CONNECT_TIMEOUT = 10.0


class Responder:
    """Serves ``files`` (repository path -> bytes) to fetch requests from every device."""

    def __init__(self, link: MqttLink, files: dict[str, bytes]) -> None:
        self.link = link
        self.files = files
        self.requests: list[FetchRequest] = []
        self._lock = threading.Lock()
        link.subscribe(topics.up_filter(Up.FETCH), self.handle, qos=1)

    def handle(self, incoming: Incoming) -> None:
        request = decode_as(incoming.payload, FetchRequest)
        with self._lock:
            self.requests.append(request)
        data = self.files.get(request.path)
        assert incoming.response_topic is not None
        if data is None:
            props = {FETCH_STATUS: "404", FETCH_REASON: f"{request.path} not found"}
            payload = b""
        else:
            payload = data[request.offset : request.offset + request.length]
            props = {
                FETCH_STATUS: "200",
                FETCH_TOTAL: str(len(data)),
                FETCH_OFFSET: str(request.offset),
            }
        self.link.publish(
            incoming.response_topic,
            payload,
            qos=1,
            correlation=incoming.correlation,
            user_properties=props,
        )


def _link(broker: MosquittoBroker, client_id: str) -> MqttLink:
    link = MqttLink(client_id=client_id, broker=broker.address, clean_start=True)
    return link


@pytest.fixture
def device_link(broker: MosquittoBroker) -> Iterator[MqttLink]:
    link = _link(broker, DEVICE)
    yield link
    link.stop()


@pytest.fixture
def responder_link(broker: MosquittoBroker) -> Iterator[MqttLink]:
    link = _link(broker, "cp-responder")
    yield link
    link.stop()


def _start(*links: MqttLink) -> None:
    for link in links:
        link.start()
    for link in links:
        assert link.wait_connected(CONNECT_TIMEOUT)


def _fetch_all(fetcher: MqttFetcher, url: str) -> bytes:
    return b"".join(fetcher.fetch(url))


def _wait_subscribed(fetcher: MqttFetcher, files: dict[str, bytes]) -> None:
    """Poll (bounded) until a tiny fetch succeeds: both subscriptions are live."""
    files["metadata/probe.json"] = b"{}"
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        try:
            assert _fetch_all(fetcher, "mqtt://repo/metadata/probe.json") == b"{}"
            return
        except DownloadError:
            if time.monotonic() > deadline:
                raise


def test_multi_chunk_target_arrives_intact_and_in_order(
    device_link: MqttLink, responder_link: MqttLink
) -> None:
    data = os.urandom(300_000 + 17)  # not a multiple of the chunk size
    files = {"targets/digits-1.tar": data}
    responder = Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=16 * 1024, window=4, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)

    assert _fetch_all(fetcher, "mqtt://repo/targets/digits-1.tar") == data
    chunk_requests = [r for r in responder.requests if r.path == "targets/digits-1.tar"]
    assert len(chunk_requests) >= len(data) // (16 * 1024)
    assert all(r.length <= 16 * 1024 for r in chunk_requests)


def test_download_file_via_tuf_interface_respects_max_length(
    device_link: MqttLink, responder_link: MqttLink
) -> None:
    files = {"metadata/timestamp.json": b"x" * 5000}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=1024, window=2, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)

    assert (
        fetcher.download_bytes("mqtt://repo/metadata/timestamp.json", 5000)
        == files["metadata/timestamp.json"]
    )
    with pytest.raises(DownloadError):
        fetcher.download_bytes("mqtt://repo/metadata/timestamp.json", 4000)


def test_empty_file_yields_no_bytes(device_link: MqttLink, responder_link: MqttLink) -> None:
    files = {"targets/empty.bin": b""}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)
    assert _fetch_all(fetcher, "mqtt://repo/targets/empty.bin") == b""


def test_missing_file_raises_download_http_error_404(
    device_link: MqttLink, responder_link: MqttLink
) -> None:
    files: dict[str, bytes] = {}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)

    with pytest.raises(DownloadHTTPError) as caught:
        _fetch_all(fetcher, "mqtt://repo/metadata/2.root.json")
    assert caught.value.status_code == 404
    assert "not found" in str(caught.value)


def test_no_responder_raises_download_error_after_bounded_retries(
    device_link: MqttLink,
) -> None:
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.2, retries=1)
    _start(device_link)
    with pytest.raises(DownloadError, match="no answer"):
        _fetch_all(fetcher, "mqtt://repo/metadata/timestamp.json")


def test_not_connected_raises_download_error_at_once(broker: MosquittoBroker) -> None:
    link = _link(broker, DEVICE)  # never started
    fetcher = MqttFetcher(link, DEVICE, timeout=5.0)
    with pytest.raises(DownloadError, match="not connected"):
        _fetch_all(fetcher, "mqtt://repo/metadata/timestamp.json")


def test_unmatched_response_is_dropped(device_link: MqttLink, responder_link: MqttLink) -> None:
    files = {"targets/a.bin": b"abc"}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)
    fetcher.handle_response(
        Incoming(topic=topics.down(DEVICE, topics.Down.FETCH), payload=b"junk", correlation=b"x")
    )
    assert _fetch_all(fetcher, "mqtt://repo/targets/a.bin") == b"abc"


@pytest.mark.parametrize(
    "url",
    [
        "https://repo/metadata/root.json",
        "mqtt://elsewhere/metadata/root.json",
        "mqtt://repo/secrets/key",
        "mqtt://repo/targets/../etc/passwd",
    ],
)
def test_urls_outside_the_repository_are_refused(url: str) -> None:
    with pytest.raises(DownloadError):
        repository_path(url)


def test_repository_urls_map_to_repository_paths() -> None:
    assert repository_path("mqtt://repo/metadata/2.root.json") == "metadata/2.root.json"
    assert repository_path("mqtt://repo/targets/digits-1.tar") == "targets/digits-1.tar"


class RepositoryResponder:
    """Serves a control-plane ``SignedRepository`` the way the control plane does."""

    def __init__(self, link: MqttLink, repo: Any) -> None:
        self.link = link
        self.repo = repo
        link.subscribe(topics.up_filter(Up.FETCH), self.handle, qos=1)

    def handle(self, incoming: Incoming) -> None:
        request = decode_as(incoming.payload, FetchRequest)
        try:
            data, total = self.repo.read_chunk(request.path, request.offset, request.length)
            props = {
                FETCH_STATUS: "200",
                FETCH_TOTAL: str(total),
                FETCH_OFFSET: str(request.offset),
            }
        except ControlPlaneError as e:
            data, props = b"", {FETCH_STATUS: "404", FETCH_REASON: str(e)}
        assert incoming.response_topic is not None
        self.link.publish(
            incoming.response_topic,
            data,
            qos=1,
            correlation=incoming.correlation,
            user_properties=props,
        )


def test_tuf_updater_refreshes_and_downloads_a_target_over_mqtt(
    tmp_path: Path, device_link: MqttLink, responder_link: MqttLink
) -> None:
    repo = SignedRepository(tmp_path / "repo")
    repo.init_or_load()
    bundle = os.urandom(200_000)
    repo.add_target("digits-1.tar", bundle, {"bundle_id": "digits-1", "release": 1})
    metadata_dir = tmp_path / "client" / "metadata"
    metadata_dir.mkdir(parents=True)
    (metadata_dir / "root.json").write_bytes(repo.root_bytes())
    RepositoryResponder(responder_link, repo)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=32 * 1024, timeout=2.0)
    _start(responder_link, device_link)

    updater = Updater(
        metadata_dir=str(metadata_dir),
        metadata_base_url="mqtt://repo/metadata/",
        target_base_url="mqtt://repo/targets/",
        target_dir=str(tmp_path / "client" / "downloads"),
        fetcher=fetcher,
        bootstrap=None,
    )
    updater.refresh()  # probes 2.root.json, which must come back as a 404
    info = updater.get_targetinfo("digits-1.tar")
    assert info is not None
    assert info.custom == {"bundle_id": "digits-1", "release": 1}
    path = updater.download_target(info)
    assert Path(path).read_bytes() == bundle
