"""Telemetry ingest: devices' events taken off MQTT, stored in bursts, receipted.

``TelemetryIngest`` is one shared-subscription member for ``fleet/+/up/telemetry``. It
runs either on the fleet link's own MQTT session, in the control plane's process (on
SQLite), or on a session of its own in an ingest worker process
(``edgefleet.control_plane.broker.ingest_worker``, the default on PostgreSQL), so that
storing thousands of events a second does not compete with the API for one GIL.

paho's network thread only hands a message to the bounded queue (``on_message``); the
``cp-telemetry`` worker (``run``) takes what has queued up, at most
``TELEMETRY_BURST`` events, stores them in one transaction
(``services.events.ingest_events``), sends each device one receipt naming its events of
the burst, and then acknowledges the burst's messages to the broker in arrival order.
Past ``TELEMETRY_QUEUE_MAX`` queued messages a message is acknowledged unreceipted and
left to the device's spool, which sends it again.

A message that does not decode, or that the database refuses for good, is logged
(never its payload), counted per device (``MessageRejection``) and receipted when it
has an id; a burst the database refuses as a whole is stored event by event. A
transient database failure (``failures.is_transient``) receipts nothing: the devices
send the burst again.
"""

from __future__ import annotations

import logging
import queue
from collections import Counter, defaultdict
from collections.abc import Sequence

from sqlalchemy.engine import Engine
from sqlmodel import Session

from edgefleet import topics
from edgefleet.control_plane.broker.failures import (
    RejectionKey,
    count_refusals,
    is_transient,
    log_refusal,
)
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.services.events import IngestMethod, ingest_events
from edgefleet.messages import RECEIPT_MAX_IDS, Receipt, TelemetryEvent, decode_as
from edgefleet.mqtt import Incoming, MqttLink

logger = logging.getLogger(__name__)

TELEMETRY_BURST = 2000
"""Most telemetry events stored in one transaction. Larger bursts spread a transaction's
fixed round trips over more events: storing alone (COPY, aggregates, device touch, one
commit) measured 3,012 events/s in bursts of 500 and 6,819 in bursts of 2,000; a burst is
only as large as what queued while the previous one was stored."""
TELEMETRY_QUEUE_MAX = 20_000
"""Most telemetry messages waiting for ``cp-telemetry`` (a few seconds of a fleet's
telemetry at full speed, some MiB). Past it a message is acknowledged and dropped
unreceipted: the device keeps it in its spool and sends it again, so a burst the
database cannot keep up with waits on the devices, not in this process's memory (and
not in the broker's in-flight window, which fetch requests and reports share)."""


DEFAULT_INGEST_PROCESSES = 2
"""Ingest worker processes per replica on PostgreSQL. Each decodes and acknowledges its
share of the MQTT traffic on its own GIL: ``bench/ingest.py --ingest-processes 1,2`` stored
4,045 and 5,666 events/s of an offered 6,000 on two cores (the API's process alone
2,734), so two, where one worker's MQTT receive thread was the limit."""


def ingest_processes(settings: Settings) -> int:
    """How many ingest worker processes a control plane runs (0: ingest in its own).

    ``Settings.ingest_processes`` when set; otherwise ``DEFAULT_INGEST_PROCESSES`` on
    PostgreSQL and none on SQLite, where a writer process of its own would only queue on
    the database file's lock.
    """
    if settings.ingest_processes is not None:
        return settings.ingest_processes
    return DEFAULT_INGEST_PROCESSES if settings.sqlalchemy_url.startswith("postgresql") else 0


def publish_receipts(link: MqttLink, device_id: str, event_ids: Sequence[str]) -> None:
    """Tell a device which of its event ids are handled (QoS 1, chunked)."""
    for start in range(0, len(event_ids), RECEIPT_MAX_IDS):
        chunk = list(event_ids[start : start + RECEIPT_MAX_IDS])
        link.publish(
            topics.down(device_id, topics.Down.RECEIPT), Receipt(event_ids=chunk).to_bytes(), qos=1
        )
    logger.debug("receipt published device_id=%s events=%d", device_id, len(event_ids))


