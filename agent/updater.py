"""Offer -> install pipeline: TUF verify, download, unpack, smoke test, atomic switch.

Offers arrive on the network thread and are queued to one worker thread
(``OfferWorker``), which runs ``Installer.install`` for each in turn. The steps and
the reports they send::

    downloading  TUF refresh; the signed target's custom fields are checked
                 (bundle id, release counter, profile, hardware) before any download
    verified     the bundle file matched its signed length and SHA-256
    staged       unpacked into the inactive slot, every member re-checked
    active       model loaded, smoke test passed, active.json switched, server swapped
    failed       any step refused: the current model keeps serving, active.json untouched

TUF's Updater trusts only signed metadata: the offer is a hint, never evidence.
ngclient alone would accept an older bundle still listed in newer metadata, so the
release counter is checked here against the highest release ever installed.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tuf.api.exceptions import DownloadError, RepositoryError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from agent.config import AgentConfig
from agent.errors import AgentError, InstallError
from agent.runtime import ActiveModel, ModelHolder, load_runtime
from agent.slots import ActiveRecord, SlotStore
from agent.smoke import run_smoke_test
from edgefleet.bundle import unpack_bundle
from edgefleet.errors import BundleError
from edgefleet.messages import BundleOffer, InstallReport, InstallState

logger = logging.getLogger(__name__)

METADATA_BASE_URL = "mqtt://repo/metadata/"
TARGET_BASE_URL = "mqtt://repo/targets/"

ReportSink = Callable[[InstallReport], None]


class TargetCustom(BaseModel):
    """The ``custom`` fields of a bundle's signed TUF target entry."""

    model_config = ConfigDict(extra="allow")

    bundle_id: str
    release: int = Field(ge=1)
    model: str | None = None
    model_version: str | None = None
    profiles: list[str] = Field(default_factory=list)
    hardware: list[str] = Field(default_factory=list)


def tuf_metadata_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "tuf" / "metadata"


def ensure_trust_root(config: AgentConfig) -> Path:
    """Seed ngclient's metadata dir with the configured root, once.

    Afterwards ngclient keeps its own root chain there (``root.json`` becomes a
    symlink into ``root_history``), so the configured file is never read again.
    """
    metadata_dir = tuf_metadata_dir(config.data_dir)
    metadata_dir.mkdir(parents=True, exist_ok=True)
    root = metadata_dir / "root.json"
    if not root.exists() and not root.is_symlink():
        try:
            shutil.copyfile(config.trust_root, root)
        except OSError as e:
            raise AgentError(f"cannot install trust root {config.trust_root}: {e}") from e
        logger.info("trust root installed from=%s", config.trust_root)
    return metadata_dir


