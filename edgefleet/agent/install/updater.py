"""The install worker: one thread that runs offers, commands and probation in turn.

Offers and commands arrive on the network thread and are queued here; the worker
runs them one at a time, off the network thread, and between them ticks the
probation of a freshly switched model, so every change of install state happens on
this one thread. What each job does lives beside this module, by concern:

    pipeline.py   Installer: offer -> verified -> staged -> active, roll-back
    checks.py     what a bundle's signed fields and manifest must prove
    disk.py       the disk budget checked before any download
    probation.py  the health rule's verdict on a freshly switched model
    deferral.py   the update lock and maintenance window a staged switch waits for
    switch_order.py the signed fleet-wide switch order an armed install waits for
    commands.py   rollback, shadow_start and shadow_stop
    recovery.py   start-up: resume or roll back what the journal left unfinished
    selfupdate.py offers of kind ``agent``: the agent's own release, then a handover
    journal.py    the journal every step records itself in before it acts

``Installer``, ``OfferWorker`` and ``ensure_trust_root`` are what the daemon and the
fleet simulator build an agent from.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time

from edgefleet.agent.install.checks import ensure_trust_root
from edgefleet.agent.install.commands import run_command
from edgefleet.agent.install.pipeline import Installer, ReportSink
from edgefleet.agent.install.recovery import recover_all
from edgefleet.agent.install.selfupdate import SelfUpdater
from edgefleet.messages import BundleOffer, DeviceCommand, InstallReport

__all__ = ["Installer", "OfferWorker", "ReportSink", "ensure_trust_root"]

logger = logging.getLogger(__name__)


class OfferWorker:
    """One thread that runs queued offers and commands in order, off the network thread.

    Between jobs (at least every ``tick_s``) it ticks the installer's probation, so
    every change of install state happens on this one thread.
    """

    def __init__(
        self,
        installer: Installer,
        *,
        tick_s: float = 0.5,
        self_updater: SelfUpdater | None = None,
    ) -> None:
        self.installer = installer
        self.self_updater = self_updater
        """Takes offers of kind ``agent`` (the agent's own releases); without it they fail."""
        self.tick_s = tick_s
        self._queue: queue.Queue[tuple[BundleOffer | DeviceCommand | str, float] | None] = (
            queue.Queue()
        )
        self._thread = threading.Thread(target=self._loop, name="offer-worker", daemon=True)
        self.job_lock = threading.Lock()
        """Held while a job (not a probation tick) runs: garbage collection
        (``edgefleet.agent.storage``) waits for it, so it never removes what a job creates."""
        installer.preempted = self._preempted

    def _preempted(self, bundle_id: str) -> bool:
        """Whether work other than another offer of ``bundle_id`` waits in the queue.

        Called by a deferred install of ``bundle_id``: offers of that same bundle (a
        re-offer on reconnect) are dropped, since the install under way answers them;
        anything else makes the deferred install give way.
        """
        with self._queue.mutex:
            items = self._queue.queue
            duplicates = [
                item
                for item in items
                if item is not None
                and isinstance(item[0], BundleOffer)
                and item[0].bundle_id == bundle_id
            ]
            for item in duplicates:
                items.remove(item)
            return bool(items)

    def start(self, *, recover: bool = True) -> None:
        """Start the thread; its first job resumes whatever the journal left unfinished."""
        if recover:
            self._queue.put(("recover", time.monotonic()))
        self._thread.start()

    def submit(self, offer: BundleOffer | DeviceCommand) -> None:
        """Queue an offer (its install clock starts now) or a command."""
        self._queue.put((offer, time.monotonic()))

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the job in progress (bounded), drop the rest.

        Args:
            timeout: seconds to wait for the job in progress; the thread is a daemon,
                so one still running then ends with the process.
        """
        self.installer.stopping.set()  # a deferred install stops waiting, stays deferred
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
            with self.job_lock if job != "tick" else contextlib.nullcontext():
                self._run_job(job, received_at)

    def _run_job(self, job: BundleOffer | DeviceCommand | str, received_at: float) -> None:
        try:
            if job == "tick":
                self.installer.tick()
            elif job == "recover":
                recover_all(self.installer)
            elif isinstance(job, DeviceCommand):
                run_command(self.installer, job)
            elif isinstance(job, BundleOffer) and job.kind == "agent":
                self._install_agent(job, received_at)
            elif isinstance(job, BundleOffer):
                self.installer.install(job, received_at=received_at)
        except Exception:  # top of the worker loop: one bad job must not stop it
            logger.exception("worker job crashed job=%s", type(job).__name__)
            if isinstance(job, BundleOffer):
                self._report_crash(job)

    def _install_agent(self, offer: BundleOffer, received_at: float) -> None:
        if self.self_updater is None:
            reason = "this agent does not update itself"
            self.installer.send_report(
                "failed", offer.bundle_id, offer.release, offer.rollout_id, reason
            )
            return
        self.self_updater.install(offer, received_at=received_at)

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