class TelemetryIngest:
    """The telemetry path of one MQTT session: queue, bursts, receipts."""

    def __init__(
        self,
        *,
        engine: Engine,
        link: MqttLink,
        method: IngestMethod,
        queue_max: int | None = None,
    ) -> None:
        self._engine = engine
        self._link = link
        self._method: IngestMethod = method
        self._queue: queue.Queue[tuple[str, Incoming] | None] = queue.Queue(
            TELEMETRY_QUEUE_MAX if queue_max is None else queue_max
        )
        self.shed = 0
        """Telemetry messages dropped unreceipted on a full queue."""
        self.stored = 0
        """Events stored as new by this instance (for the worker's status line)."""

    def subscribe(self, shared_group: str) -> None:
        """Take a share of every device's telemetry on ``link`` (acked once handled)."""
        # Acknowledged to the broker once its burst is handled, in arrival order; what a
        # control plane dies holding is sent again by the devices.
        self._link.subscribe(
            topics.up_filter(topics.Up.TELEMETRY),
            self.on_message,
            shared_group=shared_group,
            deferred_ack=True,
        )

    def queued(self) -> int:
        return self._queue.qsize()

    def stop(self) -> None:
        """Wake ``run`` to return once what is queued is stored."""
        self._queue.put(None)

    # -- network thread ------------------------------------------------------------

    def on_message(self, message: Incoming) -> None:
        """Queue one message (paho's network thread: nothing slow here)."""
        try:
            device_id, channel = topics.parse_up(message.topic)
        except ValueError as e:
            logger.warning("message dropped topic=%s reason=%s", message.topic, e)
            message.ack()
            return
        if channel is not topics.Up.TELEMETRY:
            logger.warning("message dropped topic=%s reason=unexpected channel", message.topic)
            message.ack()
            return
        try:
            self._queue.put_nowait((device_id, message))
        except queue.Full:  # shed: the device resends what no receipt named
            message.ack()
            self.shed += 1
            if self.shed % 1000 == 1:
                logger.warning(
                    "telemetry queue full, messages left to the devices' spools shed=%d",
                    self.shed,
                )

    # -- cp-telemetry --------------------------------------------------------------

    def run(self) -> None:
        """cp-telemetry: take what has queued up (at most a burst), store it at once."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            burst = [item]
            while len(burst) < TELEMETRY_BURST:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.ingest(burst)
                    return
                burst.append(item)
            self.ingest(burst)

    def ingest(self, burst: list[tuple[str, Incoming]]) -> None:
        """Store one burst; receipt what it holds per device, then acknowledge it."""
        refused: Counter[RejectionKey] = Counter()
        events: list[tuple[str, TelemetryEvent]] = []
        for device_id, message in burst:
            try:
                event = decode_as(message.payload, TelemetryEvent, topic=message.topic)
            except Exception as e:  # this message's failure, whatever it is
                refused[_refused(device_id, message.topic, e)] += 1
                continue
            events.append((device_id, event))
        handled = self._store(events, refused)
        if handled is not None:  # None: the database failed, no receipts, devices resend
            count_refusals(self._engine, refused)
            receipts: defaultdict[str, list[str]] = defaultdict(list)
            for device_id, event in handled:
                receipts[device_id].append(event.event_id)
            for device_id, event_ids in receipts.items():
                publish_receipts(self._link, device_id, list(dict.fromkeys(event_ids)))
        # Acknowledged either way, in arrival order as MQTT asks: the session keeps nothing
        # for later (it ends with the connection), and an unacknowledged message would
        # only hold a slot of the broker's in-flight window until the link drops.
        for _device_id, message in burst:
            message.ack()

    def _store(
        self, events: list[tuple[str, TelemetryEvent]], refused: Counter[RejectionKey]
    ) -> list[tuple[str, TelemetryEvent]] | None:
        """Store ``events`` (one transaction, else one by one); the events now handled.

        Handled: in the database (new or stored before), or refused for good (counted in
        ``refused``). None after a transient database failure: nothing to receipt.
        """
        if not events:
            return []
        try:
            with Session(self._engine) as session:
                self.stored += ingest_events(session=session, batch=events, method=self._method)
            return events
        except Exception as e:
            if is_transient(e):
                logger.warning("telemetry not stored events=%d error=%s", len(events), e)
                return None
            logger.warning(
                "telemetry burst refused, storing it event by event events=%d error=%s",
                len(events),
                type(e).__name__,
            )
        for device_id, event in events:
            try:
                with Session(self._engine) as session:
                    self.stored += ingest_events(session=session, batch=[(device_id, event)])
            except Exception as e:
                if is_transient(e):
                    logger.warning("telemetry not stored events=%d error=%s", len(events), e)
                    return None
                topic = topics.up(device_id, topics.Up.TELEMETRY)
                refused[_refused(device_id, topic, e)] += 1
        return events


def _refused(device_id: str, topic: str, error: BaseException) -> RejectionKey:
    return log_refusal(device_id, topics.Up.TELEMETRY.value, topic, error)
