"""Offer -> install pipeline: verify, download, unpack, smoke test, switch, probation.

Offers and commands arrive on the network thread and are queued to one worker
thread (``OfferWorker``), which runs them in turn and, between them, ticks the
probation of a freshly switched model. Every step goes through the install journal
(``edgefleet.agent.install.journal``) before it acts, so a power cut at any point resumes or rolls
back on the next start. The steps and the reports they send::

    downloading  TUF refresh; the signed target's custom fields are checked
                 (bundle id, release counter, profile, hardware) and the disk
                 budget before any download; a broken download resumes
    verified     the bundle file matched its signed length and SHA-256
    staged       unpacked into the inactive slot, every member re-checked
    active       smoke test passed, active.json switched, server swapped: probation
    rolled_back  probation breached its health rule, or a rollback command: the
                 previous slot serves again
    failed       any step refused: the current model keeps serving, active.json untouched

The signed metadata is verified by a ``Verifier`` (``edgefleet.agent.verification.verifier``:
normally a
short-lived child process running python-tuf; the offer is a hint, never evidence).
TUF alone would accept an older bundle still listed in newer metadata, so the
release counter is checked here against the highest release ever installed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import msgspec

from edgefleet import schema
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import AgentError, InstallError, SlotError, TransferError
from edgefleet.agent.inference.runtime import ActiveModel, ModelHolder, load_runtime
from edgefleet.agent.install.journal import Journal, JournalEvent, JournalRecord, resume_action
from edgefleet.agent.install.shadow import ShadowRunner
from edgefleet.agent.install.slots import ActiveRecord, SlotName, SlotStore, read_slot_manifest
from edgefleet.agent.install.smoke import run_smoke_test
from edgefleet.agent.telemetry.counters import InferenceStats, probation_breach
from edgefleet.agent.verification.verifier import SignedBundle, Verifier, tuf_metadata_dir
from edgefleet.bundle import Manifest, unpack_bundle, verify_directory
from edgefleet.errors import BundleError
from edgefleet.messages import BundleOffer, DeviceCommand, InstallReport, InstallState

logger = logging.getLogger(__name__)

ReportSink = Callable[[InstallReport], None]
REFUSALS = (AgentError, BundleError, OSError, ValueError)
"""What a bad bundle, bad metadata or a broken transfer raises: refused, never a crash."""
DISK_MARGIN_BYTES = 32 * 1024 * 1024
"""Free space always left on the data dir's filesystem after a download and unpack."""


def tree_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (0 when absent)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


class TargetCustom(schema.Struct, frozen=True, kw_only=True):
    """The ``custom`` fields of a bundle's signed TUF target entry (others are ignored)."""

    bundle_id: str
    release: Annotated[int, msgspec.Meta(ge=1)]
    model: str | None = None
    model_version: str | None = None
    profiles: list[str] = msgspec.field(default_factory=list)
    hardware: list[str] = msgspec.field(default_factory=list)


