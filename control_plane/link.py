"""The control plane's MQTT link to the fleet.

Subscribes to every device's ``up/status`` (a normal subscription, so retained
statuses arrive on connect) and to ``up/report`` and ``up/fetch`` through an MQTT 5
shared subscription, so several control-plane replicas split that traffic.

The device id always comes from the topic, which the broker ACL ties to the
device's credentials, never from a payload. Status and report messages are applied
to the database in arrival order on one worker thread; fetch requests are served on
a small pool; telemetry is stored in bursts of up to ``TELEMETRY_BURST`` events per
transaction on a thread of its own. Nothing is done on paho's network thread but
hand-off, and a malformed message is logged and dropped.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from control_plane.errors import InvalidRequestError, NotFoundError
from control_plane.models import Device
from control_plane.repository import SignedRepository
from control_plane.services.devices import upsert_device_status
from control_plane.services.events import ingest_events
from control_plane.services.rollouts import apply_install_report, reoffer_on_reconnect
from control_plane.settings import Settings
from edgefleet import topics
from edgefleet.errors import MessageError
from edgefleet.fileio import atomic_write
from edgefleet.messages import (
    FETCH_OFFSET,
    FETCH_REASON,
    FETCH_STATUS,
    FETCH_TOTAL,
    BundleOffer,
    DeviceCommand,
    DeviceStatus,
    FetchRequest,
    InstallReport,
    TelemetryEvent,
    decode_as,
)
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink

logger = logging.getLogger(__name__)

SHARED_GROUP = "edgefleet-cp"
TELEMETRY_BURST = 500
"""Most telemetry events stored in one transaction."""


def stable_client_id(data_dir: Path) -> str:
    """This control plane's MQTT client id, created once and kept in ``data_dir``.

    Each replica has its own data directory, hence its own id and session.
    """
    path = Path(data_dir) / "mqtt-client-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        client_id = f"cp-{secrets.token_hex(6)}"
        atomic_write(path, client_id.encode())
        return client_id


class FleetLink:
    """One MQTT session for the control plane: device state in, offers and chunks out."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        repository: SignedRepository,
        fetch_workers: int = 4,
    ) -> None:
        self._engine = engine
        self._repository = repository
        # A persistent session: while the control plane restarts, the broker keeps
        # queuing device traffic for it (a clean session would let it be acknowledged
        # to devices and then dropped).
        self._link = MqttLink(
            client_id=settings.client_id or stable_client_id(settings.data_dir),
            broker=BrokerAddress.parse(settings.broker_url),
            clean_start=False,
            session_expiry=settings.mqtt_session_expiry_s,
            tls=settings.mqtt_tls,
        )
        self._fetch_pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="cp-fetch")
        self._event_pool = ThreadPoolExecutor(1, thread_name_prefix="cp-events")
        # Telemetry is stored in bursts on a thread of its own (one transaction each).
        self._telemetry: queue.Queue[tuple[str, Incoming] | None] = queue.Queue()
        self._telemetry_thread = threading.Thread(
            target=self._store_telemetry, name="cp-telemetry", daemon=True
        )
        self._started = False

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Subscribe and start connecting in the background (works with the broker down)."""
        if self._started:
            return
        self._link.subscribe(topics.up_filter(topics.Up.STATUS), self._on_status)
        self._link.subscribe(
            topics.up_filter(topics.Up.REPORT), self._on_report, shared_group=SHARED_GROUP
        )
        self._link.subscribe(
            topics.up_filter(topics.Up.FETCH), self._on_fetch, shared_group=SHARED_GROUP
        )
        # Telemetry is acknowledged to the broker only once stored: a control plane
        # that dies with a burst in memory gets it again when its session resumes.
        self._link.subscribe(
            topics.up_filter(topics.Up.TELEMETRY),
            self._on_telemetry,
            shared_group=SHARED_GROUP,
            deferred_ack=True,
        )
        self._telemetry_thread.start()
        self._link.start()
        self._started = True
        logger.info("fleet link starting broker=%s", self._link.broker.url())

    def stop(self) -> None:
        if not self._started:
            return
        self._link.stop()
        self._fetch_pool.shutdown(wait=True, cancel_futures=True)
        self._event_pool.shutdown(wait=True, cancel_futures=False)
        self._telemetry.put(None)  # after whatever is queued: that is still stored
        self._telemetry_thread.join(timeout=30)
        self._started = False

    @property
    def connected(self) -> bool:
        return self._link.connected

    def wait_subscribed(self, timeout: float) -> bool:
        """Connected with every subscription acknowledged: from then on nothing a device
        publishes slips past the (clean-start) ingest session."""
        return self._link.wait_subscribed(timeout)

    # -- outgoing ----------------------------------------------------------------

    def publish_offer(self, device_id: str, offer: BundleOffer) -> None:
        """Offer a bundle to one device (QoS 1; queued while the link is down)."""
        self._link.publish(topics.down(device_id, topics.Down.OFFER), offer.to_bytes(), qos=1)
        logger.info(
            "offer published device_id=%s bundle_id=%s rollout_id=%s",
            device_id,
            offer.bundle_id,
            offer.rollout_id,
        )

    def publish_command(self, device_id: str, command: DeviceCommand) -> None:
        """Send a command (e.g. rollback) to one device (QoS 1; queued while offline)."""
        self._link.publish(topics.down(device_id, topics.Down.COMMAND), command.to_bytes(), qos=1)
        logger.info(
            "command published device_id=%s command=%s rollout_id=%s",
            device_id,
            command.command,
            command.rollout_id,
        )

    # -- incoming (network thread: parse the topic, hand off) ---------------------

    @staticmethod
    def _device_id(message: Incoming, channel: topics.Up) -> str | None:
        try:
            device_id, got = topics.parse_up(message.topic)
        except ValueError as e:
            logger.warning("message dropped topic=%s reason=%s", message.topic, e)
            return None
        if got is not channel:
            logger.warning("message dropped topic=%s reason=unexpected channel", message.topic)
            return None
        return device_id

    def _submit(self, pool: ThreadPoolExecutor, job: Callable[[], None], topic: str) -> None:
        try:
            pool.submit(self._guarded, job, topic)
        except RuntimeError:  # pool shut down while stopping
            logger.info("message dropped during shutdown topic=%s", topic)

    @staticmethod
    def _guarded(job: Callable[[], None], topic: str) -> None:
        try:
            job()
        except Exception:  # top of a worker job: one bad message must not stop the pool
            logger.exception("message handling failed topic=%s", topic)

    def _on_status(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.STATUS)
        if device_id is None or not message.payload:  # empty = retained status cleared
            return
        self._submit(
            self._event_pool, lambda: self._handle_status(device_id, message), message.topic
        )

    def _on_report(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.REPORT)
        if device_id is None:
            return
        self._submit(
            self._event_pool, lambda: self._handle_report(device_id, message), message.topic
        )

    def _on_telemetry(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.TELEMETRY)
        if device_id is None:
            message.ack()
            return
        self._telemetry.put((device_id, message))

    def _on_fetch(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.FETCH)
        if device_id is None:
            return
        if message.correlation is None:
            logger.warning("fetch dropped device_id=%s reason=no correlation data", device_id)
            return
        self._submit(
            self._fetch_pool, lambda: self._handle_fetch(device_id, message), message.topic
        )

    # -- workers ------------------------------------------------------------------

    def _handle_status(self, device_id: str, message: Incoming) -> None:
        try:
            status = decode_as(message.payload, DeviceStatus, topic=message.topic)
        except MessageError as e:
            logger.warning("status dropped device_id=%s reason=%s", device_id, e.reason)
            return
        try:
            with Session(self._engine) as session:
                known = session.get(Device, device_id)
                was_online = known is not None and known.online
                upsert_device_status(session=session, device_id=device_id, status=status)
                if status.online and not was_online:
                    # Back from offline: offer again what running rollouts still owe it.
                    reoffer_on_reconnect(session=session, publisher=self, device_id=device_id)
        except SQLAlchemyError:
            logger.exception("status not stored device_id=%s", device_id)

    def _handle_report(self, device_id: str, message: Incoming) -> None:
        try:
            report = decode_as(message.payload, InstallReport, topic=message.topic)
        except MessageError as e:
            logger.warning("report dropped device_id=%s reason=%s", device_id, e.reason)
            return
        try:
            with Session(self._engine) as session:
                apply_install_report(session=session, device_id=device_id, report=report)
        except SQLAlchemyError:
            logger.exception("report not stored device_id=%s", device_id)

    def _store_telemetry(self) -> None:
        """Telemetry thread: take what has queued up (at most a burst), store it at once."""
        while True:
            item = self._telemetry.get()
            if item is None:
                return
            burst = [item]
            while len(burst) < TELEMETRY_BURST:
                try:
                    item = self._telemetry.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._ingest(burst)
                    return
                burst.append(item)
            self._ingest(burst)

    def _ingest(self, burst: list[tuple[str, Incoming]]) -> None:
        events: list[tuple[str, TelemetryEvent]] = []
        for device_id, message in burst:
            try:
                events.append(
                    (device_id, decode_as(message.payload, TelemetryEvent, topic=message.topic))
                )
            except MessageError as e:
                logger.warning("telemetry dropped device_id=%s reason=%s", device_id, e.reason)
        try:
            with Session(self._engine) as session:
                stored = ingest_events(session=session, batch=events)
        except SQLAlchemyError:
            # Not acknowledged: the broker redelivers the burst when the session resumes.
            logger.exception("telemetry not stored events=%d", len(events))
            return
        for _device_id, message in burst:  # in arrival order, as MQTT asks
            message.ack()
        if stored < len(events):
            logger.debug("duplicate telemetry ignored count=%d", len(events) - stored)

    def _handle_fetch(self, device_id: str, message: Incoming) -> None:
        properties: dict[str, str]
        data = b""
        try:
            request = decode_as(message.payload, FetchRequest, topic=message.topic)
            data, total = self._repository.read_chunk(request.path, request.offset, request.length)
            properties = {
                FETCH_STATUS: "200",
                FETCH_TOTAL: str(total),
                FETCH_OFFSET: str(request.offset),
            }
        except MessageError as e:
            properties = {FETCH_STATUS: "400", FETCH_REASON: e.reason}
        except InvalidRequestError as e:
            properties = {FETCH_STATUS: "400", FETCH_REASON: str(e)}
        except NotFoundError as e:
            properties = {FETCH_STATUS: "404", FETCH_REASON: str(e)}
        except OSError as e:
            logger.error("fetch failed device_id=%s reason=%s", device_id, e)
            properties = {FETCH_STATUS: "500", FETCH_REASON: "repository read failed"}
        if properties[FETCH_STATUS] != "200":
            logger.info(
                "fetch refused device_id=%s status=%s reason=%s",
                device_id,
                properties[FETCH_STATUS],
                properties.get(FETCH_REASON),
            )
        # The reply goes to the device's own down topic, whatever response topic it asked for.
        self._link.publish(
            topics.down(device_id, topics.Down.FETCH),
            data,
            qos=1,
            correlation=message.correlation,
            user_properties=properties,
        )
