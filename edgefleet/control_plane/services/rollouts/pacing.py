"""Fleet-wide controls of a rollout: how many devices install at once, and how fast.

Two options of a rollout (``RolloutCreate``), both off by default (a wave's devices
are all offered when it starts):

* ``max_concurrent``: at most N devices of the rollout are offered and not finished
  at once. A wave starts with its first N; each pass of the orchestrator offers as
  many more as have finished since (``active``, ``failed``, ``timed_out`` ...).
* ``bandwidth_bytes_per_s``: the bundle bytes the offers start stay within a budget.
  With blobs and mirrors the bytes no longer pass through the control plane, so the
  budget paces *offers*: each offer spends the bundle's length, and the budget's clock
  (``Rollout.budget_spent_until``) moves on by ``length / budget`` seconds; offers go
  out while that clock is less than a second ahead of now (one second's worth of
  budget may go at once). A device that resumes a broken download uses less than it
  was charged, never more.

Devices not offered yet stay ``pending`` in the current wave, which keeps the wave
``installing``: the orchestrator judges a wave only once all of its devices were
offered. Online devices are offered first. An offline device is offered without
taking a slot (its offer waits in its MQTT session, and it counts toward the cap only
while online), so a fleet with devices away cannot stall the rollout; one coming back
resumes its download at once and may put the count above N until the next finishes.
Queued devices get no deadline until they are offered; if the wave's deadline passes
first, they are ``timed_out`` (in ``pending``) like any device that ran out of time.

Re-offers (a device back online, an operator's ``retry``) are not paced: they are few
and each concerns a device already counted.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlmodel import Session

from edgefleet.control_plane.core.tables import Bundle, Rollout, RolloutDevice
from edgefleet.control_plane.services.rollouts.deadlines import (
    arm_deadlines,
    audit_time_outs,
    aware,
    online_devices,
    time_out,
)
from edgefleet.control_plane.services.rollouts.outbox import Outbox, device_offer
from edgefleet.states.install import INSTALLING_STATES

logger = logging.getLogger(__name__)

BURST_S = 1.0
"""Seconds of bandwidth budget that may be spent at once."""


def is_paced(rollout: Rollout) -> bool:
    """The rollout offers its waves in steps (a cap or a budget is set)."""
    return rollout.max_concurrent is not None or rollout.bandwidth_bytes_per_s is not None


def offer_queued(
    *, session: Session, rollout: Rollout, rows: list[RolloutDevice], now: datetime, actor: str
) -> Outbox:
    """Offer the current wave's queued (``pending``) devices that the controls allow now.

    Args:
        session: the caller's session (the caller commits and sends the outbox).
        rollout: a running rollout, claimed by the caller, its wave started.
        rows: the current wave's rows.
        now: the pass's clock.
        actor: who, for the audit log of devices timed out before their offer.

    Returns:
        The offers to send; the rows are ``offered`` with their deadlines armed.
    """
    queued = [r for r in rows if r.state == "pending"]
    if not queued:
        return []
    wave_deadline = rollout.wave_deadline_at
    if wave_deadline is not None and now >= aware(wave_deadline):
        for row in queued:
            time_out(row, f"wave {row.wave + 1} deadline passed before its offer", now)
            session.add(row)
        audit_time_outs(session, rollout, queued, actor)
        return []
    online = online_devices(session, [r.device_id for r in rows])
    busy = sum(1 for r in rows if r.state in INSTALLING_STATES and r.device_id in online)
    slots = rollout.max_concurrent - busy if rollout.max_concurrent is not None else len(rows)
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None
    cost_s = (
        max(bundle.length, 1) / rollout.bandwidth_bytes_per_s
        if rollout.bandwidth_bytes_per_s
        else 0.0
    )
    spent = aware(rollout.budget_spent_until) if rollout.budget_spent_until else now
    spent = max(spent, now)
    chosen: list[RolloutDevice] = []
    for row in sorted(queued, key=lambda r: (r.device_id not in online, r.device_id)):
        takes_slot = row.device_id in online
        if takes_slot and slots <= 0:
            break
        if cost_s and spent - now >= timedelta(seconds=BURST_S):
            break
        if takes_slot:
            slots -= 1
        spent += timedelta(seconds=cost_s)
        chosen.append(row)
    if cost_s:
        rollout.budget_spent_until = spent
        session.add(rollout)
    assert wave_deadline is not None
    for row in chosen:
        row.state = "offered"
        arm_deadlines(row, rollout, now, aware(wave_deadline))
        row.updated_at = now
        session.add(row)
    if chosen:
        logger.info(
            "paced offers rollout_id=%s wave=%d offered=%d queued=%d",
            rollout.id,
            rollout.current_wave + 1,
            len(chosen),
            len(queued) - len(chosen),
        )
    return [
        (row.device_id, device_offer(session, bundle, rollout, row.device_id)) for row in chosen
    ]
