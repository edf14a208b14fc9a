"""The MQTT link: the only module that imports paho-mqtt.

``MqttLink`` wraps one paho MQTT 5 client running its network loop in a background
thread. It reconnects by itself with exponential backoff and jitter (so a fleet
that lost its broker does not reconnect in lock-step), re-subscribes on every
connect, sets TCP_NODELAY on its socket (request/response blocks would otherwise
wait ~40 ms each for Nagle's algorithm), and turns failures into ``TransportError``.

``mqtts://host:port`` (default port 8883) connects over TLS: ``TlsOptions`` names the
CA file that verifies the broker (the system's trust store without one) and, for
brokers that authenticate clients by certificate, the client certificate and key.
The broker's host name or IP must be in its certificate; TLS 1.2 is the minimum.

A broker that stops answering (a stopped or partitioned process keeps its TCP socket
open, so nothing fails by itself) is noticed by MQTT keepalive: after ``keepalive``
seconds without a byte from the broker paho sends PINGREQ, and drops the link when
the PINGRESP is another ``keepalive`` late, so within about ``2 * keepalive`` (the
agent uses 3 s: noticed in about 6 s; paho's default 60 s and the former 30 s took
up to a minute). TCP_USER_TIMEOUT (``2 * keepalive``) bounds how long written bytes may
stay unacknowledged by the broker's host, for a host that vanished outright.

Handlers receive an ``Incoming`` (topic, payload and the MQTT 5 request/response
properties) on the network thread: they must be quick, or hand work to their own
thread. A handler that raises is logged and does not stop the link.

Why this module stays over 400 lines: it is the one module that owns paho-mqtt (the
house rule: nothing else imports it), so everything that touches the library (address
and TLS options, the jittered client, the reconnect loop, subscriptions, publish and
its waits) has to live here; ``MqttLink`` alone is most of it, and its connection
state is shared by every method.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.errors import TransportError

logger = logging.getLogger(__name__)

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
_PLAIN_SCHEMES = ("mqtt", "tcp")
_TLS_SCHEMES = ("mqtts", "ssl")


@dataclass(frozen=True)
class BrokerAddress:
    """Where the broker listens, parsed from ``mqtt[s]://[user:password@]host:port``.

    Credentials in the URL let a secured broker be named by one setting; ``url()``
    leaves them out, so what is logged never carries the password. ``tls`` is set by
    the ``mqtts://`` scheme.
    """

    host: str
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = field(default=None, repr=False, compare=False)
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt[s]://[user:password@]host[:port]`` (a bare ``host:port`` means mqtt).

        The port defaults to 1883, or 8883 for ``mqtts://`` (also spelled ``ssl://``;
        ``tcp://`` is plain). Percent-encoded credentials are decoded.

        Raises:
            ValueError: Another scheme, or no host.
        """
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in _PLAIN_SCHEMES + _TLS_SCHEMES or not parts.hostname:
            raise ValueError(
                f"broker URL must look like mqtt://host:port (or mqtts://), got {url!r}"
            )
        tls = parts.scheme in _TLS_SCHEMES
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        port = parts.port or (DEFAULT_TLS_PORT if tls else DEFAULT_PORT)
        return cls(parts.hostname, port, username, password, tls)

    def url(self) -> str:
        """The broker as a URL without credentials, safe to log."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class TlsOptions:
    """How an ``mqtts://`` link verifies the broker and, optionally, proves who it is.

    ``ca_file``: PEM CA certificate(s) the broker's certificate must chain to (None:
    the system's trust store). ``cert_file`` + ``key_file``: the client certificate
    (PEM, the chain may follow the certificate) and its unencrypted private key.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")

    def context(self) -> ssl.SSLContext:
        """A client context: broker certificate and host name checked, TLS 1.2 or newer.

        Raises:
            TransportError: A file is missing or does not hold what it should.
        """
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file) if self.ca_file else None
            )
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self.cert_file is not None:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError) as e:
            raise TransportError(f"cannot set up TLS from {self}: {e}") from e
        return context


