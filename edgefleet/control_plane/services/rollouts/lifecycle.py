"""A rollout's life: creating it, and the operator actions that move it.

Every change of ``Rollout.state`` goes through the contract's transition table
(``edgefleet.states.rollout.TRANSITIONS``); a move the table refuses is a
``ConflictError`` (HTTP 409). Wave mechanics live in ``waves``; the orchestrator
moves a running rollout from wave to wave.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.control_plane.core.tables import (
    Bundle,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    RolloutSelector,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.rollouts.deadlines import arm_deadlines
from edgefleet.control_plane.services.rollouts.outbox import (
    FleetPublisher,
    Outbox,
    device_offer,
    publish_outbox,
)
from edgefleet.control_plane.services.rollouts.selection import (
    select_devices,
    supersede_older,
    wave_sizes,
)
from edgefleet.control_plane.services.rollouts.waves import end_rollout, start_wave, wave_rows
from edgefleet.errors import TransitionError
from edgefleet.states.install import RETRYABLE_DEVICE_STATES, TIMED_OUT
from edgefleet.states.rollout import OPERATOR_ACTIONS, next_rollout_state

logger = logging.getLogger(__name__)


def create_rollout(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout_in: RolloutCreate,
    actor: str = "system",
) -> Rollout:
    """Create a rollout of ``rollout_in.bundle_id``; unless a draft, offer wave 1 now.

    The devices are split into waves in selection order (online first), older
    rollouts give up the devices they had not finished, and the offers go out
    after the commit so that the devices' first reports find the rollout.

    Args:
        session: the caller's session; committed here.
        publisher: sends wave 1's offers.
        rollout_in: the bundle, selector, waves, gates, strategy and mode.
        actor: who creates it, for the audit log.

    Returns:
        The rollout as committed: ``in_progress``, or ``draft`` when
        ``rollout_in.start`` is false.

    Raises:
        NotFoundError: the bundle does not exist.
        InvalidRequestError: the selector finds no devices or is invalid (see
            ``selection.select_devices``), or a wave spec is invalid.
    """
    bundle = session.get(Bundle, rollout_in.bundle_id)
    if bundle is None:
        raise NotFoundError(f"bundle {rollout_in.bundle_id} not found")
    paced = rollout_in.max_concurrent is not None or rollout_in.bandwidth_bytes_per_s is not None
    if paced and rollout_in.strategy == "shadow":
        raise InvalidRequestError(
            "max_concurrent and bandwidth_bytes_per_s pace installs; the shadow strategy "
            "installs nothing (leave them out)"
        )
    if paced and rollout_in.atomic is not None:
        # Staged devices of an atomic rollout wait for the switch order, so they would
        # hold every slot and the devices not yet offered would never be.
        raise InvalidRequestError(
            "max_concurrent and bandwidth_bytes_per_s offer a wave in steps; an atomic "
            "rollout needs its whole wave staged before the switch (leave them out)"
        )
    devices = select_devices(session, bundle, rollout_in)
    if not devices:
        raise InvalidRequestError(f"no devices to roll bundle {bundle.id} out to")
    if rollout_in.atomic is not None and (
        rollout_in.strategy == "shadow" or rollout_in.waves not in (["100%"], [100], ["100"])
    ):
        raise InvalidRequestError("an atomic rollout is one wave of 100% and installs (no shadow)")
    specs: list[int | str] = ["100%"] if rollout_in.strategy == "blue_green" else rollout_in.waves
    sizes = wave_sizes(specs, len(devices))

    rollout = Rollout(
        bundle_id=bundle.id,
        state="draft",
        strategy=rollout_in.strategy,
        mode=rollout_in.mode,
        selector=(rollout_in.selector or RolloutSelector()).model_dump(exclude_none=True)
        | ({"device_ids": rollout_in.device_ids} if rollout_in.device_ids is not None else {}),
        waves=list(specs),
        wave_sizes=sizes,
        soak_seconds=rollout_in.soak_seconds,
        gates=rollout_in.gates.model_dump(),
        install_timeout_s=rollout_in.install_timeout_s,
        wave_timeout_s=rollout_in.wave_timeout_s,
        maintenance_window=(
            rollout_in.maintenance_window.model_dump() if rollout_in.maintenance_window else None
        ),
        max_concurrent=rollout_in.max_concurrent,
        bandwidth_bytes_per_s=rollout_in.bandwidth_bytes_per_s,
        atomic=rollout_in.atomic.model_dump() if rollout_in.atomic else None,
        created_by=actor,
    )
    session.add(rollout)
    session.flush()
    assert rollout.id is not None
    wave = 0
    for index, device in enumerate(devices):
        while index >= sizes[wave]:
            wave += 1
        session.add(
            RolloutDevice(rollout_id=rollout.id, device_id=device.id, wave=wave, state="pending")
        )
    supersede_older(session, rollout, [d.id for d in devices], actor)
    record_audit(
        session=session,
        actor=actor,
        action="rollout.create",
        rollout_id=rollout.id,
        target=bundle.id,
        detail={
            "devices": len(devices),
            "wave_sizes": sizes,
            "strategy": rollout.strategy,
            "mode": rollout.mode,
            "soak_seconds": rollout.soak_seconds,
            "gates": rollout.gates,
            "install_timeout_s": rollout.install_timeout_s,
            "wave_timeout_s": rollout.wave_timeout_s,
            "max_concurrent": rollout.max_concurrent,
            "bandwidth_bytes_per_s": rollout.bandwidth_bytes_per_s,
        },
    )
    session.flush()
    outbox: Outbox = []
    if rollout_in.start:
        rollout.state = next_rollout_state(rollout.state, "start")
        outbox = start_wave(session=session, rollout=rollout, wave=0, actor=actor)
    session.commit()
    # After the commit, so that the devices' first reports find the rollout.
    publish_outbox(publisher, outbox)
    session.refresh(rollout)
    logger.info(
        "rollout created rollout_id=%d bundle_id=%s devices=%d waves=%s state=%s",
        rollout.id,
        bundle.id,
        len(devices),
        sizes,
        rollout.state,
    )
    return rollout


def claim_rollout(session: Session, rollout_id: int, *, skip_locked: bool) -> Rollout | None:
    """Lock the rollout's row for this transaction and read it fresh.

    PostgreSQL: ``SELECT ... FOR UPDATE`` (``SKIP LOCKED`` for the orchestrator, which
    returns None when another replica holds it). Then a write to the row, which on
    SQLite takes the database write lock before anything is read, so a pass and an
    operator action never decide on each other's stale state.
    """
    if session.get_bind().dialect.name != "sqlite":
        query = select(Rollout.id).where(Rollout.id == rollout_id)
        if session.exec(query.with_for_update(skip_locked=skip_locked)).first() is None:
            return None
    session.execute(
        update(Rollout).where(col(Rollout.id) == rollout_id).values(revision=Rollout.revision + 1)
    )
    return session.get(Rollout, rollout_id, populate_existing=True)


def retry_devices(
    *, session: Session, rollout: Rollout, now: datetime
) -> tuple[Outbox, dict[str, str | None]]:
    """Offer the failed and timed-out devices of the waves started so far again.

    Each gets fresh deadlines: its install clock from now, and a wave deadline of
    ``wave_timeout_s`` from now. When the current wave has devices retried it goes
    back to ``installing``, so that its install gate judges it again with them; a
    rollout that ``failed`` runs again from there (or waits for the retried devices
    of earlier waves, as its last wave does for offline ones).

    Returns:
        The offers owed, and each retried device with the state it was retried from
        (``timed_out (downloading)`` for a device timed out in ``downloading``).

    Raises:
        ConflictError: no device to retry.
    """
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    rows = [
        r
        for r in wave_rows(session, rollout)
        if r.wave <= rollout.current_wave and r.state in RETRYABLE_DEVICE_STATES
    ]
    if not rows:
        raise ConflictError(
            f"cannot retry rollout {rollout.id}: no failed or timed-out device to offer again"
        )
    wave_deadline = now + timedelta(seconds=rollout.wave_timeout_s)
    retried: dict[str, str | None] = {}
    for row in rows:
        retried[row.device_id] = (
            f"{row.state} ({row.timed_out_in})" if row.state == TIMED_OUT else row.state
        )
        row.state = "offered"
        row.reason = None
        arm_deadlines(row, rollout, now, wave_deadline)
        row.updated_at = now
        session.add(row)
    if any(r.wave == rollout.current_wave for r in rows):
        rollout.phase = "installing"
        rollout.wave_deadline_at = wave_deadline
        rollout.soak_started_at = None
        rollout.promoted = False
    elif rollout.phase == "done":
        rollout.phase = "waiting_offline"
    rollout.reason = None
    return [
        (r.device_id, device_offer(session, bundle, rollout, r.device_id)) for r in rows
    ], retried


def act_on_rollout(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout_id: int,
    action: str,
    actor: str,
    reason: str | None = None,
) -> Rollout:
    """Carry out an operator action on a rollout, audited, and commit it.

    The transition table decides whether the rollout's state allows the action and
    what it becomes; the action then does its own work: ``start`` offers wave 1,
    ``promote`` lets the wave awaiting promotion go on, ``retry`` offers the failed
    and timed-out devices of the waves so far again (``retry_devices``), ``abort``
    rolls the current wave back and ``rollback`` every wave.

    Args:
        session: the caller's session; committed here.
        publisher: sends the offers and commands the action owes devices.
        rollout_id: the rollout to act on.
        action: one of ``edgefleet.states.rollout.OPERATOR_ACTIONS``.
        actor: who acts, for the audit log.
        reason: the operator's reason, for the audit log (and the devices' rollback).

    Returns:
        The rollout as committed.

    Raises:
        NotFoundError: no rollout ``rollout_id``.
        InvalidRequestError: ``action`` is not an operator action.
        ConflictError: the rollout's state does not allow ``action``, a promote
            while no wave awaits promotion, or a retry with no device to retry.
    """
    rollout = claim_rollout(session, rollout_id, skip_locked=False)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    if action not in OPERATOR_ACTIONS:
        raise InvalidRequestError(f"unknown action {action}")
    try:
        target = next_rollout_state(rollout.state, action)
    except TransitionError as e:
        raise ConflictError(f"cannot {action} rollout {rollout.id}: it is {rollout.state}") from e
    now = utcnow()
    outbox: Outbox = []
    if action in ("abort", "rollback"):
        end_rollout(
            session=session,
            publisher=publisher,
            rollout=rollout,
            state=target,
            reason=reason or f"{action} by {actor}",
            actor=actor,
            action=f"rollout.{action}",
            rollback_all=action == "rollback",
        )
    else:
        if action == "promote":
            if rollout.phase != "awaiting_promotion":
                raise ConflictError(
                    f"cannot promote rollout {rollout.id}: wave {rollout.current_wave + 1} "
                    f"is {rollout.phase}, not awaiting promotion"
                )
            rollout.promoted = True
        detail: dict[str, Any] | None = (
            None if action == "start" else {"wave": rollout.current_wave + 1}
        )
        if action == "retry":
            outbox, retried = retry_devices(session=session, rollout=rollout, now=now)
            detail = (detail or {}) | {"devices": retried}
        rollout.state = target
        record_audit(
            session=session,
            actor=actor,
            action=f"rollout.{action}",
            rollout_id=rollout.id,
            reason=reason,
            detail=detail,
        )
        if action == "start":
            outbox = start_wave(session=session, rollout=rollout, wave=0, actor=actor)
    rollout.updated_at = now
    session.add(rollout)
    session.commit()
    publish_outbox(publisher, outbox)
    session.refresh(rollout)
    return rollout
