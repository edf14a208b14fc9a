"""Offer -> install pipeline: verify, download, unpack, smoke test, switch, probation.

Every step goes through the install journal (``edgefleet.agent.install.journal``)
before it acts, so a power cut at any point resumes or rolls back on the next start
(``edgefleet.agent.install.recovery``). The steps and the reports they send::

    downloading  TUF refresh; the signed target's custom fields are checked
                 (bundle id, release counter, profile, hardware) and the disk
                 budget before any download; a broken download resumes
    verified     the bundle file matched its signed length and SHA-256
    staged       unpacked into the inactive slot, every member re-checked
    smoke_tested the new model loaded and answered its smoke test
    deferred     the switch waits: the update lock is held, or the device is outside
                 the offer's maintenance window (``deferral``); reported again when
                 the reason changes, and the old model keeps serving
    active       active.json switched, server swapped: probation
    rolled_back  probation breached its health rule, or a rollback command: the
                 previous slot serves again
    failed       any step refused: the current model keeps serving, active.json untouched

The signed metadata is verified by a ``Verifier`` (``edgefleet.agent.verification``:
normally a short-lived child process running python-tuf; the offer is a hint, never
evidence); what it must prove is in ``edgefleet.agent.install.checks``.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgefleet import schema
from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import AgentError, InstallError, SlotError
from edgefleet.agent.inference.runtime import (
    ActiveModel,
    ModelHolder,
    ModelRuntime,
    ModelTable,
    load_runtime,
)
from edgefleet.agent.install.checks import (
    REFUSALS,
    TargetCustom,
    check_signed,
    ensure_trust_root,
    refusal_reason,
    signed_custom,
    unpack_checked,
)
from edgefleet.agent.install.deferral import SwitchGate, UpdateLock
from edgefleet.agent.install.disk import check_disk_budget
from edgefleet.agent.install.journal import Journal, JournalRecord
from edgefleet.agent.install.layout import hosted_models, model_dir
from edgefleet.agent.install.memory import check_memory_budget, check_model_allowed
from edgefleet.agent.install.probation import Probation
from edgefleet.agent.install.shadow import ShadowRunner
from edgefleet.agent.install.slots import ActiveRecord, SlotName, SlotStore, read_slot_manifest
from edgefleet.agent.install.smoke import run_smoke_test
from edgefleet.agent.install.switch_order import ArmedWait, OrderInbox, SwitchOrder
from edgefleet.agent.telemetry.counters import InferenceStats
from edgefleet.agent.verification.transport import Verifier
from edgefleet.bundle import Manifest, verify_directory
from edgefleet.errors import BundleError, WindowError
from edgefleet.maintenance import check_window
from edgefleet.messages import BundleOffer, InstallReport
from edgefleet.states.install import InstallEvent, InstallState

logger = logging.getLogger(__name__)

ReportSink = Callable[[InstallReport], None]

DEFER_POLL_S = 0.25
"""How often a deferred install looks at the lock and the window again."""


@dataclass
class ModelState:
    """One hosted model's own install state: slots, journal, probation, holder."""

    name: str
    slots: SlotStore
    journal: Journal
    probation: Probation
    holder: ModelHolder


