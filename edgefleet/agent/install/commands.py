"""The control plane's commands to a device: ``rollback``, ``shadow_start``, ``shadow_stop``
(and ``switch`` / ``drop_staged``, handed to an armed install's inbox).

A roll-back goes through the journal like any install step. A shadow is verified,
unpacked and smoke-tested as for an install, then run beside the active model;
nothing is switched and the journal is not touched.
"""

from __future__ import annotations

import contextlib
import logging
import shutil

from edgefleet.agent.errors import InstallError, SlotError
from edgefleet.agent.inference.runtime import ActiveModel, load_runtime
from edgefleet.agent.inference.split import check_share
from edgefleet.agent.install.checks import (
    REFUSALS,
    ensure_trust_root,
    refusal_reason,
    signed_custom,
)
from edgefleet.agent.install.journal import JournalRecord
from edgefleet.agent.install.memory import check_model_allowed
from edgefleet.agent.install.pipeline import Installer
from edgefleet.agent.install.smoke import run_smoke_test
from edgefleet.messages import BundleOffer, DeviceCommand, InstallReport

logger = logging.getLogger(__name__)


def run_command(installer: Installer, command: DeviceCommand) -> InstallReport | None:
    """Run ``command`` on ``installer``; returns the report it sent, if any.

    A ``rollback`` with no journal record for the active bundle (say, the journal
    was lost) rolls back from a record made up from ``active.json``.

    Returns:
        The roll-back's report (``rolled_back``, or ``failed`` when nothing is
        installed or the previous slot is unusable), a refused ``shadow_start``'s
        ``failed`` report, or None.
    """
    if command.command == "shadow_start":
        return start_shadow(installer, command)
    if command.command == "shadow_stop":
        stop_shadow(installer, command)
        return None
    if command.command in ("switch", "drop_staged"):
        installer.orders.post(command)  # for the armed install (``switch_order``)
        return None
    reason = command.reason or "rollback command"
    name = model_of_command(installer, command)
    if name is None:
        why = "rollback refused: no hosted model serves that bundle"
        return installer.send_report("failed", command.bundle_id or "", None, command.rollout_id,
                                     why)  # fmt: skip
    installer.select(name)
    active = installer.slots.read_active()
    if active is None:
        return installer.send_report("failed", command.bundle_id or "", None, command.rollout_id,
                                     "rollback refused: nothing installed")  # fmt: skip
    record = installer.journal.read()
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
    return installer.roll_back(record, "rollback", reason, rollout_id=command.rollout_id)


def model_of_command(installer: Installer, command: DeviceCommand) -> str | None:
    """The hosted model a roll-back is about: the one whose active bundle, or whose
    journal's install, is ``command.bundle_id``; the only one when the command names no
    bundle (or when a single model is hosted, as a one-model agent always did)."""
    hosted = installer.hosted()
    for name in hosted:
        state = installer.select(name)
        try:
            active = state.slots.read_active()
        except SlotError:
            active = None
        record = state.journal.read()
        if command.bundle_id and command.bundle_id in (
            active.bundle_id if active else None,
            record.bundle_id if record else None,
        ):
            return name
    return hosted[0] if len(hosted) == 1 else None


def start_shadow(installer: Installer, command: DeviceCommand) -> InstallReport | None:
    """Verify, unpack and smoke-test a bundle as for an install, then shadow it.

    A failure is reported (``failed``, reason prefixed ``shadow:``) and the active
    model is unaffected. A repeated ``shadow_start`` for the bundle already shadowed
    does nothing.

    Args:
        installer: whose verifier, checks and shadow runner are used.
        command: a ``shadow_start``; its args carry the offer's ``target`` and
            ``release``.

    Returns:
        The ``failed`` report sent, or None (shadowing, already shadowing, or this
        agent runs no shadow models).
    """
    shadow = installer.shadow
    if shadow is None:
        logger.info("shadow_start ignored: this agent runs no shadow models")
        return None
    try:
        offer = BundleOffer(
            bundle_id=command.bundle_id or "",
            target=str(command.args.get("target", "")),
            release=int(command.args.get("release", -1)),
            rollout_id=command.rollout_id,
        )
        split = split_of(command)
    except (TypeError, ValueError) as e:
        return installer.send_report("failed", command.bundle_id or "", None, command.rollout_id,
                                     f"shadow: malformed shadow_start: {e}")  # fmt: skip
    if shadow.bundle_id == offer.bundle_id:
        if split is not None:
            shadow.set_split(*split)
        return None
    directory = shadow.directory
    try:
        ensure_trust_root(installer.config)
        with installer.verifier.open(offer.target) as signed:
            custom = signed_custom(signed)
            if custom.model is None:
                raise InstallError("signed target names no model")
            check_model_allowed(installer.config, custom.model)
            installer.select(custom.model)
            if installer.check_signed(offer, custom, installer.slots.read_active()):
                raise InstallError("the bundle is already active: nothing to shadow")
            installer.check_disk_budget(signed.length, directory, use="shadow")
            path = signed.download()
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        manifest = installer.unpack_checked(path, directory, custom)
        runtime = load_runtime(manifest, directory)
        run_smoke_test(runtime, manifest, directory)
        with contextlib.suppress(OSError):
            path.unlink()
    except REFUSALS as e:
        reason = refusal_reason(e)
        logger.warning("shadow refused bundle_id=%s reason=%s", offer.bundle_id, reason)
        shutil.rmtree(directory, ignore_errors=True)
        return installer.send_report("failed", offer.bundle_id, offer.release, offer.rollout_id,
                                     f"shadow: {reason}")  # fmt: skip
    shadow.start(
        ActiveModel.from_manifest(manifest, runtime), rollout_id=offer.rollout_id, split=split
    )
    return None


def split_of(command: DeviceCommand) -> tuple[int, float] | None:
    """A ``shadow_start``'s ``split`` argument, ``{"experiment_id", "share"}``: the
    experiment in ``requests`` mode the shadow answers a share of requests for.

    Raises:
        ValueError: the argument is there but not that shape.
    """
    split = command.args.get("split")
    if split is None:
        return None
    if not isinstance(split, dict):
        raise ValueError("split must be an object")
    experiment_id = split.get("experiment_id")
    if isinstance(experiment_id, bool) or not isinstance(experiment_id, int):
        raise ValueError("split.experiment_id must be an integer")
    return experiment_id, check_share(split.get("share"))


def stop_shadow(installer: Installer, command: DeviceCommand) -> None:
    """Discard the shadow model, if any, after publishing its last window."""
    if installer.shadow is not None:
        installer.shadow.stop(command.reason or "shadow_stop command")
