"""The device's one MQTT session: its link, its down topics, its status and its last will.

A device connects with its own id as client id and a persistent session (the broker
queues offers and commands while it is away), with its enrolment credentials and
TLS when configured. Every connect publishes the retained ``DeviceStatus`` (online);
the broker publishes the last will (offline) if the device vanishes, and a clean
``close`` publishes offline itself. Messages on ``down/offer``, ``down/command``,
``down/receipt``, ``down/logs`` and ``down/config`` are decoded and handed to the
handlers registered for them; what does not decode as the message its topic carries
is logged and dropped (and ``edgefleet.mqtt`` catches anything a handler still
raises, so paho's network thread never dies).

The daemon (``edgefleet.agent.daemon``), the fleet simulator (``bench/fleetsim.py``)
and the rollout tests' simulated devices all speak to the broker through this class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from edgefleet import topics
from edgefleet.agent import __version__
from edgefleet.agent.config import AgentConfig, LinkConfig
from edgefleet.agent.enrolment.credentials import Credentials
from edgefleet.agent.inference.runtime import ActiveModel
from edgefleet.errors import MessageError, TransportError
from edgefleet.messages import (
    BundleOffer,
    ConfigReport,
    DesiredConfig,
    DeviceCommand,
    DeviceStatus,
    InstallReport,
    LogChunk,
    LogRequest,
    ModelStatus,
    Receipt,
    TelemetryEvent,
    WireMessage,
    decode_as,
)
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink, TlsOptions, Will
from edgefleet.topics import Down, Up

logger = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 24 * 3600
"""How long the broker keeps an absent device's session and queued messages (seconds)."""
SHUTDOWN_ACK_TIMEOUT = 3.0
"""Longest ``close`` waits for the broker to acknowledge the offline status."""

M = TypeVar("M", bound=WireMessage)
StatusSource = Callable[[bool], DeviceStatus]
"""``online -> DeviceStatus``: what the device says about itself right now."""


def device_status(
    profile: str,
    served: ActiveModel | Sequence[ActiveModel] | None,
    *,
    online: bool,
    spool_depth: int | None = None,
    trusted: dict[str, int] | None = None,
) -> DeviceStatus:
    """The retained ``up/status`` message: online or not, every model serving (the first
    by name also in the top-level fields), spool depth, the metadata versions it trusts."""
    if served is None:
        models: list[ActiveModel] = []
    elif isinstance(served, ActiveModel):
        models = [served]
    else:
        models = sorted(served, key=lambda m: m.name)
    model = models[0] if models else None
    return DeviceStatus(
        models=[
            ModelStatus(name=m.name, version=m.version, bundle_id=m.bundle_id, release=m.release)
            for m in models
        ]
        if online
        else None,
        online=online,
        spool_depth=spool_depth,
        profile=profile,
        agent_version=__version__,
        model=model.name if model else None,
        model_version=model.version if model else None,
        bundle_id=model.bundle_id if model else None,
        release=model.release if model else None,
        trusted_versions=trusted,
    )


def device_link(
    device_id: str,
    broker: BrokerAddress,
    *,
    will: DeviceStatus,
    credentials: Credentials | None = None,
    settings: LinkConfig | None = None,
    tls: TlsOptions | None = None,
    session_expiry: int = SESSION_EXPIRY,
) -> MqttLink:
    """A device's link: its id as client id, persistent, with ``will`` as its last will.

    Args:
        device_id: the client id, and the device in every topic.
        broker: where to connect.
        will: the (offline) status the broker publishes, retained, if the link drops.
        credentials: the broker login from enrolment, if any.
        settings: reconnect backoff and keepalive (``[link]``); its defaults if None.
        tls: TLS options for an ``mqtts://`` broker.
        session_expiry: how long the broker keeps the session while the device is away.

    Raises:
        TransportError: the TLS options name a certificate that cannot be read.
    """
    settings = settings or LinkConfig()
    return MqttLink(
        client_id=device_id,
        broker=broker,
        username=credentials.username if credentials else None,
        password=credentials.password if credentials else None,
        clean_start=False,
        session_expiry=session_expiry,
        will=Will(topics.up(device_id, Up.STATUS), will.to_bytes(), retain=True),
        reconnect_min_delay=settings.reconnect_min_s,
        reconnect_max_delay=settings.reconnect_max_s,
        keepalive=settings.keepalive_s,
        tls=tls,
    )


def agent_link(config: AgentConfig, credentials: Credentials | None = None) -> MqttLink:
    """The link an agent configured by ``config`` uses (its will: offline, no model)."""
    return device_link(
        config.device_id,
        config.broker_address,
        will=device_status(config.profile, None, online=False),
        credentials=credentials,
        settings=config.link,
        tls=config.tls_options,
    )