class Installer:
    """Runs installs, roll-backs and probation through the journal; never raises for a refusal.

    The agent hosts several models, each with its own ``ModelState`` under
    ``models/<name>/`` (``edgefleet.agent.install.layout``). A job first selects the
    model it is about (``select``: an offer's model comes from its signed target);
    ``slots``, ``journal``, ``probation`` and ``holder`` are then that model's, so an
    install of one model never reads or writes another's. Commands
    (``edgefleet.agent.install.commands``) and start-up recovery
    (``edgefleet.agent.install.recovery``) drive it too; all of it runs on the one
    ``OfferWorker`` thread, which is what makes the selection safe.
    """

    def __init__(
        self,
        *,
        config: AgentConfig,
        holder: ModelTable | ModelHolder,
        verifier: Verifier,
        report: ReportSink,
        on_active: Callable[[], None] = lambda: None,
        machine: str | None = None,
        stats: InferenceStats | None = None,
        clock: Callable[[], float] = time.monotonic,
        shadow: ShadowRunner | None = None,
        lock: UpdateLock | None = None,
    ) -> None:
        self.config = config
        self.models = holder if isinstance(holder, ModelTable) else ModelTable.single(holder)
        self.verifier = verifier
        self.report = report
        self.on_active = on_active
        self.machine = machine or platform.machine()
        self.stats = stats or InferenceStats()
        self.clock = clock
        self.shadow = shadow
        self._states: dict[str, ModelState] = {}
        self.state: ModelState | None = None
        """The model the job under way is about (``select``)."""
        self.gate = SwitchGate(lock or UpdateLock(config.data_dir))
        self.orders = OrderInbox()
        """``switch`` / ``drop_staged`` commands for an armed install (atomic rollouts)."""
        self.stopping = threading.Event()
        """Set by the worker when the agent stops: a deferred install stops waiting and
        stays ``deferred`` in the journal, to resume on the next start."""
        self.preempted: Callable[[str], bool] = lambda _bundle_id: False
        """Whether other work (an offer of another bundle, a command) is queued behind
        the deferred install of this bundle id: the wait gives way to it."""

    # -- the hosted models -----------------------------------------------------------------

    def select(self, name: str) -> ModelState:
        """Make model ``name`` the one the job under way is about (created on first use).

        Raises:
            InstallError: ``name`` is not usable as a model directory.
        """
        state = self._states.get(name)
        if state is None:
            directory = model_dir(self.config.data_dir, name)
            state = ModelState(
                name=name,
                slots=SlotStore(directory),
                journal=Journal(directory),
                probation=Probation(self.stats, self.config.probation, self.clock),
                holder=self.models.holder(name),
            )
            self._states[name] = state
        self.state = state
        return state

    def hosted(self) -> list[str]:
        """Every model with state on disk or selected since start, by name."""
        return sorted(set(hosted_models(self.config.data_dir)) | set(self._states))

    def _selected(self) -> ModelState:
        if self.state is None:
            raise InstallError("no model selected")  # a bug in the caller, not the bundle
        return self.state

    @property
    def slots(self) -> SlotStore:
        return self._selected().slots

    @property
    def journal(self) -> Journal:
        return self._selected().journal

    @property
    def probation(self) -> Probation:
        return self._selected().probation

    @property
    def holder(self) -> ModelHolder:
        return self._selected().holder

    def model_sizes(self) -> dict[str, int]:
        """Bytes of each hosted model's active artifact (its memory estimate)."""
        sizes: dict[str, int] = {}
        for name in self.hosted():
            slots = SlotStore(model_dir(self.config.data_dir, name))
            try:
                record = slots.read_active()
                if record is None:
                    continue
                slot_dir = slots.slot_dir(record.slot)
                sizes[name] = (slot_dir / read_slot_manifest(slot_dir).artifact).stat().st_size
            except (SlotError, BundleError, OSError):
                continue
        return sizes

    # -- install ---------------------------------------------------------------------

    def install(
        self,
        offer: BundleOffer,
        *,
        received_at: float | None = None,
        resumed: JournalRecord | None = None,
    ) -> InstallReport:
        """Install ``offer`` through the journal; returns the final report it sent.

        A refusal (any of ``checks.REFUSALS``) is reported, never raised: before the
        switch the current model keeps serving; after it (a refusal once ``active``
        was recorded) the install is rolled back.

        Args:
            offer: the bundle to install.
            received_at: when the offer arrived (``time.monotonic``); the install's
                reported duration counts from it.
            resumed: the unfinished journal record this install continues, if any
                (its restart count carries over).

        Returns:
            The last report sent: ``active`` (also when the bundle already served),
            ``failed``, or ``rolled_back`` for a refusal after the switch.
        """
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

        self.state = None  # selected from the signed target, in _run
        send("downloading")
        try:
            return self._run(offer, send, started, resumed)
        except REFUSALS as e:
            reason = refusal_reason(e)
            logger.warning(
                "install failed bundle_id=%s release=%s reason=%s", offer.bundle_id, release, reason
            )
            current = self.journal.read() if self.state is not None else None
            if current is not None and current.bundle_id != offer.bundle_id:
                current = None  # refused before this install was recorded
            if current is not None and current.state == "active":
                return self.roll_back(current, "error", reason, rollout_id=offer.rollout_id)
            if current is not None and not current.finished:
                self.journal.fire(current, "error", reason=reason)
            return send("failed", reason=reason)

    def _run(
        self,
        offer: BundleOffer,
        send: Callable[..., InstallReport],
        started: float,
        resumed: JournalRecord | None,
    ) -> InstallReport:
        ensure_trust_root(self.config)
        if offer.maintenance_window is not None:
            try:
                check_window(offer.maintenance_window)
            except WindowError as e:  # an agent without this time zone, say
                raise InstallError(f"maintenance window unusable here: {e}") from e
        with self.verifier.open(offer.target) as signed:
            custom = signed_custom(signed)
            if custom.model is None:
                raise InstallError("signed target names no model")
            # The signed target says which model this is: from here on the install
            # touches that model's slots and journal only.
            check_model_allowed(self.config, custom.model)
            self.select(custom.model)
            record = self.journal.begin(
                JournalRecord(
                    bundle_id=offer.bundle_id,
                    target=offer.target,
                    release=offer.release,
                    rollout_id=offer.rollout_id,
                    restarts=resumed.restarts if resumed else 0,
                    maintenance_window=offer.maintenance_window,
                    atomic=offer.atomic,
                )
            )
            active = self.slots.read_active()
            if self.check_signed(offer, custom, active):
                logger.info("bundle already active bundle_id=%s", offer.bundle_id)
                self.journal.fire(record, "error", reason="already active")
                return send("active", install_seconds=time.monotonic() - started)
            slot = self.slots.inactive_slot(active)
            check_memory_budget(self.config, custom.model, signed.length, self.model_sizes())
            self.check_disk_budget(signed.length, self.slots.slot_dir(slot), use="slots")

            record = self.journal.fire(record, "start")
            path = signed.download()
        record = self.journal.fire(record, "downloaded")
        send("verified")

        slot_dir = self.slots.prepare_slot(slot)
        manifest = self.unpack_checked(path, slot_dir, custom)
        record = self.journal.fire(record, "unpacked", slot=slot)
        send("staged")

        # Loaded (and smoke-tested) before the switch: the swap itself is one assignment.
        runtime = load_runtime(manifest, slot_dir)
        run_smoke_test(runtime, manifest, slot_dir)
        record = self.journal.fire(record, "smoke_passed")
        send("smoke_tested")
        return self._switch_when_clear(record, slot, manifest, runtime, send, started, path)

    def resume_deferred(self, record: JournalRecord) -> InstallReport | None:
        """Continue a ``deferred`` install after a restart: re-verify the staged slot and
        wait on (``RESUME``'s ``await_switch``).

        Returns:
            The last report sent, as ``install``; a slot that no longer checks out is
            rolled back (``failed``: nothing was switched).
        """
        started = time.monotonic()

        def send(state: InstallState, **extra: object) -> InstallReport:
            message = InstallReport(
                state=state,
                bundle_id=record.bundle_id,
                release=record.release,
                rollout_id=record.rollout_id,
                **extra,  # type: ignore[arg-type]
            )
            self.report(message)
            return message

        if record.slot not in ("a", "b"):
            return self.roll_back(record, "error", "deferred install names no slot",
                                  rollout_id=record.rollout_id)  # fmt: skip
        slot: SlotName = record.slot  # type: ignore[assignment]
        try:
            slot_dir = self.slots.slot_dir(slot)
            manifest = read_slot_manifest(slot_dir)
            verify_directory(slot_dir, manifest)
            if manifest.bundle_id != record.bundle_id:
                raise SlotError(f"slot {slot} holds {manifest.bundle_id}, not {record.bundle_id}")
            runtime = load_runtime(manifest, slot_dir)
        except REFUSALS as e:
            reason = f"staged slot unusable after restart: {refusal_reason(e)}"
            return self.roll_back(record, "error", reason, rollout_id=record.rollout_id)
        # The slot checks out: waiting is not a crash loop, however often the device
        # restarts while the lock is held or the window is closed.
        record = self.journal.clear_restarts(record)
        try:
            return self._switch_when_clear(record, slot, manifest, runtime, send, started, None)
        except REFUSALS as e:  # given up for newer work, or the switch itself refused
            current = self.journal.read() or record
            return self.roll_back(current, "error", refusal_reason(e),
                                  rollout_id=record.rollout_id)  # fmt: skip

    def _switch_when_clear(
        self,
        record: JournalRecord,
        slot: SlotName,
        manifest: Manifest,
        runtime: ModelRuntime,
        send: Callable[..., InstallReport],
        started: float,
        path: Path | None,
    ) -> InstallReport:
        """Wait while the gate holds the switch (state ``deferred``), or, in an atomic
        rollout, for the signed switch order and its moment (state ``armed``; the lock and
        the window are not consulted then: the cohort's moment is the order's), then switch.

        Raises:
            InstallError: other work was queued behind the deferred install; or the armed
                install's staged bundle is to be dropped (``switch_order.ArmedWait``).
        """
        order: SwitchOrder | None = None
        if record.atomic:
            armed = ArmedWait(
                journal=self.journal,
                inbox=self.orders,
                verifier=self.verifier,
                stopping=self.stopping,
                preempted=self.preempted,
            )
            record, order = armed.run(record, send)
            if order is None:
                logger.info("agent stopping, install stays armed bundle_id=%s", record.bundle_id)
                return send("armed", reason="agent stopping")
        window = record.maintenance_window
        hold = None if record.atomic else self.gate.hold_reason(window)
        if hold is not None:
            if record.state != "deferred":  # (a resumed install is deferred already)
                record = self.journal.fire(record, "defer", reason=hold)
            deferred = send("deferred", reason=hold)
            logger.info("switch deferred bundle_id=%s reason=%s", record.bundle_id, hold)
            while hold is not None:
                if self.stopping.wait(DEFER_POLL_S):
                    logger.info("agent stopping, install stays deferred bundle_id=%s",
                                record.bundle_id)  # fmt: skip
                    return deferred
                if self.preempted(record.bundle_id) and not self.stopping.is_set():
                    raise InstallError(f"deferred install given up for newer work ({hold})")
                now_hold = self.gate.hold_reason(window)
                if now_hold is not None and now_hold != hold:
                    deferred = send("deferred", reason=now_hold)
                hold = now_hold
            logger.info("switch no longer deferred bundle_id=%s", record.bundle_id)

        previous = self.slots.read_active()
        record = self.journal.fire(
            record,
            "switched",
            previous=schema.to_builtins(previous) if previous else None,
        )
        self.slots.write_active(_active_record(slot, manifest))
        switched_at = time.time()
        self.serve(ActiveModel.from_manifest(manifest, runtime))
        if self.shadow is not None and self.shadow.bundle_id == manifest.bundle_id:
            self.shadow.stop("the shadowed bundle is now installed")
        self.probation.start(manifest.bundle_id)
        elapsed = time.monotonic() - started
        logger.info(
            "bundle active bundle_id=%s release=%d slot=%s install_seconds=%.2f",
            manifest.bundle_id,
            manifest.release,
            slot,
            elapsed,
        )
        timing: dict[str, float] = {}
        if order is not None:
            timing = {
                "switched_at": switched_at,
                "switch_late_s": max(0.0, switched_at - order.switch_at),
            }
        final = send("active", install_seconds=elapsed, **timing)
        self.on_active()
        if path is not None:
            with contextlib.suppress(OSError):  # only a cache; TUF re-downloads
                path.unlink()
        self.tick()
        return final

    # -- the checks, with this device's settings -------------------------------------------

    def check_signed(
        self, offer: BundleOffer, custom: TargetCustom, active: ActiveRecord | None
    ) -> bool:
        """``checks.check_signed`` for this device; True when the bundle already serves.

        Raises:
            InstallError: the signed fields rule the bundle out here.
        """
        return check_signed(
            offer,
            custom,
            active,
            serving=self.holder.current(),
            profile=self.config.profile,
            machine=self.machine,
        )

    def check_disk_budget(self, length: int, replaced: Path, *, use: str = "slots") -> None:
        """``disk.check_disk_budget`` for this device's data dir and ``[disk]`` budget.

        Args:
            length: the bundle's signed length, in bytes.
            replaced: the directory the bundle will replace (a slot, or the shadow's).
            use: the share it unpacks into (``slots`` or ``shadow``).

        Raises:
            DiskBudgetError: the bundle would not fit; the reason names use and budget.
        """
        check_disk_budget(self.config, length, replaced, use=use)

    def unpack_checked(self, path: Path, directory: Path, custom: TargetCustom) -> Manifest:
        """``checks.unpack_checked`` for this device's profile.

        Raises:
            BundleError: a member does not match the bundle's manifest.
            InstallError: the manifest disagrees with the signed fields or the profile.
        """
        manifest = unpack_checked(path, directory, custom, self.config.profile)
        if custom.model is not None and manifest.model.name != custom.model:
            raise InstallError(f"manifest model {manifest.model.name!r} != signed {custom.model!r}")
        return manifest

    # -- probation and roll-back -----------------------------------------------------------

    def tick(self) -> InstallReport | None:
        """Judge each model on probation: commit it, roll it back, or keep watching.

        Returns:
            The report sent (``committed``, ``rolled_back``, or ``failed`` when the
            roll-back was impossible), or None while the verdict is open or nothing
            is on probation.
        """
        selected, reports = self.state, []
        try:
            for name in sorted(self._states):
                self.select(name)
                report = self._tick_selected()
                if report is not None:
                    reports.append(report)
        finally:
            self.state = selected
        return reports[-1] if reports else None

    def _tick_selected(self) -> InstallReport | None:
        if not self.probation.running:
            return None
        record = self.journal.read()
        if record is None or record.state != "active":
            self.probation.stop()
            return None
        verdict = self.probation.verdict()
        if verdict is None:
            return None
        if verdict[0] == "breach":
            reason = verdict[1]
            logger.warning("probation breached bundle_id=%s reason=%s", record.bundle_id, reason)
            return self.roll_back(record, "breach", reason, rollout_id=record.rollout_id)
        window = verdict[1]
        self.journal.fire(record, "probation_passed")
        self.probation.stop()
        logger.info(
            "probation passed, committed bundle_id=%s requests=%d errors=%d",
            record.bundle_id,
            window.count,
            window.errors,
        )
        return self.send_report(
            "committed", record.bundle_id, record.release, record.rollout_id, None
        )

    def roll_back(
        self, record: JournalRecord, event: InstallEvent, reason: str, *, rollout_id: int | None
    ) -> InstallReport:
        """Record the roll-back, then serve the other slot again; report the outcome.

        Never raises for a previous slot that cannot be loaded: that is reported as
        ``failed`` and the current model keeps serving.

        Args:
            record: the journal's record of the install rolled back.
            event: the journal event that ends it: ``breach`` (probation, or a
                restart after the switch), ``rollback`` (a command), ``error``...
            reason: why, for the journal and the report.
            rollout_id: the rollout the report names.

        Returns:
            The report sent: ``rolled_back``, or ``failed`` when the switch had not
            happened (nothing to undo) or the previous slot is unusable.
        """
        active = self.slots.read_active()
        if active is None or active.bundle_id != record.bundle_id:
            # The switch never happened: the model being served is the old one already.
            if not record.finished:
                self.journal.fire(record, "error" if record.state != "active" else event,
                                  reason=reason)  # fmt: skip
            return self.send_report("failed", record.bundle_id, record.release, rollout_id, reason)
        other = self.slots.inactive_slot(active)  # the slot served before
        try:
            target = self.load_slot(other)
        except (SlotError, BundleError, AgentError, OSError) as e:
            why = f"cannot roll back to slot {other}: {e}"
            logger.error("roll-back impossible bundle_id=%s reason=%s", record.bundle_id, why)
            return self.send_report("failed", record.bundle_id, record.release, rollout_id, why)
        self.journal.fire(record, event, reason=reason)
        self.switch_to(other, target)
        self.probation.stop()
        logger.warning(
            "rolled back bundle_id=%s to=%s reason=%s", record.bundle_id, target[0].bundle_id,
            reason,
        )  # fmt: skip
        report = self.send_report(
            "rolled_back", record.bundle_id, record.release, rollout_id, reason
        )
        self.on_active()
        return report

    def load_slot(self, slot: SlotName) -> tuple[ActiveModel, ActiveRecord]:
        """The model in ``slot``, re-verified against its manifest and loaded.

        Returns:
            The loaded model and the ``active.json`` record for serving it from ``slot``.

        Raises:
            BundleError: the slot's manifest or a file in it is missing or altered.
            AgentError: the runtime cannot load the model (``RuntimeLoadError``).
            OSError: the slot cannot be read.
        """
        slot_dir = self.slots.slot_dir(slot)
        manifest = read_slot_manifest(slot_dir)
        verify_directory(slot_dir, manifest)
        model = ActiveModel.from_manifest(manifest, load_runtime(manifest, slot_dir))
        return model, _active_record(slot, manifest)

    def switch_to(self, slot: SlotName, loaded: tuple[ActiveModel, ActiveRecord]) -> None:
        """Serve ``loaded`` (``load_slot(slot)``'s result): ``active.json`` first, then swap."""
        model, record = loaded
        self.slots.write_active(record)
        self.serve(model)

    def serve(self, model: ActiveModel) -> None:
        """Swap ``model`` in for its name, then wait for the replaced one to drain.

        New requests get ``model`` from the swap on; requests already running finish on
        the old one, which is let go once the last of them has answered (bounded by
        ``DRAIN_TIMEOUT_S``: a model call that never returns is logged, not waited for).
        """
        holder = self.holder
        previous = holder.swap(model)
        if previous is not None and not holder.drain(previous):
            logger.warning(
                "replaced model still busy after drain timeout bundle_id=%s inflight=%d",
                previous.bundle_id,
                holder.inflight(previous),
            )

    def send_report(
        self,
        state: InstallState,
        bundle_id: str,
        release: int | None,
        rollout_id: int | None,
        reason: str | None,
    ) -> InstallReport:
        """Send (and return) a report that names no install timing."""
        message = InstallReport(
            state=state, bundle_id=bundle_id, release=release, rollout_id=rollout_id, reason=reason
        )
        self.report(message)
        return message


def _active_record(slot: SlotName, manifest: Manifest) -> ActiveRecord:
    """``active.json`` once ``slot``, holding ``manifest``'s bundle, serves."""
    return ActiveRecord(
        slot=slot,
        bundle_id=manifest.bundle_id,
        release=manifest.release,
        model=manifest.model.name,
        model_version=manifest.model.version,
    )