def signed_custom(signed: SignedBundle) -> TargetCustom:
    """The signed target's custom fields, checked; ``InstallError`` names what is wrong."""
    try:
        return schema.convert(signed.custom, TargetCustom)
    except msgspec.ValidationError as e:
        raise InstallError(f"signed target has invalid custom fields: {schema.describe(e)}") from e


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
    """Runs installs, roll-backs and probation through the journal; never raises for a refusal."""

    def __init__(
        self,
        *,
        config: AgentConfig,
        slots: SlotStore,
        holder: ModelHolder,
        verifier: Verifier,
        report: ReportSink,
        on_active: Callable[[], None] = lambda: None,
        machine: str | None = None,
        stats: InferenceStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.config = config
        self.slots = slots
        self.holder = holder
        self.verifier = verifier
        self.report = report
        self.on_active = on_active
        self.machine = machine or platform.machine()
        self.stats = stats or InferenceStats()
        self.clock = clock
        self.shadow = shadow
        self.journal = Journal(config.data_dir)
        self._probation_started: float | None = None

    # -- install ---------------------------------------------------------------------

    def install(
        self,
        offer: BundleOffer,
        *,
        received_at: float | None = None,
        resumed: JournalRecord | None = None,
    ) -> InstallReport:
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

        record = self.journal.begin(
            JournalRecord(
                bundle_id=offer.bundle_id,
                target=offer.target,
                release=offer.release,
                rollout_id=offer.rollout_id,
                restarts=resumed.restarts if resumed else 0,
            )
        )
        send("downloading")
        try:
            return self._run(offer, record, send, started)
        except REFUSALS as e:
            reason = self._refusal_reason(e)
            logger.warning(
                "install failed bundle_id=%s release=%s reason=%s", offer.bundle_id, release, reason
            )
            current = self.journal.read()
            if current is not None and current.state == "active":
                return self._roll_back(current, "error", reason, rollout_id=offer.rollout_id)
            if current is not None and not current.finished:
                self.journal.fire(current, "error", reason=reason)
            return send("failed", reason=reason)

    def _run(
        self,
        offer: BundleOffer,
        record: JournalRecord,
        send: Callable[..., InstallReport],
        started: float,
    ) -> InstallReport:
        ensure_trust_root(self.config)
        with self.verifier.open(offer.target) as signed:
            custom = signed_custom(signed)
            active = self.slots.read_active()
            if self._check_signed(offer, custom, active):
                logger.info("bundle already active bundle_id=%s", offer.bundle_id)
                self.journal.fire(record, "error", reason="already active")
                return send("active", install_seconds=time.monotonic() - started)
            slot = self.slots.inactive_slot(active)
            self._check_disk_budget(signed.length, self.slots.slot_dir(slot))

            record = self.journal.fire(record, "start")
            path = signed.download()
        record = self.journal.fire(record, "downloaded")
        send("verified")

        slot_dir = self.slots.prepare_slot(slot)
        manifest = self._unpack_checked(path, slot_dir, custom)
        record = self.journal.fire(record, "unpacked", slot=slot)
        send("staged")

        runtime = load_runtime(manifest, slot_dir)
        run_smoke_test(runtime, manifest, slot_dir)
        record = self.journal.fire(record, "smoke_passed")
        send("smoke_tested")

        previous = self.slots.read_active()
        record = self.journal.fire(
            record,
            "switched",
            previous=schema.to_builtins(previous) if previous else None,
        )
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
        if self.shadow is not None and self.shadow.bundle_id == manifest.bundle_id:
            self.shadow.stop("the shadowed bundle is now installed")
        self._start_probation(manifest.bundle_id)
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
        with contextlib.suppress(OSError):  # only a cache; TUF re-downloads
            path.unlink()
        self.tick()
        return final

    @staticmethod
    def _refusal_reason(e: Exception) -> str:
        """One line saying why, for the report."""
        reason = e.reason if isinstance(e, InstallError | BundleError | TransferError) else str(e)
        if isinstance(e, BundleError) and e.file:
            reason = f"{e.file}: {e.reason}"
        return reason or type(e).__name__

    # -- shadow ----------------------------------------------------------------------

    def start_shadow(self, command: DeviceCommand) -> InstallReport | None:
        """Verify, unpack and smoke-test a bundle as for an install, then shadow it.

        Nothing is switched and the journal is not touched: a failure is reported
        (``failed``, reason prefixed ``shadow:``) and the active model is unaffected.
        A repeated ``shadow_start`` for the bundle already shadowed does nothing.
        """
        if self.shadow is None:
            logger.info("shadow_start ignored: this agent runs no shadow models")
            return None
        try:
            offer = BundleOffer(
                bundle_id=command.bundle_id or "",
                target=str(command.args.get("target", "")),
                release=int(command.args.get("release", -1)),
                rollout_id=command.rollout_id,
            )
        except (TypeError, ValueError) as e:
            return self._send_plain("failed", command.bundle_id or "", None, command.rollout_id,
                                    f"shadow: malformed shadow_start: {e}")  # fmt: skip
        if self.shadow.bundle_id == offer.bundle_id:
            return None
        directory = self.shadow.directory
        try:
            ensure_trust_root(self.config)
            with self.verifier.open(offer.target) as signed:
                custom = signed_custom(signed)
                if self._check_signed(offer, custom, self.slots.read_active()):
                    raise InstallError("the bundle is already active: nothing to shadow")
                self._check_disk_budget(signed.length, directory)
                path = signed.download()
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            manifest = self._unpack_checked(path, directory, custom)
            runtime = load_runtime(manifest, directory)
            run_smoke_test(runtime, manifest, directory)
            with contextlib.suppress(OSError):
                path.unlink()
        except REFUSALS as e:
            reason = self._refusal_reason(e)
            logger.warning("shadow refused bundle_id=%s reason=%s", offer.bundle_id, reason)
            shutil.rmtree(directory, ignore_errors=True)
            return self._send_plain("failed", offer.bundle_id, offer.release, offer.rollout_id,
                                    f"shadow: {reason}")  # fmt: skip
        self.shadow.start(ActiveModel.from_manifest(manifest, runtime), rollout_id=offer.rollout_id)
        return None

    def stop_shadow(self, command: DeviceCommand) -> None:
        if self.shadow is not None:
            self.shadow.stop(command.reason or "shadow_stop command")

    def _unpack_checked(self, path: Path, directory: Path, custom: TargetCustom) -> Manifest:
        """Unpack (every member re-checked) and hold the manifest to the signed fields."""
        manifest = unpack_bundle(path, directory)
        if manifest.bundle_id != custom.bundle_id:
            raise InstallError(
                f"manifest bundle_id {manifest.bundle_id} != signed {custom.bundle_id}"
            )
        if manifest.release != custom.release:
            raise InstallError(f"manifest release {manifest.release} != signed {custom.release}")
        if self.config.profile not in manifest.profiles:
            raise InstallError(f"manifest is not built for profile {self.config.profile}")
        return manifest

    def _check_disk_budget(self, length: int, replaced: Path) -> None:
        """Refuse, before any download, a bundle that would not fit (download + unpacked)."""
        data_dir = Path(self.config.data_dir)
        need = 2 * length
        used = tree_size(data_dir) - tree_size(replaced)
        budget = int(self.config.disk_budget_mb * 2**20)
        if used + need > budget:
            raise InstallError(
                f"bundle needs {need / 2**20:.1f} MiB, disk budget leaves "
                f"{max(0, budget - used) / 2**20:.1f} MiB of {self.config.disk_budget_mb:g} MiB"
            )
        free = shutil.disk_usage(data_dir).free
        if need + DISK_MARGIN_BYTES > free:
            raise InstallError(
                f"bundle needs {need / 2**20:.1f} MiB, only {free / 2**20:.1f} MiB free "
                f"(keeping {DISK_MARGIN_BYTES // 2**20} MiB spare)"
            )

    # -- probation, roll-back, recovery -------------------------------------------------

    def _start_probation(self, bundle_id: str) -> None:
        self.stats.start_probation(bundle_id)
        self._probation_started = self.clock()

    def tick(self) -> InstallReport | None:
        """Judge the model on probation: commit it, roll it back, or keep watching."""
        if self._probation_started is None:
            return None
        record = self.journal.read()
        if record is None or record.state != "active":
            self._probation_started = None
            self.stats.start_probation(None)
            return None
        rule = self.config.probation
        window = self.stats.probation_window()
        reason = probation_breach(window, rule)
        if reason is not None:
            logger.warning("probation breached bundle_id=%s reason=%s", record.bundle_id, reason)
            return self._roll_back(record, "breach", reason, rollout_id=record.rollout_id)
        elapsed = self.clock() - self._probation_started
        if elapsed >= rule.seconds or (rule.max_requests and window.count >= rule.max_requests):
            self.journal.fire(record, "probation_passed")
            self._probation_started = None
            self.stats.start_probation(None)
            logger.info(
                "probation passed, committed bundle_id=%s requests=%d errors=%d",
                record.bundle_id,
                window.count,
                window.errors,
            )
            return self._send_plain(
                "committed", record.bundle_id, record.release, record.rollout_id, None
            )
        return None

    def handle_command(self, command: DeviceCommand) -> InstallReport | None:
        """Run a ``DeviceCommand``: ``rollback``, ``shadow_start`` or ``shadow_stop``."""
        if command.command == "shadow_start":
            return self.start_shadow(command)
        if command.command == "shadow_stop":
            self.stop_shadow(command)
            return None
        reason = command.reason or "rollback command"
        active = self.slots.read_active()
        if active is None:
            return self._send_plain("failed", command.bundle_id or "", None, command.rollout_id,
                                    "rollback refused: nothing installed")  # fmt: skip
        record = self.journal.read()
        if record is None or record.bundle_id != active.bundle_id or record.state not in (
            "active", "committed"
        ):  # fmt: skip
            record = JournalRecord(
                bundle_id=active.bundle_id,
                target="",
                release=active.release,
                state="committed",
                slot=active.slot,
            )
        return self._roll_back(record, "rollback", reason, rollout_id=command.rollout_id)

    def _roll_back(
        self, record: JournalRecord, event: JournalEvent, reason: str, *, rollout_id: int | None
    ) -> InstallReport:
        """Record the roll-back, then serve the other slot again; report the outcome."""
        active = self.slots.read_active()
        if active is None or active.bundle_id != record.bundle_id:
            # The switch never happened: the model being served is the old one already.
            if not record.finished:
                self.journal.fire(record, "error" if record.state != "active" else event,
                                  reason=reason)  # fmt: skip
            return self._send_plain("failed", record.bundle_id, record.release, rollout_id, reason)
        other: SlotName = "b" if active.slot == "a" else "a"
        try:
            target = self._load_slot(other)
        except (SlotError, BundleError, AgentError, OSError) as e:
            why = f"cannot roll back to slot {other}: {e}"
            logger.error("roll-back impossible bundle_id=%s reason=%s", record.bundle_id, why)
            return self._send_plain("failed", record.bundle_id, record.release, rollout_id, why)
        self.journal.fire(record, event, reason=reason)
        self._switch_to(other, target)
        self._probation_started = None
        self.stats.start_probation(None)
        logger.warning(
            "rolled back bundle_id=%s to=%s reason=%s", record.bundle_id, target[0].bundle_id,
            reason,
        )  # fmt: skip
        report = self._send_plain(
            "rolled_back", record.bundle_id, record.release, rollout_id, reason
        )
        self.on_active()
        return report

    def _load_slot(self, slot: SlotName) -> tuple[ActiveModel, ActiveRecord]:
        slot_dir = self.slots.slot_dir(slot)
        manifest = read_slot_manifest(slot_dir)
        verify_directory(slot_dir, manifest)
        model = ActiveModel.from_manifest(manifest, load_runtime(manifest, slot_dir))
        record = ActiveRecord(
            slot=slot,
            bundle_id=manifest.bundle_id,
            release=manifest.release,
            model=manifest.model.name,
            model_version=manifest.model.version,
        )
        return model, record

    def _switch_to(self, slot: SlotName, loaded: tuple[ActiveModel, ActiveRecord]) -> None:
        model, record = loaded
        self.slots.write_active(record)
        self.holder.swap(model)

    def _send_plain(
        self,
        state: InstallState,
        bundle_id: str,
        release: int | None,
        rollout_id: int | None,
        reason: str | None,
    ) -> InstallReport:
        message = InstallReport(
            state=state, bundle_id=bundle_id, release=release, rollout_id=rollout_id, reason=reason
        )
        self.report(message)
        return message

    def recover(self) -> InstallReport | None:
        """Start-up: continue or roll back whatever the journal says was under way."""
        record = self.journal.read()
        if record is None:
            return None
        active = self.slots.read_active()
        if record.state == "rolled_back" and active is not None and (
            active.bundle_id == record.bundle_id
        ):  # fmt: skip
            # Recorded but not yet acted on when the power went: finish the switch back.
            other: SlotName = "b" if active.slot == "a" else "a"
            logger.warning("finishing an interrupted roll-back bundle_id=%s", record.bundle_id)
            self._switch_to(other, self._load_slot(other))
            return None
        if record.finished:
            return None
        record = self.journal.note_restart(record)
        action = resume_action(record)
        logger.warning(
            "resuming install bundle_id=%s state=%s action=%s restarts=%d",
            record.bundle_id,
            record.state,
            action,
            record.restarts,
        )
        if action == "reinstall":
            offer = BundleOffer(
                bundle_id=record.bundle_id,
                target=record.target,
                release=record.release,
                rollout_id=record.rollout_id,
            )
            return self.install(offer, resumed=record)
        if action == "probation":
            if active is not None and active.bundle_id == record.bundle_id:
                self._start_probation(record.bundle_id)
                return None
            return self._roll_back(
                record, "breach", "agent restarted before the switch completed",
                rollout_id=record.rollout_id,
            )  # fmt: skip
        reason = f"agent restarted in state {record.state}"
        if record.restarts > 0 and record.state in ("offered", "downloading", "verified", "active"):
            reason = f"install crash loop: {record.restarts} restarts in state {record.state}"
        return self._roll_back(record, "breach" if record.state == "active" else "error", reason,
                               rollout_id=record.rollout_id)  # fmt: skip

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
    """One thread that runs queued offers and commands in order, off the network thread.

    Between jobs (at least every ``tick_s``) it ticks the installer's probation, so
    every change of install state happens on this one thread.
    """

    def __init__(self, installer: Installer, *, tick_s: float = 0.5) -> None:
        self.installer = installer
        self.tick_s = tick_s
        self._queue: queue.Queue[tuple[BundleOffer | DeviceCommand | str, float] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._loop, name="offer-worker", daemon=True)

    def start(self, *, recover: bool = True) -> None:
        """Start the thread; its first job resumes whatever the journal left unfinished."""
        if recover:
            self._queue.put(("recover", time.monotonic()))
        self._thread.start()

    def submit(self, offer: BundleOffer | DeviceCommand) -> None:
        """Queue an offer (its install clock starts now) or a command."""
        self._queue.put((offer, time.monotonic()))

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the job in progress (bounded), drop the rest."""
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.tick_s)
            except queue.Empty:
                item = ("tick", time.monotonic())
            if item is None:
                return
            job, received_at = item
            try:
                if job == "tick":
                    self.installer.tick()
                elif job == "recover":
                    self.installer.recover()
                elif isinstance(job, DeviceCommand):
                    self.installer.handle_command(job)
                elif isinstance(job, BundleOffer):
                    self.installer.install(job, received_at=received_at)
            except Exception:  # top of the worker loop: one bad job must not stop it
                logger.exception("worker job crashed job=%s", type(job).__name__)
                if isinstance(job, BundleOffer):
                    self._report_crash(job)

    def _report_crash(self, offer: BundleOffer) -> None:
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