@dataclass(frozen=True)
class Incoming:
    """A received message with the MQTT 5 properties edgefleet uses."""

    topic: str
    payload: bytes
    retain: bool = False
    correlation: bytes | None = None
    response_topic: str | None = None
    user_properties: dict[str, str] = field(default_factory=dict)
    ack: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)
    """For a subscription with ``deferred_ack``: acknowledge to the broker (QoS 1) once
    the message is safe; until then the broker redelivers it to a resumed session."""


@dataclass(frozen=True)
class Will:
    """Last will: published by the broker if the link drops without a clean goodbye."""

    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


Handler = Callable[[Incoming], None]
_Dispatch = Callable[[paho.Client, Any, paho.MQTTMessage], None]
_ROUTES_MAX = 200_000
"""Topics whose matching subscriptions are remembered (a few per device)."""


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches the MQTT ``topic_filter`` (``+`` one level, ``#`` the rest).

    A topic starting with ``$`` is not matched by a filter starting with a wildcard.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    parts = topic_filter.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


def backoff_delay(
    attempt: int, min_delay: float, max_delay: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): exponential, with jitter.

    "Equal jitter": the exponential ceiling ``min_delay * 2**attempt`` (capped at
    ``max_delay``) is halved and the other half drawn at random, so thousands of
    devices that lost the same broker spread their reconnects instead of arriving
    in lock-step, while each still backs off.
    """
    ceiling = min(max_delay, min_delay * (2 ** min(attempt, 32)))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class _JitteredClient(paho.Client):
    """paho's client with its reconnect wait replaced by ``backoff_delay``.

    paho's own wait doubles a fixed delay with no jitter; ``loop_forever`` calls
    ``_reconnect_wait`` before every reconnect attempt, so this is the one hook.
    """

    backoff_min = 1.0
    backoff_max = 30.0
    _attempt = 0

    def _reconnect_wait(self) -> None:
        delay = backoff_delay(self._attempt, self.backoff_min, self.backoff_max)
        self._attempt += 1
        deadline = time.monotonic() + delay
        logger.debug("mqtt reconnect wait seconds=%.2f attempt=%d", delay, self._attempt)
        while not self._thread_terminate and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 0.5))

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        """Hand every message to ``on_message`` (``MqttLink._route``) at once.

        paho first walks its trie of per-filter callbacks for each message, under a lock,
        to find none: ``MqttLink`` registers no per-filter callbacks (it routes in
        ``_route``, remembering each topic's matches). That walk took about 5 % of an
        ingest worker's GIL time at thousands of messages a second. Errors are treated
        as paho treats them.
        """
        on_message = self.on_message
        if on_message is None:
            return
        with self._in_callback_mutex:
            try:
                on_message(self, self._userdata, message)
            except Exception as err:
                self._easy_log(paho.MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise


@dataclass
class _Subscription:
    topic_filter: str
    handler: Handler
    qos: int
    shared_group: str | None
    deferred_ack: bool = False
    on_subscribed: Callable[[], None] | None = None

    @property
    def wire_filter(self) -> str:
        if self.shared_group:
            return f"$share/{self.shared_group}/{self.topic_filter}"
        return self.topic_filter


class MqttLink:
    """One MQTT 5 session that reconnects by itself.

    ``session_expiry`` > 0 with ``clean_start=False`` keeps the session (and QoS 1
    messages addressed to it) on the broker while the link is down.
    """

    def __init__(
        self,
        *,
        client_id: str,
        broker: BrokerAddress,
        will: Will | None = None,
        clean_start: bool = False,
        session_expiry: int = 0,
        keepalive: int = 30,
        username: str | None = None,
        password: str | None = None,
        reconnect_min_delay: float = 1,
        reconnect_max_delay: float = 30,
        tls: TlsOptions | None = None,
    ) -> None:
        """Set the session up; nothing connects until ``start``.

        Args:
            client_id: The MQTT client id; the broker's ACLs key on it.
            broker: Where to connect; its credentials are used unless ``username`` is given.
            will: Published by the broker if the link drops without a clean ``stop``.
            clean_start: Discard any session the broker kept for this client id.
            session_expiry: Seconds the broker keeps the session after a disconnect (0:
                none).
            keepalive: Seconds of silence before a ping; a dead broker is noticed in about
                twice this.
            username: Overrides the broker URL's user name (with ``password``).
            password: The password for ``username``.
            reconnect_min_delay: The first reconnect backoff ceiling, in seconds.
            reconnect_max_delay: The largest one.
            tls: How to verify an ``mqtts://`` broker (the system's trust store when None).

        Raises:
            ValueError: ``tls`` given for a broker that is not ``mqtts://``.
            TransportError: The TLS files cannot be loaded.
        """
        if tls is not None and not broker.tls:
            raise ValueError(f"TLS options need an mqtts:// broker, got {broker.url()}")
        self.client_id = client_id
        self.broker = broker
        self._clean_start = clean_start
        self._session_expiry = session_expiry
        self._keepalive = keepalive
        self._connected = threading.Event()
        self._subscribed = threading.Event()  # connected, and every SUBSCRIBE acknowledged
        self._lock = threading.Lock()
        self._subscriptions: list[_Subscription] = []
        self._unacked_subscribes: set[int] = set()
        self._suback_callbacks: dict[int, Callable[[], None]] = {}
        self._on_connect_callbacks: list[Callable[[], None]] = []
        self._started = False
        self._stopping = False
        self._ack_lock = threading.Lock()
        self._ack_callbacks: dict[int, Callable[[], None]] = {}
        self._early_acks: set[int] = set()
        self._filters: list[tuple[str, _Dispatch]] = []
        self._routes: dict[str, tuple[_Dispatch, ...]] = {}  # topic -> its dispatchers

        client = _JitteredClient(
            callback_api_version=paho.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,  # see ``subscribe``: some messages are acked once stored
        )
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(100)
        client.backoff_min = float(reconnect_min_delay)
        client.backoff_max = float(reconnect_max_delay)
        if username is None and broker.username is not None:
            username, password = broker.username, broker.password
        if username is not None:
            client.username_pw_set(username, password)
        if broker.tls:
            client.tls_set_context((tls or TlsOptions()).context())
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        client.on_message = self._route
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_socket_open = self._handle_socket_open
        client.on_publish = self._handle_publish
        self._client = client

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting in the background; returns at once, even with no broker."""
        if self._started:
            return
        properties = None
        if self._session_expiry:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self._session_expiry
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self._keepalive,
            clean_start=self._clean_start,
            properties=properties,
        )
        self._client.loop_start()
        self._started = True

    def stop(self) -> None:
        """Disconnect cleanly (no last will) and stop the network thread."""
        if not self._started:
            return
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
        self._started = False
        self._stopping = False

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected or ``timeout`` seconds pass; True when connected."""
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Block until connected with every subscription acknowledged by the broker.

        Connected is not enough for a subscriber: until its SUBACK, the broker may route
        a message published on another connection past the subscription.
        """
        return self._subscribed.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def on_connect(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (on the network thread) after every successful connect."""
        with self._lock:
            self._on_connect_callbacks.append(callback)

    # -- messaging -------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        handler: Handler,
        *,
        qos: int = 1,
        shared_group: str | None = None,
        deferred_ack: bool = False,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler``, across reconnects.

        Args:
            topic_filter: An MQTT topic filter (``edgefleet.topics`` builds them).
            handler: Called on the network thread with each ``Incoming``; it must be quick.
            qos: The subscription's QoS.
            shared_group: Subscribe as ``$share/<group>/<filter>``: the broker spreads the
                messages over every client subscribed in the group (MQTT 5 shared
                subscription).
            deferred_ack: Acknowledge a message only when ``Incoming.ack`` is called (by the
                handler, or whoever it hands the message to), not when the handler returns;
                until then the broker redelivers it to a resumed session.
            on_subscribed: Runs on the network thread at each SUBACK for this filter. The
                broker sends a filter's retained messages right after its SUBACK, so
                whoever waits for one knows from then on that it will not be long.
        """
        sub = _Subscription(topic_filter, handler, qos, shared_group, deferred_ack, on_subscribed)
        with self._lock:
            self._filters.append((topic_filter, self._dispatcher(sub)))
            self._routes.clear()
            self._subscriptions.append(sub)
            if self.connected:
                self._send_subscribe(sub)

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop delivering ``topic_filter`` (subscribed with ``subscribe``) and forget it.

        Short-lived subscriptions (one retained blob chunk at a time) need this: a
        subscription kept would be sent again on every reconnect.
        """
        with self._lock:
            self._filters = [(f, d) for f, d in self._filters if f != topic_filter]
            self._routes.clear()
            kept = [s for s in self._subscriptions if s.topic_filter != topic_filter]
            removed = len(kept) != len(self._subscriptions)
            self._subscriptions = kept
            if removed and self.connected:
                self._client.unsubscribe(topic_filter)

    def _send_subscribe(self, sub: _Subscription) -> None:
        """SUBSCRIBE, counted until its SUBACK (call with ``_lock`` held)."""
        result, mid = self._client.subscribe(sub.wire_filter, qos=sub.qos)
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._subscribed.clear()
            self._unacked_subscribes.add(mid)
            if sub.on_subscribed is not None:
                self._suback_callbacks[mid] = sub.on_subscribed

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation: bytes | None = None,
        response_topic: str | None = None,
        user_properties: dict[str, str] | None = None,
        wait: float | None = None,
        on_published: Callable[[], None] | None = None,
    ) -> None:
        """Publish a message; with ``wait``, block until the broker acknowledged it.

        Without ``wait`` a QoS 1 message published while disconnected is queued in memory
        and sent after reconnect.

        Args:
            topic: The topic (``edgefleet.topics`` builds them).
            payload: The raw bytes.
            qos: 0 or 1.
            retain: Ask the broker to keep the message for later subscribers.
            correlation: MQTT 5 correlation data (request/response).
            response_topic: MQTT 5 response topic (request/response).
            user_properties: MQTT 5 user properties.
            wait: Seconds to wait for the broker's acknowledgement; None returns at once.
            on_published: Runs on the network thread (so it must be quick) once the broker
                acknowledged the message: a store-and-forward queue deletes what it sent
                only then, without blocking a thread per message.

        Raises:
            TransportError: Only with ``wait``: not connected (the message stays queued), or
                no acknowledgement in time (it may still be delivered).
        """
        properties = None
        if correlation is not None or response_topic is not None or user_properties:
            properties = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                properties.CorrelationData = correlation
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if user_properties:
                properties.UserProperty = list(user_properties.items())
        info = self._client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        self._register_ack(info.mid, on_published)
        if wait is None:
            return
        if info.rc == paho.MQTT_ERR_NO_CONN:
            raise TransportError(f"not connected to {self.broker.url()}; message queued")
        try:
            info.wait_for_publish(wait)
        except (RuntimeError, ValueError) as e:
            raise TransportError(f"publish to {topic} failed: {e}") from e
        if not info.is_published():
            raise TransportError(f"broker did not acknowledge {topic} within {wait}s")

    def _register_ack(self, mid: int, callback: Callable[[], None] | None) -> None:
        """Attach ``callback`` to ``mid``; run it now if the ack already arrived.

        paho holds its own message lock while it reports an ack, so ours is never
        held across ``client.publish`` (that would deadlock); an ack that beats
        the registration is parked in ``_early_acks`` instead.
        """
        with self._ack_lock:
            if callback is None:
                self._early_acks.discard(mid)
                return
            if mid not in self._early_acks:
                self._ack_callbacks[mid] = callback
                return
            self._early_acks.discard(mid)
        callback()

    # -- paho callbacks (network thread) ---------------------------------------

    def _handle_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        with self._ack_lock:
            callback = self._ack_callbacks.pop(mid, None)
            if callback is None:
                self._early_acks.add(mid)
                return
        try:
            callback()
        except Exception:  # top of a network-thread callback: never kill the loop
            logger.exception("on_published callback failed mid=%d", mid)

    def _route(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        """Hand ``message`` to the subscriptions whose filter matches its topic.

        paho's own per-filter callbacks walk a topic trie in Python for every message
        (about 15 % of the control plane's CPU at a few thousand telemetry messages a
        second); a topic's matches are found once here and remembered, since each device
        publishes on the same few topics again and again.
        """
        topic = message.topic
        dispatchers = self._routes.get(topic)
        if dispatchers is None:
            with self._lock:
                dispatchers = tuple(d for f, d in self._filters if topic_matches(f, topic))
                if len(self._routes) >= _ROUTES_MAX:
                    self._routes.clear()
                self._routes[topic] = dispatchers
        for dispatch in dispatchers:
            dispatch(client, userdata, message)

    def _dispatcher(self, sub: _Subscription) -> _Dispatch:
        def dispatch(client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
            props = message.properties
            mid, qos = message.mid, message.qos

            def ack() -> None:
                client.ack(mid, qos)

            incoming = Incoming(
                topic=message.topic,
                payload=bytes(message.payload),
                retain=bool(message.retain),
                correlation=getattr(props, "CorrelationData", None),
                response_topic=getattr(props, "ResponseTopic", None),
                user_properties=dict(getattr(props, "UserProperty", []) or []),
                ack=ack,
            )
            try:
                sub.handler(incoming)
            except Exception:  # top of the receive loop: one bad message must not kill it
                logger.exception("handler failed topic=%s", message.topic)
                ack()  # a message its handler cannot take would only come back the same
                return
            if not sub.deferred_ack:
                ack()

        return dispatch

    def _handle_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            logger.debug("could not set TCP_NODELAY")
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)  # Linux
        if user_timeout is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, user_timeout, self._keepalive * 2000)
            except (OSError, AttributeError):
                logger.debug("could not set TCP_USER_TIMEOUT")

    def _handle_connect(
        self,
        client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        if reason_code.is_failure:
            logger.warning(
                "mqtt connect refused client_id=%s reason=%s", self.client_id, reason_code
            )
            return
        if isinstance(client, _JitteredClient):
            client._attempt = 0
        with self._lock:
            self._connected.set()
            self._unacked_subscribes.clear()
            self._suback_callbacks.clear()
            for sub in self._subscriptions:
                self._send_subscribe(sub)
            if not self._unacked_subscribes:
                self._subscribed.set()
            callbacks = list(self._on_connect_callbacks)
        logger.info("mqtt connected client_id=%s broker=%s", self.client_id, self.broker.url())
        for callback in callbacks:
            try:
                callback()
            except Exception:
                logger.exception("on_connect callback failed client_id=%s", self.client_id)

    def _handle_subscribe(
        self, _client: paho.Client, _userdata: Any, mid: int, _codes: Any, _properties: Any
    ) -> None:
        with self._lock:
            self._unacked_subscribes.discard(mid)
            if not self._unacked_subscribes and self._connected.is_set():
                self._subscribed.set()
            callback = self._suback_callbacks.pop(mid, None)
        if callback is not None:
            try:
                callback()
            except Exception:  # top of a network-thread callback: never kill the loop
                logger.exception("on_subscribed callback failed mid=%d", mid)

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: Any,
        reason_code: ReasonCode,
        _properties: Any,
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if was_connected and not self._stopping:
            logger.warning("mqtt disconnected client_id=%s reason=%s", self.client_id, reason_code)
