"""MqttLink against a real Mosquitto: properties, shared subscriptions, reconnects."""

from __future__ import annotations

import contextlib
import queue
import uuid
from collections.abc import Iterator

import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.errors import TransportError
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink, Will

pytestmark = pytest.mark.integration
TIMEOUT = 10.0


@pytest.fixture
def prefix() -> str:
    return f"t/{uuid.uuid4().hex[:8]}"


def make_link(broker: MosquittoBroker, **kwargs: object) -> MqttLink:
    link = MqttLink(client_id=f"cp-{uuid.uuid4().hex[:8]}", broker=broker.address, **kwargs)  # type: ignore[arg-type]
    link.start()
    return link


@pytest.fixture
def links(broker: MosquittoBroker) -> Iterator[list[MqttLink]]:
    made: list[MqttLink] = []
    yield made
    for link in made:
        link.stop()


def test_request_properties_reach_the_subscriber(
    broker: MosquittoBroker, links: list[MqttLink], prefix: str
) -> None:
    received: queue.Queue[Incoming] = queue.Queue()
    server = make_link(broker)
    client = make_link(broker)
    links += [server, client]
    server.subscribe(f"{prefix}/req", received.put)
    assert server.wait_subscribed(TIMEOUT) and client.wait_connected(TIMEOUT)
    client.publish(
        f"{prefix}/req",
        b"\x00\x01binary",
        correlation=b"corr-1",
        response_topic=f"{prefix}/resp",
        user_properties={"status": "200", "total": "8"},
        wait=TIMEOUT,
    )
    message = received.get(timeout=TIMEOUT)
    assert message.payload == b"\x00\x01binary"
    assert message.correlation == b"corr-1"
    assert message.response_topic == f"{prefix}/resp"
    assert message.user_properties == {"status": "200", "total": "8"}


def test_shared_subscription_delivers_each_message_to_one_member(
    broker: MosquittoBroker, links: list[MqttLink], prefix: str
) -> None:
    got_a: queue.Queue[Incoming] = queue.Queue()
    got_b: queue.Queue[Incoming] = queue.Queue()
    a, b, publisher = make_link(broker), make_link(broker), make_link(broker)
    links += [a, b, publisher]
    a.subscribe(f"{prefix}/+/up", got_a.put, shared_group="g")
    b.subscribe(f"{prefix}/+/up", got_b.put, shared_group="g")
    assert a.wait_subscribed(TIMEOUT) and b.wait_subscribed(TIMEOUT)
    assert publisher.wait_connected(TIMEOUT)
    for i in range(20):
        publisher.publish(f"{prefix}/{i}/up", str(i).encode(), wait=TIMEOUT)
    seen: list[bytes] = []
    while len(seen) < 20:
        for q in (got_a, got_b):
            with contextlib.suppress(queue.Empty):
                seen.append(q.get(timeout=0.2).payload)
    assert sorted(seen) == sorted(str(i).encode() for i in range(20))
    assert got_a.empty() and got_b.empty()


def test_link_connects_once_a_broker_appears_later(
    broker: MosquittoBroker, links: list[MqttLink], prefix: str
) -> None:
    broker.stop()
    received: queue.Queue[Incoming] = queue.Queue()
    link = make_link(broker, reconnect_max_delay=1)
    links.append(link)
    link.subscribe(f"{prefix}/x", received.put)
    assert not link.wait_connected(0.5)
    with pytest.raises(TransportError, match="not connected"):
        link.publish(f"{prefix}/x", b"early", wait=1.0)
    broker.start()
    assert link.wait_subscribed(TIMEOUT)
    link.publish(f"{prefix}/x", b"late", wait=TIMEOUT)
    payloads = {received.get(timeout=TIMEOUT).payload for _ in range(2)}
    # paho queued the message published while offline and sent it after reconnect.
    assert payloads == {b"early", b"late"}


