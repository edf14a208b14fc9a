"""The control plane's MQTT link to the fleet.

Subscribes to every device's ``up/status`` (a plain subscription: retained statuses
reach only plain subscriptions, so every replica sees every status and the upsert is
idempotent across replicas) and to ``up/report``, ``up/fetch`` and ``up/telemetry``
through an MQTT 5 shared subscription, so several control-plane replicas split that
traffic. The group name is ``Settings.mqtt_shared_group``: random unless set, the same
on every replica. ``up/logs`` (devices' answers to log requests) is a plain
subscription too: the answer must reach the replica whose API call waits for it (see
``edgefleet.control_plane.broker.log_requests``).

The device id always comes from the topic, which the broker ACL ties to the
device's credentials, never from a payload. Nothing is done on paho's network thread
but hand-off to worker threads, each run by a ``Supervisor`` that restarts it if it
dies (the death is logged, counted in ``/metrics`` and shown by ``/api/v1/health``):

- ``cp-events``: status, install reports and config reports, applied in arrival order (and log
  answers that do not decode, to be counted as refused); install reports that queued up
  back to back are applied as one burst of up to ``REPORT_BURST`` in one transaction
  (``apply_install_reports``), the way telemetry is, and receipted once it commits;
- ``cp-fetch-<n>``: fetch requests, answered from the signed repository;
- ``cp-blobs``: every ``Settings.blob_retention_s``, clears the retained blobs no
  running rollout needs (``edgefleet.control_plane.broker.blobs``);
- ``cp-telemetry``: telemetry (``edgefleet.control_plane.broker.telemetry``), stored in
  bursts and acknowledged once each burst is handled, when ingest runs in this process
  (``Settings.ingest_processes`` 0, the default on SQLite);
- ``cp-ingest-<n>``: otherwise (the default on PostgreSQL), each follows one ingest
  worker process (``edgefleet.control_plane.broker.ingest_worker``) that takes its own
  share of the telemetry subscription; a child that exits is started again.

**Blobs.** Before a bundle is first offered (or shadowed), its target is published
once as retained chunks that the broker serves to every device
(``BlobPublisher``); request/response fetches stay for metadata and for whatever
the broker does not hold.

**Poison messages.** Whatever goes wrong with one message — it does not decode, or
handling it raises anything at all — is that message's failure: it is logged with the
device id and topic (never the payload), counted per device, channel and reason
(``MessageRejection``: ``GET /api/v1/devices/<id>`` and
``edgefleet_messages_rejected_total``), acknowledged and dropped. A burst of telemetry
the database refuses as a whole is stored event by event, so one bad event costs only
itself. Only a failure of the database itself (``is_transient``: a lost connection,
a locked database, a missing table) leaves a message unhandled: it is not receipted,
and the device sends it again.

**Receipts.** Once a burst of telemetry is committed, each device gets a ``Receipt``
(QoS 1, ``down/receipt``, up to ``RECEIPT_MAX_IDS`` ids each) naming every event id of
the burst that is now in the database, duplicates included; an install report is
receipted once its burst has committed, also when it was a duplicate or
refused as stale. A decoded message refused for good (it can never be stored) is
receipted too, so the device stops resending it; an undecodable one has no id to
receipt and is only dropped. Devices delete spooled events on the receipt and resend
what stays unreceipted.

**Sessions.** The control plane's session ends with its connection
(``Settings.mqtt_session_expiry_s``, 0 by default): Mosquitto keeps handing a
disconnected member of a shared subscription its turn until the member's session
expires, so any expiry strands a dead replica's share of device traffic for that long.
Nothing is lost by not keeping a session: devices resend what was not receipted and
re-ask unanswered fetch chunks, so what a restarting control plane misses arrives with
those resends.

Why this module stays over 400 lines: ``FleetLink`` is one MQTT session and the
handlers that share its state (its worker threads and their queues, the telemetry
bursts and their receipts, the counts of what was refused); each handler is short,
and splitting them from the session they run on would spread one message path
(decode, store, receipt) over modules. The services it calls (devices, events,
rollouts, the repository) are already elsewhere.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    InterfaceError,
    OperationalError,
)
from sqlmodel import Session, col, select

from edgefleet import topics
from edgefleet.control_plane.broker.blobs import BlobPublisher
from edgefleet.control_plane.broker.failures import (
    RejectionKey,
    count_refusals,
    is_transient,
    log_refusal,
)
from edgefleet.control_plane.broker.ingest_worker import IngestProcess
from edgefleet.control_plane.broker.log_requests import LogAnswer, LogRequests
from edgefleet.control_plane.broker.metadata import MetadataPublisher
from edgefleet.control_plane.broker.telemetry import (
    TelemetryIngest,
    ingest_processes,
    publish_receipts,
)
from edgefleet.control_plane.core.errors import (
    BrokerError,
    DeviceTimeoutError,
    InvalidRequestError,
    NotFoundError,
)
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import Bundle, Rollout
from edgefleet.control_plane.services.device_config import record_report, sync_device
from edgefleet.control_plane.services.devices import upsert_device_status
from edgefleet.control_plane.services.rollouts.reports import (
    apply_install_report,
    apply_install_reports,
    reoffer_on_reconnect,
)
from edgefleet.control_plane.trust.repository import SignedRepository
from edgefleet.errors import MessageError
from edgefleet.fileio import atomic_write
from edgefleet.messages import (
    FETCH_OFFSET,
    FETCH_REASON,
    FETCH_STATUS,
    FETCH_TOTAL,
    BundleOffer,
    ConfigReport,
    DesiredConfig,
    DeviceCommand,
    DeviceStatus,
    FetchRequest,
    InstallReport,
    LogChunk,
    LogRequest,
    decode_as,
)
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink
from edgefleet.states.rollout import RUNNING_ROLLOUT_STATES
from edgefleet.supervisor import Supervisor, WorkerState

logger = logging.getLogger(__name__)

REPORT_BURST = 200
"""Most install reports applied in one transaction."""
FETCH_WORKERS = 4
STOP_TIMEOUT_S = 30.0


def stable_client_id(data_dir: Path) -> str:
    """This control plane's MQTT client id, created once and kept in ``data_dir``.

    Each replica has its own data directory, hence its own id and session.
    """
    return _kept_token(Path(data_dir) / "mqtt-client-id", "cp-", 6)


def stable_shared_group(data_dir: Path) -> str:
    """The shared-subscription group name, created once at random and kept in ``data_dir``.

    Used when ``Settings.mqtt_shared_group`` is not set; replicas with data
    directories of their own must set that instead, to one value.
    """
    return _kept_token(Path(data_dir) / "mqtt-shared-group", "cp-", 12)


def _kept_token(path: Path, prefix: str, nbytes: int) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        token = f"{prefix}{secrets.token_hex(nbytes)}"
        atomic_write(path, token.encode(), mode=0o600)  # the group name is a second lock
        return token


class FleetLink:
    """One MQTT session for the control plane: device state in, offers and chunks out."""

    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        repository: SignedRepository,
        fetch_workers: int = FETCH_WORKERS,
    ) -> None:
        self._engine = engine
        self._repository = repository
        self.shared_group = settings.mqtt_shared_group or stable_shared_group(settings.data_dir)
        # The session ends with the connection by default (see the module docstring):
        # devices resend what no receipt named, so nothing waits on this session.
        self._link = MqttLink(
            client_id=settings.client_id or stable_client_id(settings.data_dir),
            broker=BrokerAddress.parse(settings.broker_url),
            clean_start=False,
            session_expiry=settings.mqtt_session_expiry_s,
            tls=settings.mqtt_tls,
        )
        self.supervisor = Supervisor()
        self._fetch_workers = fetch_workers
        self._events: queue.Queue[tuple[topics.Up, str, Incoming] | None] = queue.Queue()
        self._fetches: queue.Queue[tuple[str, Incoming] | None] = queue.Queue()
        client_id = settings.client_id or stable_client_id(settings.data_dir)
        # Telemetry: in worker processes of their own (each its own MQTT session in the
        # shared subscription), or on this session when there are none.
        self.ingest_processes = [
            IngestProcess(
                settings=settings,
                client_id=f"{client_id}-ingest-{n}",
                shared_group=self.shared_group,
            )
            for n in range(ingest_processes(settings))
        ]
        self.telemetry: TelemetryIngest | None = None
        if not self.ingest_processes:
            self.telemetry = TelemetryIngest(
                engine=engine, link=self._link, method=settings.ingest_method
            )
        self._log_requests = LogRequests()
        self._started = False
        self._stopped = threading.Event()
        self._sent_lock = threading.Lock()
        self._sent: Counter[str] = Counter()  # fetch answer bytes, by metadata / targets
        self.blobs: BlobPublisher | None = None
        self.metadata: MetadataPublisher | None = None
        self._blob_retention_s = settings.blob_retention_s
        self._bundle_blobs: dict[str, tuple[str, str]] = {}  # bundle id -> (sha256, target)
        if settings.blob_delivery:
            self.blobs = BlobPublisher(
                self._link, repository.targets_dir, chunk_size=settings.blob_chunk_kib * 1024
            )
            self.metadata = MetadataPublisher(self._link, repository.metadata_dir)

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Subscribe and start connecting in the background (works with the broker down)."""
        if self._started:
            return
        group = self.shared_group
        self._link.subscribe(topics.up_filter(topics.Up.STATUS), self._on_status)
        self._link.subscribe(
            topics.up_filter(topics.Up.REPORT), self._on_report, shared_group=group
        )
        self._link.subscribe(topics.up_filter(topics.Up.FETCH), self._on_fetch, shared_group=group)
        if self.telemetry is not None:
            self.telemetry.subscribe(group)
        self._link.subscribe(topics.up_filter(topics.Up.LOGS), self._on_logs)
        self._link.subscribe(
            topics.up_filter(topics.Up.CONFIG), self._on_config, shared_group=group
        )
        self.supervisor.start("cp-events", self._run_events)
        for n in range(self._fetch_workers):
            self.supervisor.start(f"cp-fetch-{n}", self._run_fetches)
        if self.telemetry is not None:
            self.supervisor.start("cp-telemetry", self.telemetry.run)
        for n, process in enumerate(self.ingest_processes):
            self.supervisor.start(f"cp-ingest-{n}", process.run)
        if self.blobs is not None:
            self.blobs.attach()
        if self.metadata is not None:
            self.metadata.attach()
        if self.blobs is not None:
            self._stopped.clear()
            self.supervisor.start("cp-blobs", self._run_blob_retention)
        self._link.start()
        self._started = True
        logger.info("fleet link starting broker=%s", self._link.broker.url())

    def stop(self) -> None:
        if not self._started:
            return
        self._link.stop()
        self.supervisor.stop()
        self._stopped.set()
        # After whatever is queued: that is still handled (telemetry stored).
        self._events.put(None)
        for _ in range(self._fetch_workers):
            self._fetches.put(None)
        if self.telemetry is not None:
            self.telemetry.stop()
        for process in self.ingest_processes:
            process.stop()
        if not self.supervisor.join(STOP_TIMEOUT_S):
            logger.warning("fleet link workers still busy at stop")
        self._started = False

    @property
    def connected(self) -> bool:
        return self._link.connected

    def workers(self) -> list[WorkerState]:
        """The link's supervised worker threads, and those inside its ingest processes
        (as they last reported), for health and metrics."""
        inside = [w for process in self.ingest_processes for w in process.status.workers]
        return self.supervisor.workers() + inside

    @property
    def telemetry_shed(self) -> int:
        """Telemetry messages left unreceipted to the devices' spools on a full queue."""
        if self.telemetry is not None:
            return self.telemetry.shed
        return sum(process.status.shed for process in self.ingest_processes)

    def wait_subscribed(self, timeout: float) -> bool:
        """Connected with every subscription acknowledged (the ingest processes' too):
        from then on nothing a device publishes slips past this replica unseen."""
        deadline = time.monotonic() + timeout
        if not self._link.wait_subscribed(timeout):
            return False
        return all(
            process.subscribed.wait(max(0.0, deadline - time.monotonic()))
            for process in self.ingest_processes
        )

    # -- outgoing ----------------------------------------------------------------

    def publish_offer(self, device_id: str, offer: BundleOffer) -> None:
        """Offer a bundle to one device (QoS 1; queued while the link is down), its
        target published as retained blobs first when it is not yet."""
        self.ensure_blob(offer.bundle_id)
        self._link.publish(topics.down(device_id, topics.Down.OFFER), offer.to_bytes(), qos=1)
        logger.info(
            "offer published device_id=%s bundle_id=%s rollout_id=%s",
            device_id,
            offer.bundle_id,
            offer.rollout_id,
        )

    def publish_command(self, device_id: str, command: DeviceCommand) -> None:
        """Send a command (e.g. rollback) to one device (QoS 1; queued while offline).

        The retained metadata is brought up to date first: a command may name what was
        signed just before it (an atomic rollout's switch order is a signed target), and
        the device reads the metadata from the broker."""
        if self.metadata is not None:
            self.metadata.ensure()
        if command.command == "shadow_start" and command.bundle_id:
            self.ensure_blob(command.bundle_id)
        self._link.publish(topics.down(device_id, topics.Down.COMMAND), command.to_bytes(), qos=1)
        logger.info(
            "command published device_id=%s command=%s rollout_id=%s",
            device_id,
            command.command,
            command.rollout_id,
        )

    def publish_receipts(self, device_id: str, event_ids: Sequence[str]) -> None:
        """Tell a device which of its event ids are handled (QoS 1, chunked)."""
        publish_receipts(self._link, device_id, event_ids)

    def ensure_blob(self, bundle_id: str) -> bool:
        """Publish ``bundle_id``'s target as retained blobs unless the broker holds it.

        False when blob delivery is off or it could not be published (devices then
        fetch the target by request/response, as they always could).
        """
        if self.blobs is None:
            return False
        if self.metadata is not None:
            self.metadata.ensure()  # the metadata that lists it, for the same devices
        blob = self._bundle_blobs.get(bundle_id)
        if blob is None:
            with Session(self._engine) as session:
                bundle = session.get(Bundle, bundle_id)
                if bundle is None:
                    return False
                blob = (bundle.sha256, bundle.target)
            self._bundle_blobs[bundle_id] = blob
        return self.blobs.ensure(*blob)

    def delivery_bytes(self) -> dict[str, int]:
        """Payload bytes sent to devices so far, by path: ``fetch_metadata``,
        ``fetch_targets`` (request/response) and ``blobs`` (retained, once per target)."""
        with self._sent_lock:
            sent = {f"fetch_{kind}": count for kind, count in self._sent.items()}
        sent.setdefault("fetch_metadata", 0)
        sent.setdefault("fetch_targets", 0)
        sent["blobs"] = self.blobs.counters.bytes_published if self.blobs is not None else 0
        meta = self.metadata
        sent["metadata_retained"] = meta.counters.bytes_published if meta is not None else 0
        return sent

    def sweep_blobs(self) -> list[str]:
        """Clear the retained blobs of targets no running rollout needs; their SHA-256s."""
        if self.blobs is None:
            return []
        with Session(self._engine) as session:
            needed = session.exec(
                select(Bundle.sha256)
                .join(Rollout, col(Rollout.bundle_id) == col(Bundle.id))
                .where(col(Rollout.state).in_(RUNNING_ROLLOUT_STATES))
            ).all()
        return self.blobs.retain_only(set(needed))

    def _run_blob_retention(self) -> None:
        """cp-blobs: clear unneeded retained blobs every ``blob_retention_s``."""
        while not self._stopped.wait(self._blob_retention_s):
            if not self._link.connected:
                continue
            if self.metadata is not None:
                self.metadata.ensure()  # a re-signed timestamp follows within one pass
            try:
                self.sweep_blobs()
            except (OperationalError, InterfaceError) as e:
                logger.warning("blob retention skipped reason=%s", e)

    def publish_config(self, device_id: str, desired: DesiredConfig) -> None:
        """A device's desired configuration, retained (QoS 1): a device that is away
        finds the latest on its topic when it reconnects."""
        topic = topics.down(device_id, topics.Down.CONFIG)
        self._link.publish(topic, desired.to_bytes(), qos=1, retain=True)
        logger.info("config published device_id=%s version=%d", device_id, desired.version)

    def request_logs(self, device_id: str, request: LogRequest, *, timeout: float) -> LogAnswer:
        """Ask ``device_id`` for its recent log and wait up to ``timeout`` s for the answer.

        The request goes at QoS 0: a device that is away must not find a stale request
        queued in its session when it comes back.

        Raises:
            BrokerError: This control plane is not connected to the broker.
            DeviceTimeoutError: The device did not answer in time.
        """
        if not self._link.connected:
            raise BrokerError("the control plane is not connected to the broker")
        pending = self._log_requests.open(device_id, request)
        try:
            self._link.publish(topics.down(device_id, topics.Down.LOGS), request.to_bytes(), qos=0)
            logger.info(
                "log request published device_id=%s request_id=%s", device_id, request.request_id
            )
            if not pending.done.wait(timeout):
                got = len(pending.chunks)
                raise DeviceTimeoutError(
                    f"device {device_id} did not answer the log request within {timeout:g}s"
                    + (f" ({got} chunks of it arrived)" if got else "")
                    + ": it may be offline, or its agent too old to serve logs",
                    device_id=device_id,
                )
            return pending.answer()
        finally:
            self._log_requests.close(request.request_id)

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

    def _on_status(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.STATUS)
        if device_id is None or not message.payload:  # empty = retained status cleared
            return
        self._events.put((topics.Up.STATUS, device_id, message))

    def _on_report(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.REPORT)
        if device_id is not None:
            self._events.put((topics.Up.REPORT, device_id, message))

    def _on_logs(self, message: Incoming) -> None:
        """A log answer chunk: decoded here (bounded, quick) and handed to its waiter."""
        device_id = self._device_id(message, topics.Up.LOGS)
        if device_id is None:
            return
        try:
            chunk = decode_as(message.payload, LogChunk, topic=message.topic)
        except MessageError:
            # Refused and counted like any poison message, off the network thread.
            self._events.put((topics.Up.LOGS, device_id, message))
            return
        if not self._log_requests.deliver(device_id, chunk):
            logger.debug(
                "log answer not ours device_id=%s request_id=%s", device_id, chunk.request_id
            )

    def _on_config(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.CONFIG)
        if device_id is not None:
            self._events.put((topics.Up.CONFIG, device_id, message))

    def _on_fetch(self, message: Incoming) -> None:
        device_id = self._device_id(message, topics.Up.FETCH)
        if device_id is None:
            return
        if message.correlation is None:
            logger.warning("fetch dropped device_id=%s reason=no correlation data", device_id)
            return
        self._fetches.put((device_id, message))

    # -- refused messages -----------------------------------------------------------

    def _refused(
        self, device_id: str, channel: topics.Up, topic: str, error: BaseException
    ) -> RejectionKey:
        return log_refusal(device_id, channel.value, topic, error)

    def _count_refused(self, counts: dict[RejectionKey, int]) -> None:
        count_refusals(self._engine, counts)

    def _refuse(self, device_id: str, channel: topics.Up, topic: str, error: BaseException) -> None:
        self._count_refused({self._refused(device_id, channel, topic, error): 1})

    # -- workers (each under the supervisor) -------------------------------------------

    def _run_events(self) -> None:
        """cp-events: status and reports in arrival order; reports back to back in bursts."""
        handlers: dict[topics.Up, Callable[[str, Incoming], None]] = {
            topics.Up.STATUS: self._handle_status,
            topics.Up.LOGS: self._handle_refused_logs,
            topics.Up.CONFIG: self._handle_config_report,
        }
        taken: list[tuple[topics.Up, str, Incoming] | None] = []  # taken, not yet handled
        while (item := taken.pop() if taken else self._events.get()) is not None:
            channel, device_id, message = item
            if channel is topics.Up.REPORT:
                burst = [(device_id, message)]
                self._take_reports(burst, taken)
                self._handle_reports(burst)
                continue
            try:
                handlers[channel](device_id, message)
            except Exception as e:  # this message's failure, whatever it is
                self._refuse(device_id, channel, message.topic, e)

    def _take_reports(
        self,
        burst: list[tuple[str, Incoming]],
        taken: list[tuple[topics.Up, str, Incoming] | None],
    ) -> None:
        """Add the reports already queued right behind ``burst``'s first, up to
        ``REPORT_BURST``; an item taken that is not one goes to ``taken``."""
        while len(burst) < REPORT_BURST:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                return
            if item is None or item[0] is not topics.Up.REPORT:
                taken.append(item)
                return
            burst.append((item[1], item[2]))

    def _run_fetches(self) -> None:
        """cp-fetch-<n>: answer fetch requests."""
        while (item := self._fetches.get()) is not None:
            device_id, message = item
            try:
                self._handle_fetch(device_id, message)
            except Exception as e:  # this request's failure: the device asks again
                self._refuse(device_id, topics.Up.FETCH, message.topic, e)

    def _handle_status(self, device_id: str, message: Incoming) -> None:
        status = decode_as(message.payload, DeviceStatus, topic=message.topic)
        try:
            with Session(self._engine) as session:
                update = upsert_device_status(session=session, device_id=device_id, status=status)
                if update.came_online:
                    # Back from offline: offer again what running rollouts still owe it.
                    reoffer_on_reconnect(session=session, publisher=self, device_id=device_id)
                    sync_device(session=session, publisher=self, device_id=device_id)
        except Exception as e:
            if not is_transient(e):
                raise
            logger.warning("status not stored device_id=%s error=%s", device_id, e)

    def _handle_config_report(self, device_id: str, message: Incoming) -> None:
        report = decode_as(message.payload, ConfigReport, topic=message.topic)
        with Session(self._engine) as session:
            record_report(session=session, device_id=device_id, report=report)

    def _handle_refused_logs(self, _device_id: str, message: Incoming) -> None:
        """A log answer that did not decode on arrival: decoding again raises its error."""
        decode_as(message.payload, LogChunk, topic=message.topic)

    def _handle_reports(self, burst: list[tuple[str, Incoming]]) -> None:
        """Apply a burst of install reports in one transaction, then receipt each.

        A report that does not decode is refused on its own. When the burst's
        transaction fails for the data's sake, the reports are applied one by one, so a
        poison report costs only itself; a transient database failure receipts
        nothing (the devices send their reports again).
        """
        refused: Counter[RejectionKey] = Counter()
        reports: list[tuple[str, InstallReport]] = []
        for device_id, message in burst:
            try:
                reports.append(
                    (device_id, decode_as(message.payload, InstallReport, topic=message.topic))
                )
            except Exception as e:  # this message's failure, whatever it is
                refused[self._refused(device_id, topics.Up.REPORT, message.topic, e)] += 1
        self._count_refused(refused)
        if not reports:
            return
        try:
            with Session(self._engine) as session:
                apply_install_reports(session=session, reports=reports)
        except Exception as e:
            if is_transient(e):  # no receipt: the devices send them again
                logger.warning("reports not stored reports=%d error=%s", len(reports), e)
                return
            logger.warning(
                "report burst refused, applying it report by report reports=%d error=%s",
                len(reports),
                type(e).__name__,
            )
            for device_id, report in reports:
                self._apply_one_report(device_id, report)
            return
        for device_id, report in reports:  # one receipt per report, resent ones too
            self.publish_receipts(device_id, [report.event_id])

    def _apply_one_report(self, device_id: str, report: InstallReport) -> None:
        topic = topics.up(device_id, topics.Up.REPORT)
        try:
            with Session(self._engine) as session:
                apply_install_report(session=session, device_id=device_id, report=report)
        except Exception as e:
            if is_transient(e):  # no receipt: the device sends it again
                logger.warning("report not stored device_id=%s error=%s", device_id, e)
                return
            # Refused for good: counted, and receipted so the device stops resending it.
            self._refuse(device_id, topics.Up.REPORT, topic, e)
        self.publish_receipts(device_id, [report.event_id])

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
            self._refuse(device_id, topics.Up.FETCH, message.topic, e)
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
        if data:
            kind = "targets" if request.path.startswith("targets/") else "metadata"
            with self._sent_lock:
                self._sent[kind] += len(data)
        # The reply goes to the device's own down topic, whatever response topic it asked for.
        self._link.publish(
            topics.down(device_id, topics.Down.FETCH),
            data,
            qos=1,
            correlation=message.correlation,
            user_properties=properties,
        )