class DeviceSession:
    """One device's MQTT session; register handlers, ``start``, then ``close``.

    ``link`` stays available for what speaks MQTT on its own (the fetcher's
    request/response, the telemetry forwarder).
    """

    def __init__(self, link: MqttLink, status: StatusSource) -> None:
        self.link = link
        self.device_id = link.client_id
        self._status = status
        link.on_connect(self.publish_status)

    @classmethod
    def for_agent(
        cls, config: AgentConfig, status: StatusSource, credentials: Credentials | None = None
    ) -> DeviceSession:
        """The session of the agent ``config`` describes (see ``agent_link``)."""
        return cls(agent_link(config, credentials), status)

    # -- down: what the control plane sends ------------------------------------------------

    def on_offer(self, handler: Callable[[BundleOffer], None]) -> None:
        self._subscribe(Down.OFFER, BundleOffer, handler)

    def on_command(self, handler: Callable[[DeviceCommand], None]) -> None:
        self._subscribe(Down.COMMAND, DeviceCommand, handler)

    def on_receipt(self, handler: Callable[[Receipt], None]) -> None:
        self._subscribe(Down.RECEIPT, Receipt, handler)

    def on_log_request(self, handler: Callable[[LogRequest], None]) -> None:
        self._subscribe(Down.LOGS, LogRequest, handler)

    def on_config(self, handler: Callable[[DesiredConfig], object]) -> None:
        self._subscribe(Down.CONFIG, DesiredConfig, handler)

    def _subscribe(self, channel: Down, expected: type[M], handler: Callable[[M], object]) -> None:
        def dispatch(incoming: Incoming) -> None:
            try:
                message = decode_as(incoming.payload, expected, topic=incoming.topic)
            except MessageError as e:
                logger.warning(
                    "dropped invalid %s device_id=%s topic=%s reason=%s",
                    channel.value,
                    self.device_id,
                    incoming.topic,
                    e,
                )
                return
            handler(message)

        self.link.subscribe(topics.down(self.device_id, channel), dispatch, qos=1)

    # -- up: what the device says ----------------------------------------------------------

    def publish_status(
        self,
        online: bool = True,
        *,
        wait: float | None = None,
        on_published: Callable[[], None] | None = None,
    ) -> None:
        """The retained status (run on every connect, and when what it says changed).

        Raises:
            TransportError: ``wait`` given and the broker did not acknowledge in time.
        """
        self.link.publish(
            topics.up(self.device_id, Up.STATUS),
            self._status(online).to_bytes(),
            qos=1,
            retain=True,
            wait=wait,
            on_published=on_published,
        )

    def publish_report(self, report: InstallReport) -> None:
        """``report`` on ``up/report`` now (the daemon sends its reports through its spool)."""
        self.link.publish(topics.up(self.device_id, Up.REPORT), report.to_bytes(), qos=1)

    def publish_event(
        self, event: TelemetryEvent, on_published: Callable[[], None] | None = None
    ) -> None:
        """``event`` on ``up/telemetry`` now, QoS 1."""
        self.link.publish(
            topics.up(self.device_id, Up.TELEMETRY),
            event.to_bytes(),
            qos=1,
            on_published=on_published,
        )

    def publish_logs(self, chunk: LogChunk) -> None:
        """Part of an answer to a log request, on ``up/logs`` (QoS 1, never retained)."""
        self.link.publish(topics.up(self.device_id, Up.LOGS), chunk.to_bytes(), qos=1)

    def publish_config_report(self, report: ConfigReport) -> None:
        """What came of the desired configuration, on ``up/config`` (QoS 1, never retained:
        the retained desired configuration is answered again on every connect)."""
        self.link.publish(topics.up(self.device_id, Up.CONFIG), report.to_bytes(), qos=1)

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.link.connected

    def wait_connected(self, timeout: float) -> bool:
        return self.link.wait_connected(timeout)

    def start(self) -> None:
        """Connect (and reconnect) in the background; returns at once."""
        self.link.start()

    def stop(self) -> None:
        """Disconnect cleanly without a status (no last will either; see ``close``)."""
        self.link.stop()

    def close(self, timeout: float = SHUTDOWN_ACK_TIMEOUT) -> None:
        """Say offline (bounded wait for the ack), then stop the link."""
        if self.link.connected:
            try:
                self.publish_status(False, wait=timeout)
            except TransportError as e:
                logger.warning("offline status not acknowledged reason=%s", e)
        self.link.stop()
