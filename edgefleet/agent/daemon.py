"""The agent process: device session, offer worker and inference endpoint wired together.

Start-up never depends on the broker: the endpoint serves the installed model at
once and the device's MQTT session (``edgefleet.agent.session``: retained status on
every connect, offline last will, the down topics' handlers) connects and reconnects
in the background.

Telemetry and install reports go through the spool (``edgefleet.agent.telemetry.spool``) and its
forwarder, never straight to the link: a row leaves the spool only when the control
plane's ``Receipt`` on ``down/receipt`` names it. A small ``status.json`` (written
atomically every second) tells ``edgefleet-agent status`` the link state and spool
depth; the retained ``DeviceStatus`` carries the spool depth too, republished when it
changes materially (``spool_depth_changed``), at most every ``STATUS_DEPTH_EVERY_S``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import numpy as np

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.enrolment.credentials import load_credentials
from edgefleet.agent.errors import ConfigError, RuntimeLoadError, SlotError, SpoolError
from edgefleet.agent.inference.feedback import AnswerBook
from edgefleet.agent.inference.outcomes import OutcomeRecorder
from edgefleet.agent.inference.runtime import ActiveModel, ModelTable, load_runtime
from edgefleet.agent.inference.server import InferenceServer
from edgefleet.agent.inference.split import RequestSplit
from edgefleet.agent.install.deferral import UpdateLock
from edgefleet.agent.install.journal import Journal
from edgefleet.agent.install.layout import hosted_models, migrate_single_model, model_dir
from edgefleet.agent.install.selfupdate import SelfUpdater
from edgefleet.agent.install.shadow import ShadowRunner
from edgefleet.agent.install.slots import SlotStore, read_slot_manifest
from edgefleet.agent.install.updater import Installer, OfferWorker, ensure_trust_root
from edgefleet.agent.remote_config import RemoteConfig, drift_thresholds
from edgefleet.agent.session import DeviceSession, device_status
from edgefleet.agent.storage.budget import DiskBudget
from edgefleet.agent.storage.worker import DiskWorker
from edgefleet.agent.telemetry.budget import BUDGET_FILE, ByteBudget
from edgefleet.agent.telemetry.counters import (
    InferenceStats,
    inference_event,
    install_event,
    resource_event,
)
from edgefleet.agent.telemetry.drift import DriftSupervisor
from edgefleet.agent.telemetry.forwarder import Forwarder
from edgefleet.agent.telemetry.logstore import LogResponder, LogStore
from edgefleet.agent.telemetry.spool import Spool, disk_slack
from edgefleet.agent.telemetry.spool.outbox import MIN_CAP
from edgefleet.agent.verification.blobs import BlobFetcher
from edgefleet.agent.verification.budget import BudgetedTransport, LinkBudget
from edgefleet.agent.verification.fetcher import MqttFetcher
from edgefleet.agent.verification.mirrors import MirrorFetcher
from edgefleet.agent.verification.transport import Transport, downloads_dir, trusted_versions
from edgefleet.agent.verification.verifier import (
    InProcessVerifier,
    ProcessVerifier,
    ResumingTransport,
)
from edgefleet.bundle import verify_directory
from edgefleet.errors import BundleError, TransportError
from edgefleet.fileio import atomic_write
from edgefleet.messages import (
    BundleOffer,
    DeviceCommand,
    DeviceStatus,
    InstallReport,
    LogRequest,
    Receipt,
    TelemetryEvent,
)
from edgefleet.mqtt import MqttLink
from edgefleet.supervisor import Supervisor

logger = logging.getLogger(__name__)

STATUS_FILE = "status.json"
SPOOL_FILE = "spool.sqlite"
STATUS_EVERY_S = 1.0
STATUS_DEPTH_EVERY_S = 5.0
"""Least time between two statuses republished for a new spool depth."""


def spool_depth_changed(published: int | None, depth: int) -> bool:
    """Whether ``depth`` differs materially from the depth last published: emptied, no
    longer empty, or moved by at least 10 % (and by at least 10 rows)."""
    if published is None:
        return True
    if (published == 0) != (depth == 0):
        return True
    return abs(depth - published) >= max(10, published // 10)


def agent_fetcher(link: MqttLink, config: AgentConfig) -> MqttFetcher:
    """Repository files over ``link``, sized by ``[fetch]``, resumable in ``downloads/parts``."""
    return MqttFetcher(
        link,
        config.device_id,
        chunk_size=config.fetch.chunk_kib * 1024,
        window=config.fetch.window,
        timeout=config.fetch.timeout_s,
        retries=config.fetch.retries,
        part_dir=downloads_dir(config.data_dir) / "parts",
    )


def agent_transport(link: MqttLink, config: AgentConfig) -> Transport:
    """Where repository files come from: the configured mirrors first, then targets from
    the broker's retained blobs, then request/response over MQTT for the rest; paced
    and capped by the ``[fetch]`` link budget when one is set."""
    mqtt = agent_fetcher(link, config)
    transport: Transport = mqtt
    if config.fetch.blobs:
        transport = BlobFetcher(
            link,
            mqtt,
            window=config.fetch.blob_window,
            grace=config.fetch.blob_grace_s,
            subscribe_wait=config.fetch.blob_subscribe_wait_s,
        )
    if config.mirrors:
        transport = MirrorFetcher(
            config.mirrors,
            transport,
            part_dir=mqtt.part_dir,
            timeout=config.fetch.mirror_timeout_s,
            attempts=config.fetch.mirror_attempts,
        )
    if config.fetch.link_bytes_per_s or config.fetch.link_bytes_per_day:
        budget = LinkBudget(
            config.data_dir,
            bytes_per_s=config.fetch.link_bytes_per_s,
            bytes_per_day=config.fetch.link_bytes_per_day,
        )
        transport = BudgetedTransport(transport, budget, mqtt.part_dir)
    return transport


def agent_verifier(
    link: MqttLink, config: AgentConfig, *, isolated: bool = True
) -> ProcessVerifier | InProcessVerifier:
    """TUF verification fed by ``link``, waiting out broker outages per ``[fetch]``.

    ``isolated`` (the daemon) runs each verification in a child process, so python-tuf
    never enters the agent's own memory; the fleet simulator runs it in-process.
    """
    transport = ResumingTransport(
        agent_transport(link, config),
        link_ready=link.wait_connected,
        attempts=config.fetch.resume_attempts,
        wait_s=config.fetch.reconnect_wait_s,
    )
    if isolated:
        return ProcessVerifier(config.data_dir, transport)
    return InProcessVerifier(config.data_dir, transport)


def status_path(data_dir: Path) -> Path:
    return Path(data_dir) / STATUS_FILE


def load_active_model(slots: SlotStore) -> ActiveModel | None:
    """The model installed in ``slots``, re-verified against its manifest; None when absent
    or broken.

    A broken slot must not stop the agent: that model is not served (its infer route
    answers 404, ready = 503 when no model is left) and the next offer installs a good one.
    """
    try:
        record = slots.read_active()
        if record is None:
            logger.info("no model installed yet dir=%s", slots.data_dir)
            return None
        slot_dir = slots.slot_dir(record.slot)
        manifest = read_slot_manifest(slot_dir)
        verify_directory(slot_dir, manifest)
        if manifest.bundle_id != record.bundle_id:
            raise SlotError(
                f"slot {record.slot} holds {manifest.bundle_id}, not {record.bundle_id}"
            )
        model = ActiveModel.from_manifest(manifest, load_runtime(manifest, slot_dir))
    except (SlotError, BundleError, RuntimeLoadError, OSError) as e:
        logger.error("installed model unusable, starting without it reason=%s", e)
        return None
    logger.info(
        "model loaded bundle_id=%s release=%d slot=%s",
        record.bundle_id,
        record.release,
        record.slot,
    )
    return model


def spool_cap_configured(config: AgentConfig, budget: DiskBudget) -> int:
    """The spool's cap: ``[telemetry] spool_max_mb``, within its share of the disk budget
    (less the slack its file and write-ahead log may take beyond the cap)."""
    share = budget.share("spool")
    return max(MIN_CAP, min(int(config.telemetry.spool_max_mb * 2**20), share - disk_slack(share)))


def logs_cap(config: AgentConfig, budget: DiskBudget) -> int:
    """The log ring's size: ``[logs] max_kib``, within its share of the disk budget."""
    return max(64 * 1024, min(config.logs.max_kib * 1024, budget.share("logs")))


