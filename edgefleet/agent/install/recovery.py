"""Start-up: continue or roll back whatever the journal says was under way.

``RESUME`` (``edgefleet.states.install``) says where a saved state continues; every
other unfinished state rolls back, and so does any state once the journal has counted
more restarts in it than ``MAX_RESTARTS`` (a crash loop).
"""

from __future__ import annotations

import logging

from edgefleet.agent.errors import AgentError, SlotError
from edgefleet.agent.install.journal import resume_action
from edgefleet.agent.install.layout import migrate_single_model
from edgefleet.agent.install.pipeline import Installer
from edgefleet.errors import BundleError
from edgefleet.messages import BundleOffer, InstallReport
from edgefleet.states.install import RESUME, abort_event

logger = logging.getLogger(__name__)


def recover_all(installer: Installer) -> list[InstallReport]:
    """``recover`` every hosted model in turn (after moving a one-model layout into
    ``models/<name>/``); one model's failure to recover never stops another's.

    Returns:
        The reports sent.
    """
    try:
        migrate_single_model(installer.config.data_dir)
    except OSError as e:
        logger.error("one-model state not migrated reason=%s", e)
    reports = []
    for name in installer.hosted():
        installer.select(name)
        try:
            report = recover(installer)
        except (SlotError, BundleError, AgentError, OSError) as e:
            logger.error("model not recovered model=%s reason=%s", name, e)
            continue
        if report is not None:
            reports.append(report)
    return reports


def recover(installer: Installer) -> InstallReport | None:
    """Continue or roll back the selected model's unfinished install; returns the report
    sent, if any.

    A roll-back recorded but not carried out (a power cut in between) is finished
    here, without a report.

    Returns:
        The report of the resumed install or roll-back; None when nothing was left
        unfinished, or when probation simply continues.

    Raises:
        SlotError, BundleError, AgentError, OSError: finishing an interrupted
            roll-back found the previous slot unusable (see ``Installer.load_slot``).
    """
    journal = installer.journal
    record = journal.read()
    if record is None:
        return None
    active = installer.slots.read_active()
    if record.state == "rolled_back" and active is not None and (
        active.bundle_id == record.bundle_id
    ):  # fmt: skip
        # Recorded but not yet acted on when the power went: finish the switch back.
        other = installer.slots.inactive_slot(active)  # the slot served before
        logger.warning("finishing an interrupted roll-back bundle_id=%s", record.bundle_id)
        installer.switch_to(other, installer.load_slot(other))
        return None
    if record.finished:
        return None
    record = journal.note_restart(record)
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
            maintenance_window=record.maintenance_window,
        )
        return installer.install(offer, resumed=record)
    if action == "await_switch":
        # Staged, smoke-tested and waiting for the update lock or the window.
        return installer.resume_deferred(record)
    if action == "probation":
        if active is not None and active.bundle_id == record.bundle_id:
            installer.probation.start(record.bundle_id)
            return None
        return installer.roll_back(
            record, "breach", "agent restarted before the switch completed",
            rollout_id=record.rollout_id,
        )  # fmt: skip
    reason = f"agent restarted in state {record.state}"
    if record.restarts > 0 and record.state in RESUME:
        reason = f"install crash loop: {record.restarts} restarts in state {record.state}"
    return installer.roll_back(record, abort_event(record.state), reason,
                               rollout_id=record.rollout_id)  # fmt: skip