class Installer:
    """Runs one offer through the install pipeline; never raises for a refused bundle."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        slots: SlotStore,
        holder: ModelHolder,
        fetcher: FetcherInterface,
        report: ReportSink,
        on_active: Callable[[], None] = lambda: None,
        machine: str | None = None,
    ) -> None:
        self.config = config
        self.slots = slots
        self.holder = holder
        self.fetcher = fetcher
        self.report = report
        self.on_active = on_active
        self.machine = machine or platform.machine()

    def install(self, offer: BundleOffer, *, received_at: float | None = None) -> InstallReport:
        """Install ``offer``; returns the final report (``active`` or ``failed``) it sent."""
        started = received_at if received_at is not None else time.monotonic()
        release: int | None = offer.release

        def send(state: InstallState, **extra: object) -> InstallReport:
            message = InstallReport(
                state=state,
                bundle_id=offer.bundle_id,
                release=release,
                rollout_id=offer.rollout_id,
                **extra,  # type: ignore[arg-type]
            )
            self.report(message)
            return message

        send("downloading")
        try:
            final = self._run(offer, send, started)
        except (
            AgentError,
            BundleError,
            RepositoryError,
            DownloadError,
            OSError,
            ValueError,
        ) as e:
            reason = e.reason if isinstance(e, InstallError | BundleError) else str(e)
            if isinstance(e, BundleError) and e.file:
                reason = f"{e.file}: {e.reason}"
            if isinstance(e, RepositoryError | DownloadError):
                reason = f"{type(e).__name__}: {e}"
            logger.warning(
                "install failed bundle_id=%s release=%s reason=%s", offer.bundle_id, release, reason
            )
            return send("failed", reason=reason or type(e).__name__)
        return final

    def _run(
        self, offer: BundleOffer, send: Callable[..., InstallReport], started: float
    ) -> InstallReport:
        updater = Updater(
            metadata_dir=str(ensure_trust_root(self.config)),
            metadata_base_url=METADATA_BASE_URL,
            target_base_url=TARGET_BASE_URL,
            target_dir=str(Path(self.config.data_dir) / "downloads"),
            fetcher=self.fetcher,
            bootstrap=None,
        )
        updater.refresh()
        info = updater.get_targetinfo(offer.target)
        if info is None:
            raise InstallError(f"target {offer.target!r} not in signed metadata")
        try:
            custom = TargetCustom.model_validate(info.custom or {})
        except ValidationError as e:
            raise InstallError(f"signed target has invalid custom fields: {e.errors()[0]}") from e

        active = self.slots.read_active()
        if self._check_signed(offer, custom, active):
            logger.info("bundle already active bundle_id=%s", offer.bundle_id)
            return send("active", install_seconds=time.monotonic() - started)

        path = updater.find_cached_target(info) or updater.download_target(info)
        send("verified")

        slot = self.slots.inactive_slot(active)
        slot_dir = self.slots.prepare_slot(slot)
        manifest = unpack_bundle(Path(path), slot_dir)
        if manifest.bundle_id != custom.bundle_id:
            raise InstallError(
                f"manifest bundle_id {manifest.bundle_id} != signed {custom.bundle_id}"
            )
        if manifest.release != custom.release:
            raise InstallError(f"manifest release {manifest.release} != signed {custom.release}")
        if self.config.profile not in manifest.profiles:
            raise InstallError(f"manifest is not built for profile {self.config.profile}")
        send("staged")

        runtime = load_runtime(manifest, slot_dir)
        run_smoke_test(runtime, manifest, slot_dir)

        self.slots.write_active(
            ActiveRecord(
                slot=slot,
                bundle_id=manifest.bundle_id,
                release=manifest.release,
                model=manifest.model.name,
                model_version=manifest.model.version,
            )
        )
        self.holder.swap(ActiveModel.from_manifest(manifest, runtime))
        elapsed = time.monotonic() - started
        logger.info(
            "bundle active bundle_id=%s release=%d slot=%s install_seconds=%.2f",
            manifest.bundle_id,
            manifest.release,
            slot,
            elapsed,
        )
        final = send("active", install_seconds=elapsed)
        self.on_active()
        with contextlib.suppress(OSError):  # only a cache; ngclient re-downloads
            Path(path).unlink()
        return final

    def _check_signed(
        self, offer: BundleOffer, custom: TargetCustom, active: ActiveRecord | None
    ) -> bool:
        """Refuse what the signed fields rule out; True when this bundle is already active."""
        if custom.bundle_id != offer.bundle_id:
            raise InstallError(
                f"signed target is bundle {custom.bundle_id}, offer names {offer.bundle_id}"
            )
        if custom.release != offer.release:
            raise InstallError(
                f"offer says release {offer.release}, signed metadata says {custom.release}"
            )
        if active is not None:
            installed = active.highest()
            if custom.release < installed:
                raise InstallError(f"release {custom.release} is older than installed {installed}")
            current = self.holder.current()
            if (
                custom.release == active.release
                and custom.bundle_id == active.bundle_id
                and current is not None
                and current.bundle_id == active.bundle_id
            ):
                return True
        if self.config.profile not in custom.profiles:
            raise InstallError(
                f"bundle is for profiles {custom.profiles}, not {self.config.profile}"
            )
        if custom.hardware and self.machine not in custom.hardware:
            raise InstallError(f"bundle is for hardware {custom.hardware}, not {self.machine}")
        return False


class OfferWorker:
    """One thread that installs queued offers in order, off the network thread."""

    def __init__(self, installer: Installer) -> None:
        self.installer = installer
        self._queue: queue.Queue[tuple[BundleOffer, float] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="offer-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, offer: BundleOffer) -> None:
        """Queue ``offer``; the install clock starts now."""
        self._queue.put((offer, time.monotonic()))

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the install in progress (bounded), drop the rest."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            offer, received_at = item
            try:
                self.installer.install(offer, received_at=received_at)
            except Exception:  # top of the worker loop: one bad install must not stop it
                logger.exception("install crashed bundle_id=%s", offer.bundle_id)
                try:
                    self.installer.report(
                        InstallReport(
                            state="failed",
                            bundle_id=offer.bundle_id,
                            release=offer.release,
                            rollout_id=offer.rollout_id,
                            reason="internal error in the agent",
                        )
                    )
                except Exception:
                    logger.exception("could not report crashed install")