def load_hosted_models(data_dir: Path, table: ModelTable) -> None:
    """Move a one-model state dir into ``models/<name>/`` (an agent updated in the
    field keeps its model), then load every hosted model into its holder in ``table``."""
    try:
        migrate_single_model(data_dir)
    except OSError as e:
        logger.error("one-model state not migrated reason=%s", e)
    for name in hosted_models(data_dir):
        model = load_active_model(SlotStore(model_dir(data_dir, name)))
        if model is not None:
            table.holder(name).swap(model)


class Agent:
    """One running device agent; ``start()`` then ``stop()`` (or ``run()`` until a signal)."""

    def __init__(self, config: AgentConfig) -> None:
        self.remote = RemoteConfig(config)  # the last good remote configuration over the file
        config = self.remote.config
        self.config = config
        self.device_id = config.device_id
        self.models = ModelTable()
        self.stats = InferenceStats()
        self._stopped = threading.Event()
        self._link_since = time.time()
        credentials = load_credentials(config.data_dir)  # written by `edgefleet-agent enrol`
        try:
            self.session = DeviceSession.for_agent(config, self._status, credentials)
        except TransportError as e:  # a missing certificate: not enrolled yet
            raise ConfigError(f"{e} (run `edgefleet-agent enrol` first?)", field="tls") from e
        self.link = self.session.link
        self.disk_budget = DiskBudget(config.data_dir, config.disk)
        self.logs = LogStore(
            config.data_dir,
            max_bytes=logs_cap(config, self.disk_budget),
            level=logging.getLevelNamesMapping()[config.logs.level],
        )
        self.log_responder = LogResponder(self.logs, self.session.publish_logs)
        self.spool = Spool(
            Path(config.data_dir) / SPOOL_FILE,
            max_bytes=spool_cap_configured(config, self.disk_budget),
            expect_existing=status_path(config.data_dir).exists(),
        )
        self.forwarder = Forwarder(
            self.spool,
            self.link,
            self.device_id,
            rate=config.telemetry.replay_per_s,
            max_inflight=config.telemetry.max_inflight,
            max_unreceipted=config.telemetry.max_unreceipted,
            receipt_timeout=config.telemetry.receipt_timeout_s,
            on_tick=self._periodic,
        )
        self._published_depth: int | None = None
        self._next_depth_status = 0.0
        self.split = RequestSplit()  # an A/B experiment's challenger, in requests mode
        self.shadow = ShadowRunner(config.data_dir, self.emit, split=self.split)
        self.update_lock = UpdateLock(config.data_dir)
        self.installer = Installer(
            config=config,
            holder=self.models,
            verifier=agent_verifier(self.link, config),
            report=self.publish_report,
            on_active=self.publish_status,
            stats=self.stats,
            shadow=self.shadow,
            lock=self.update_lock,
        )
        self.self_updater = SelfUpdater(
            config=config, verifier=self.installer.verifier, report=self.publish_report
        )
        self.worker = OfferWorker(self.installer, self_updater=self.self_updater)
        self.supervisor = Supervisor()
        self.disk = DiskWorker(
            config,
            spool=self.spool,
            spool_cap_bytes=self.spool.max_bytes,
            job_lock=self.worker.job_lock,
            shadow_running=lambda: self.shadow.bundle_id is not None,
        )
        self.drift = DriftSupervisor(
            lambda name: SlotStore(model_dir(config.data_dir, name)),
            self.emit,
            drift_thresholds(config),
            sample_size=config.drift.sample_size,
            budget=ByteBudget(
                config.drift.sample_budget_kib_per_day * 1024,
                Path(config.data_dir) / BUDGET_FILE,
            ),
        )
        self.outcomes = OutcomeRecorder(resolve=self.split.served_by)
        self.answers = (
            AnswerBook(
                max_answers=config.drift.feedback_answers, on_label=self.drift.observe_labels
            )
            if config.drift.feedback_answers
            else None
        )
        self.server = InferenceServer(
            self.models,
            host=config.inference.host,
            port=config.inference.port,
            max_concurrency=config.inference.max_concurrency,
            max_body_bytes=config.inference.max_body_bytes,
            nan_policy=config.inference.nan_policy,
            nan_policy_by_model=config.inference.nan_policy_by_model,
            observer=self.stats.record,
            input_observer=self.observe_request,
            agent_routes=self.update_lock.handle,
            outcome_route=self.outcomes.handle,
            flag_routes=self.remote.handle_flags,
            answers=self.answers,
            unix_socket=config.inference.unix_socket,
        )
        self.server.choose_arm = self.split.serve
        self._next_window = time.monotonic() + config.telemetry.window_s
        self._next_status = 0.0

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Load the installed model, open the endpoint, start MQTT; returns at once."""
        logging.getLogger().addHandler(self.logs)
        ensure_trust_root(self.config)
        load_hosted_models(self.config.data_dir, self.models)
        self.server.start()
        # Before any offer runs: a release the launcher undid is on record (and reported).
        self.self_updater.start(self.session.wait_connected)
        self.worker.start()
        self.supervisor.start("disk", self.disk.run)
        self.forwarder.start()
        self.session.on_offer(self.handle_offer)
        self.session.on_command(self.handle_command)
        self.session.on_receipt(self.handle_receipt)
        self.session.on_log_request(self.handle_log_request)
        self.remote.attach(report=self.session.publish_config_report, on_apply=self.apply_config)
        self.session.on_config(self.remote.receive)
        if "logs.level" in self.remote.values:
            self.apply_config(self.config, frozenset({"logs.level"}))
        self.log_responder.start()
        self.session.start()
        logger.info(
            "agent started device_id=%s broker=%s", self.device_id, self.config.broker_address.url()
        )

    def stop(self) -> None:
        """Say offline (bounded wait for the ack), then stop everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.stop()
        self.drift.stop()
        self.supervisor.stop()
        self.disk.stop()
        self.worker.stop()
        self.shadow.close()
        self.forwarder.stop()
        # The window still open holds requests already answered: spool them (the spool
        # outlives the process) so a clean stop never loses a count.
        self.stats.fold()
        elapsed = self.config.telemetry.window_s - (self._next_window - time.monotonic())
        self._close_window(max(elapsed, 0.0))
        self.spool.close()
        self.log_responder.stop()
        self.session.close()
        logger.info("agent stopped device_id=%s", self.device_id)
        logging.getLogger().removeHandler(self.logs)
        self.logs.close()

    def run(self) -> None:
        """Run until SIGTERM/SIGINT; a second signal exits at once."""
        shutdown = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            if shutdown.is_set():
                logger.warning("second signal, forcing exit signal=%d", signum)
                raise SystemExit(128 + signum)
            logger.info("shutting down signal=%d", signum)
            shutdown.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.start()
        try:
            while not shutdown.wait(1.0):
                pass
        finally:
            self.stop()

    # -- MQTT ------------------------------------------------------------------------

    def handle_offer(self, offer: BundleOffer) -> None:
        """Network thread: queue; the install runs on the worker."""
        logger.info("offer received bundle_id=%s release=%d", offer.bundle_id, offer.release)
        self.worker.submit(offer)

    def handle_command(self, command: DeviceCommand) -> None:
        """Network thread: queue a command for the worker."""
        logger.info("command received command=%s id=%s", command.command, command.command_id)
        if command.command in ("switch", "drop_staged"):
            # For an armed install waiting on the worker thread: queued there, it would
            # make the wait give way instead (``switch_order.OrderInbox``).
            self.installer.orders.post(command)
            return
        self.worker.submit(command)

    def handle_receipt(self, receipt: Receipt) -> None:
        """Network thread: hand the receipted event ids to the forwarder, nothing more."""
        self.forwarder.receive(receipt.event_ids)

    def handle_log_request(self, request: LogRequest) -> None:
        """Network thread: queue a log request; the responder reads and answers it."""
        logger.info(
            "log request received request_id=%s since_s=%d max_bytes=%d",
            request.request_id,
            request.since_s,
            request.max_bytes,
        )
        self.log_responder.submit(request)

    def apply_config(self, config: AgentConfig, keys: frozenset[str]) -> None:
        """Network thread: the live keys of the remote configuration (``keys``) that
        changed, applied to what runs (``edgefleet.agent.remote_config``)."""
        self.config = config  # the telemetry window is read from it on every tick
        if "telemetry.window_s" in keys:
            soonest = time.monotonic() + config.telemetry.window_s
            self._next_window = min(self._next_window, soonest)
        if "logs.level" in keys:
            level = logging.getLevelNamesMapping()[config.logs.level]
            logging.getLogger().setLevel(level)
            self.logs.setLevel(level)
        if keys & {"drift.window", "drift.sample_size"}:
            self.drift.reconfigure(drift_thresholds(config), config.drift.sample_size)

    def publish_report(self, report: InstallReport) -> None:
        """Install progress for ``up/report``, kept in the spool until the control plane
        receipts it (sent again otherwise, across restarts too), and as an install event.
        A disk too full to commit it keeps it in the spool's buffer (``SpoolError``):
        the install goes on, and the report is written once there is room."""
        try:
            self.spool.append_report(report)
        except SpoolError as e:
            logger.warning("install report kept in memory bundle_id=%s reason=%s",
                           report.bundle_id, e)  # fmt: skip
        self.emit(install_event(report))

    def observe_request(
        self, model: ActiveModel, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> None:
        """After each answered request: drift scoring and the shadow model's comparison."""
        self.drift.observe(model, feeds, outputs)
        self.shadow.observe(model, feeds, outputs)

    def emit(self, event: TelemetryEvent) -> None:
        """Accept a telemetry event into the spool (it is sent when the broker is reachable)."""
        self.spool.append(event)

    def _periodic(self) -> None:
        """Forwarder thread, every tick: fold request stats, close windows, refresh status.json."""
        self.stats.fold()
        now = time.monotonic()
        if now >= self._next_window:
            window_s = self.config.telemetry.window_s
            self._next_window = now + window_s
            self._close_window(window_s)
            self.shadow.flush(window_s)
            self.emit(resource_event(self.config.data_dir))
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self.write_status_file()
        if (
            now >= self._next_depth_status
            and self.link.connected
            and spool_depth_changed(self._published_depth, self.spool.depth())
        ):
            self._next_depth_status = now + STATUS_DEPTH_EVERY_S
            self.publish_status()

    def _close_window(self, window_s: float) -> None:
        """Spool the requests each bundle answered since the last window, one inference
        event per bundle (an agent hosts several models; each rollout reads its own), and
        the outcomes the application posted as one outcome event per bundle."""
        for event in self.outcomes.take_events():
            self.emit(event)
        releases = {m.bundle_id: m.release for m in self.models.models()}
        for bundle_id, window in sorted(self.stats.take_windows().items()):
            if window.count:
                self.emit(inference_event(window, window_s, bundle_id, releases.get(bundle_id)))

    def write_status_file(self) -> None:
        """What ``edgefleet-agent status`` shows that only the running daemon knows."""
        served = self.models.models()
        journals = {
            name: Journal(model_dir(self.config.data_dir, name)).read()
            for name in hosted_models(self.config.data_dir)
        }
        record = next((r for r in journals.values() if r is not None and not r.finished), None)
        if record is None:
            record = next((r for r in journals.values() if r is not None), None)
        status = {
            "pid": os.getpid(),
            "updated_at": time.time(),
            "link": "connected" if self.link.connected else "disconnected",
            "broker": self.config.broker_address.url(),
            "spool_depth": self.spool.depth(),
            "telemetry_sent": self.forwarder.sent,
            "telemetry_acked": self.forwarder.acked,
            "telemetry_receipted": self.forwarder.receipted,
            "telemetry_unreceipted": self.forwarder.unreceipted,
            "spool_bytes": self.spool.disk_bytes(),
            "spool_recreated": self.spool.recreated,
            "serving": served[0].bundle_id if served else None,
            "models": {
                name: {
                    "serving": next((m.bundle_id for m in served if m.name == name), None),
                    "journal_state": journal.state if journal else None,
                }
                for name, journal in journals.items()
            },
            "journal_state": record.state if record else None,
            "deferred_reason": record.reason if record and record.state == "deferred" else None,
            "update_locks": [lock.holder for lock in self.update_lock.held()],
            "disk": self.disk.status(),
            "logs_dropped": self.logs.dropped,
            "workers": {
                w.name: {
                    "running": w.running,
                    "restarts": w.restarts,
                    "last_error": w.last_error,
                }
                for w in self.supervisor.workers()
            },
        }
        try:
            atomic_write(status_path(self.config.data_dir), json.dumps(status).encode() + b"\n")
        except OSError as e:
            logger.warning("status file not written reason=%s", e)

    def publish_status(self) -> None:
        """Retained status: online, and what is installed (runs on connect and after install)."""
        self.session.publish_status()

    def _status(self, online: bool) -> DeviceStatus:
        depth = self.spool.depth()
        self._published_depth = depth
        return device_status(
            self.config.profile,
            self.models.models(),
            online=online,
            spool_depth=depth,
            trusted=trusted_versions(self.config.data_dir),
        )
