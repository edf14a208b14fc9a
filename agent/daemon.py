"""The agent process: MQTT link, offer worker and inference endpoint wired together.

Start-up never depends on the broker: the endpoint serves the installed model at
once and the link connects (and reconnects) in the background. Every connect
publishes a retained ``DeviceStatus``; the broker publishes the last will (offline)
if the agent vanishes, and a clean shutdown publishes offline itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from agent import __version__
from agent.config import AgentConfig
from agent.errors import RuntimeLoadError, SlotError
from agent.fetcher import MqttFetcher
from agent.runtime import ActiveModel, ModelHolder, load_runtime
from agent.server import InferenceServer
from agent.slots import SlotStore, read_slot_manifest
from agent.updater import Installer, OfferWorker, ensure_trust_root
from edgefleet import topics
from edgefleet.bundle import verify_directory
from edgefleet.errors import BundleError, MessageError, TransportError
from edgefleet.messages import BundleOffer, DeviceStatus, InstallReport, decode_as
from edgefleet.mqtt import Incoming, MqttLink, Will
from edgefleet.topics import Down, Up

logger = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 24 * 3600
SHUTDOWN_ACK_TIMEOUT = 3.0


def load_active_model(slots: SlotStore) -> ActiveModel | None:
    """The installed model, re-verified against its manifest; None when absent or broken.

    A broken slot must not stop the agent: it starts with no model (ready = 503)
    and the next offer installs a good one.
    """
    try:
        record = slots.read_active()
        if record is None:
            logger.info("no model installed yet")
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
        logger.error("installed model unusable, starting without one reason=%s", e)
        return None
    logger.info(
        "model loaded bundle_id=%s release=%d slot=%s",
        record.bundle_id,
        record.release,
        record.slot,
    )
    return model


class Agent:
    """One running device agent; ``start()`` then ``stop()`` (or ``run()`` until a signal)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_id = config.device_id
        self.slots = SlotStore(config.data_dir)
        self.holder = ModelHolder()
        self._stopped = threading.Event()
        offline = DeviceStatus(online=False, profile=config.profile, agent_version=__version__)
        self.link = MqttLink(
            client_id=config.device_id,
            broker=config.broker_address,
            clean_start=False,
            session_expiry=SESSION_EXPIRY,
            will=Will(topics.up(self.device_id, Up.STATUS), offline.to_bytes(), retain=True),
        )
        self.fetcher = MqttFetcher(self.link, self.device_id)
        self.installer = Installer(
            config=config,
            slots=self.slots,
            holder=self.holder,
            fetcher=self.fetcher,
            report=self.publish_report,
            on_active=self.publish_status,
        )
        self.worker = OfferWorker(self.installer)
        self.server = InferenceServer(
            self.holder,
            host=config.inference.host,
            port=config.inference.port,
            max_concurrency=config.inference.max_concurrency,
            max_body_bytes=config.inference.max_body_bytes,
        )

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Load the installed model, open the endpoint, start MQTT; returns at once."""
        ensure_trust_root(self.config)
        self.holder.swap(load_active_model(self.slots))
        self.server.start()
        self.worker.start()
        self.link.on_connect(self.publish_status)
        self.link.subscribe(topics.down(self.device_id, Down.OFFER), self.handle_offer, qos=1)
        self.link.start()
        logger.info(
            "agent started device_id=%s broker=%s", self.device_id, self.config.broker_address.url()
        )

    def stop(self) -> None:
        """Say offline (bounded wait for the ack), then stop everything."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.server.stop()
        self.worker.stop()
        if self.link.connected:
            try:
                self.link.publish(
                    topics.up(self.device_id, Up.STATUS),
                    self._status(online=False).to_bytes(),
                    qos=1,
                    retain=True,
                    wait=SHUTDOWN_ACK_TIMEOUT,
                )
            except TransportError as e:
                logger.warning("offline status not acknowledged reason=%s", e)
        self.link.stop()
        logger.info("agent stopped device_id=%s", self.device_id)

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

    def handle_offer(self, incoming: Incoming) -> None:
        """Network thread: validate and queue; the install runs on the worker."""
        try:
            offer = decode_as(incoming.payload, BundleOffer, topic=incoming.topic)
        except MessageError as e:
            logger.warning("dropped invalid offer reason=%s", e)
            return
        logger.info("offer received bundle_id=%s release=%d", offer.bundle_id, offer.release)
        self.worker.submit(offer)

    def publish_report(self, report: InstallReport) -> None:
        self.link.publish(topics.up(self.device_id, Up.REPORT), report.to_bytes(), qos=1)

    def publish_status(self) -> None:
        """Retained status: online, and what is installed (runs on connect and after install)."""
        self.link.publish(
            topics.up(self.device_id, Up.STATUS),
            self._status(online=True).to_bytes(),
            qos=1,
            retain=True,
        )

    def _status(self, *, online: bool) -> DeviceStatus:
        model = self.holder.current()
        return DeviceStatus(
            online=online,
            profile=self.config.profile,
            agent_version=__version__,
            model=model.name if model else None,
            model_version=model.version if model else None,
            bundle_id=model.bundle_id if model else None,
            release=model.release if model else None,
        )
