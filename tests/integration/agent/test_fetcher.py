"""Repository files over MQTT request/response, and TUF verification fed by them,
against a real Mosquitto.

A tiny responder built on ``MqttLink`` plays the control plane: it serves files
from a dict in the chunks asked for, answering with correlation data and the
``status``/``total``/``offset`` user properties.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tuf.api.exceptions import DownloadLengthMismatchError

from edgefleet import topics
from edgefleet.agent.errors import TransferError, VerificationError
from edgefleet.agent.verification.fetcher import MqttFetcher
from edgefleet.agent.verification.tuf_client import (
    TargetVerifier,
    TransportFetcher,
    repository_path,
)
from edgefleet.agent.verification.verifier import ProcessVerifier
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.errors import ControlPlaneError
from edgefleet.control_plane.trust.repository import SignedRepository
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
from tests.support.polling import wait_until

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


def _fetch_all(fetcher: MqttFetcher, path: str, max_length: int = 1 << 30) -> bytes:
    return b"".join(fetcher.stream(path, max_length))


def _wait_subscribed(fetcher: MqttFetcher, files: dict[str, bytes]) -> None:
    """Wait until a tiny fetch succeeds: both subscriptions are live."""
    files["metadata/probe.json"] = b"{}"

    def probe_fetched() -> bool:
        try:
            return _fetch_all(fetcher, "metadata/probe.json") == b"{}"
        except TransferError:
            return False

    wait_until(probe_fetched, "a fetch through both subscriptions", timeout=CONNECT_TIMEOUT)


def test_multi_chunk_target_arrives_intact_and_in_order(
    device_link: MqttLink, responder_link: MqttLink
) -> None:
    data = os.urandom(300_000 + 17)  # not a multiple of the chunk size
    files = {"targets/digits-1.tar": data}
    responder = Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=16 * 1024, window=4, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)

    assert _fetch_all(fetcher, "targets/digits-1.tar") == data
    chunk_requests = [r for r in responder.requests if r.path == "targets/digits-1.tar"]
    assert len(chunk_requests) >= len(data) // (16 * 1024)
    assert all(r.length <= 16 * 1024 for r in chunk_requests)


def test_a_file_longer_than_allowed_is_cut_off_one_chunk_past_the_bound(
    device_link: MqttLink, responder_link: MqttLink
) -> None:
    files = {"metadata/timestamp.json": b"x" * 50_000}
    responder = Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=1024, window=2, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)

    assert len(_fetch_all(fetcher, "metadata/timestamp.json", 50_000)) == 50_000
    asked_before = len(responder.requests)
    cut = _fetch_all(fetcher, "metadata/timestamp.json", 4000)
    assert 4000 < len(cut) <= 4000 + 1024
    assert len(responder.requests) - asked_before <= 4000 // 1024 + 1 + 2  # + the window


def test_tuf_sees_a_file_past_its_signed_length_as_a_length_mismatch(
    device_link: MqttLink, responder_link: MqttLink
) -> None:
    files = {"metadata/timestamp.json": b"x" * 5000}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=1024, window=2, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)
    tuf_fetcher = TransportFetcher(fetcher)

    url = "mqtt://repo/metadata/timestamp.json"
    assert tuf_fetcher.download_bytes(url, 5000) == files["metadata/timestamp.json"]
    with pytest.raises(DownloadLengthMismatchError):
        tuf_fetcher.download_bytes(url, 4000)


def test_empty_file_yields_no_bytes(device_link: MqttLink, responder_link: MqttLink) -> None:
    files = {"targets/empty.bin": b""}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)
    assert _fetch_all(fetcher, "targets/empty.bin") == b""


def test_missing_file_raises_a_transfer_error_with_status_404(
    device_link: MqttLink, responder_link: MqttLink
) -> None:
    files: dict[str, bytes] = {}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)

    with pytest.raises(TransferError) as caught:
        _fetch_all(fetcher, "metadata/2.root.json")
    assert caught.value.status == 404
    assert "not found" in str(caught.value)


def test_no_responder_raises_a_transfer_error_after_bounded_retries(
    device_link: MqttLink,
) -> None:
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.2, retries=1)
    _start(device_link)
    with pytest.raises(TransferError, match="no answer") as caught:
        _fetch_all(fetcher, "metadata/timestamp.json")
    assert caught.value.status is None  # a broken transfer, worth resuming


def test_not_connected_raises_a_transfer_error_at_once(broker: MosquittoBroker) -> None:
    link = _link(broker, DEVICE)  # never started
    fetcher = MqttFetcher(link, DEVICE, timeout=5.0)
    with pytest.raises(TransferError, match="not connected"):
        _fetch_all(fetcher, "metadata/timestamp.json")


def test_unmatched_response_is_dropped(device_link: MqttLink, responder_link: MqttLink) -> None:
    files = {"targets/a.bin": b"abc"}
    Responder(responder_link, files)
    fetcher = MqttFetcher(device_link, DEVICE, timeout=0.5)
    _start(responder_link, device_link)
    _wait_subscribed(fetcher, files)
    fetcher.handle_response(
        Incoming(topic=topics.down(DEVICE, topics.Down.FETCH), payload=b"junk", correlation=b"x")
    )
    assert _fetch_all(fetcher, "targets/a.bin") == b"abc"


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
    with pytest.raises(TransferError) as caught:
        repository_path(url)
    assert caught.value.status == 400


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


def _signed_repository(tmp_path: Path, bundle: bytes) -> tuple[SignedRepository, Path]:
    """A control-plane repository with one target, and a device data dir trusting its root."""
    repo = SignedRepository(tmp_path / "repo")
    repo.init_or_load()
    repo.add_target("digits-1.tar", bundle, {"bundle_id": "digits-1", "release": 1})
    data_dir = tmp_path / "device"
    metadata_dir = data_dir / "tuf" / "metadata"
    metadata_dir.mkdir(parents=True)
    (metadata_dir / "root.json").write_bytes(repo.root_bytes())
    return repo, data_dir


def test_tuf_verification_refreshes_and_downloads_a_target_over_mqtt(
    tmp_path: Path, device_link: MqttLink, responder_link: MqttLink
) -> None:
    bundle = os.urandom(200_000)
    repo, data_dir = _signed_repository(tmp_path, bundle)
    RepositoryResponder(responder_link, repo)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=32 * 1024, timeout=2.0)
    _start(responder_link, device_link)

    verifier = TargetVerifier(data_dir, fetcher)
    signed = verifier.find("digits-1.tar")  # probes 2.root.json, which must come back 404
    assert signed.length == len(bundle)
    assert signed.custom == {"bundle_id": "digits-1", "release": 1}
    assert verifier.download().read_bytes() == bundle


def test_verification_in_a_child_process_fetches_every_file_through_the_agent(
    tmp_path: Path, device_link: MqttLink, responder_link: MqttLink
) -> None:
    bundle = os.urandom(300_000)
    repo, data_dir = _signed_repository(tmp_path, bundle)
    RepositoryResponder(responder_link, repo)
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=32 * 1024, timeout=2.0)
    asked: list[str] = []
    serve = fetcher.stream

    def counted(path: str, max_length: int) -> Iterator[bytes]:
        asked.append(path)
        return serve(path, max_length)

    fetcher.stream = counted  # type: ignore[method-assign]
    _start(responder_link, device_link)

    with ProcessVerifier(data_dir, fetcher).open("digits-1.tar") as signed:
        assert (signed.length, signed.custom["release"]) == (len(bundle), 1)
        path = signed.download()
    assert path.read_bytes() == bundle
    assert path.parent == data_dir / "downloads"
    assert "metadata/timestamp.json" in asked and any(p.startswith("targets/") for p in asked)


def test_a_tampered_target_is_refused_by_the_child_and_its_partial_bytes_dropped(
    tmp_path: Path, device_link: MqttLink, responder_link: MqttLink
) -> None:
    bundle = os.urandom(100_000)
    repo, data_dir = _signed_repository(tmp_path, bundle)
    (target,) = repo.targets_dir.glob("*.digits-1.tar")
    target.write_bytes(os.urandom(100_000))  # same length, other bytes
    RepositoryResponder(responder_link, repo)
    parts = data_dir / "downloads" / "parts"
    fetcher = MqttFetcher(device_link, DEVICE, chunk_size=32 * 1024, timeout=2.0, part_dir=parts)
    _start(responder_link, device_link)

    verifier = ProcessVerifier(data_dir, fetcher)
    with pytest.raises(VerificationError) as caught, verifier.open("digits-1.tar") as signed:
        signed.download()
    assert caught.value.error == "LengthOrHashMismatchError"
    assert not list(parts.glob("*.part"))  # never resumed from