def test_subscriptions_are_restored_after_the_broker_restarts(
    broker: MosquittoBroker, links: list[MqttLink], prefix: str
) -> None:
    received: queue.Queue[Incoming] = queue.Queue()
    listener = make_link(broker, reconnect_max_delay=1, clean_start=True)
    publisher = make_link(broker, reconnect_max_delay=1)
    links += [listener, publisher]
    listener.subscribe(f"{prefix}/after", received.put)
    assert listener.wait_connected(TIMEOUT)
    broker.kill()
    broker.start()
    assert listener.wait_connected(TIMEOUT) and publisher.wait_connected(TIMEOUT)
    # A clean session lost its subscription on the broker; the link must re-subscribe.
    for _ in range(50):
        publisher.publish(f"{prefix}/after", b"hello", wait=TIMEOUT)
        try:
            assert received.get(timeout=0.2).payload == b"hello"
            break
        except queue.Empty:
            continue
    else:
        pytest.fail("no message arrived after the broker restart")


def test_last_will_is_published_when_a_link_dies(
    broker: MosquittoBroker, links: list[MqttLink], prefix: str
) -> None:
    received: queue.Queue[Incoming] = queue.Queue()
    watcher = make_link(broker)
    links.append(watcher)
    watcher.subscribe(f"{prefix}/status", received.put)
    assert watcher.wait_subscribed(TIMEOUT)
    doomed = MqttLink(
        client_id="cp-doomed1",
        broker=broker.address,
        keepalive=1,
        will=Will(f"{prefix}/status", b"offline", retain=False),
    )
    doomed.start()
    assert doomed.wait_connected(TIMEOUT)
    # Simulate a power cut: close the socket without an MQTT DISCONNECT.
    doomed._client.socket().close()  # type: ignore[union-attr]
    assert received.get(timeout=TIMEOUT).payload == b"offline"
    doomed._client.loop_stop()


def test_broker_url_parsing() -> None:
    assert BrokerAddress.parse("mqtt://10.0.0.5:1884") == BrokerAddress("10.0.0.5", 1884)
    assert BrokerAddress.parse("localhost") == BrokerAddress("localhost", 1883)
    with pytest.raises(ValueError, match="mqtt://"):
        BrokerAddress.parse("http://x:1")


@pytest.mark.parametrize("acked", [False, True])
def test_a_deferred_ack_message_comes_back_to_the_resumed_session_until_acked(
    broker: MosquittoBroker, links: list[MqttLink], prefix: str, acked: bool
) -> None:
    client_id = f"cp-{uuid.uuid4().hex[:8]}"

    def session() -> tuple[MqttLink, queue.Queue[Incoming]]:
        received: queue.Queue[Incoming] = queue.Queue()
        link = MqttLink(
            client_id=client_id, broker=broker.address, clean_start=False, session_expiry=300
        )
        link.subscribe(f"{prefix}/events", received.put, deferred_ack=True)
        link.start()
        assert link.wait_subscribed(TIMEOUT)
        return link, received

    consumer, received = session()
    sender = make_link(broker)
    links.append(sender)
    assert sender.wait_connected(TIMEOUT)
    sender.publish(f"{prefix}/events", b"event-1", qos=1, wait=TIMEOUT)
    first = received.get(timeout=TIMEOUT)
    assert first.payload == b"event-1"
    if acked:
        first.ack()
    # A marker after it proves the broker has had time to see any acknowledgement.
    sender.publish(f"{prefix}/events", b"marker", qos=1, wait=TIMEOUT)
    marker = received.get(timeout=TIMEOUT)
    marker.ack()
    consumer.stop()  # the "crash": a session that never acknowledged event-1

    resumed, again = session()
    links.append(resumed)
    sender.publish(f"{prefix}/events", b"after", qos=1, wait=TIMEOUT)
    payloads = []
    while b"after" not in payloads:
        message = again.get(timeout=TIMEOUT)
        message.ack()
        payloads.append(message.payload)
    assert (b"event-1" in payloads) is not acked
