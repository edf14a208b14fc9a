"""The rollout orchestrator: moves every running rollout through its waves.

Driven only by the database: an APScheduler interval job calls ``tick`` on each
replica; ``tick`` lists the ``in_progress`` rollouts and advances each one in its own
transaction, holding the rollout's row with ``SELECT ... FOR UPDATE SKIP LOCKED``
(PostgreSQL), so with several replicas on one database each rollout is advanced by
exactly one replica at a time and the others skip it. A replica that dies mid-pass
loses its connection, PostgreSQL releases the lock, and the next tick elsewhere
carries on from the committed state. On SQLite (one machine, one replica) the
clause is omitted and SQLite's single writer serializes passes.

Each pass first applies the deadlines (``deadlines.enforce_deadlines``): offline
devices' install clocks pause, returning ones resume, and online devices past their
install deadline or their wave's are ``timed_out``, which counts as failed for the
install gate. Then one pass of ``advance_rollout`` for wave k (phases in
``Rollout.phase``)::

    installing          a paced rollout offers the next queued devices (``pacing``)
                        and waits until every device of the wave was offered;
                        every online device of the wave finished (active/failed/
                        timed_out), at the latest by the wave's deadline ->
                        install gate: breach -> aborted; else soaking
    soaking             soak time over -> all gates over the wave's telemetry since
                        the wave started: breach -> aborted (wave rolls back);
                        too little evidence -> keep soaking, up to the gates'
                        ``evidence_wait_s`` -> then aborted, "not enough evidence";
                        pass -> next
    awaiting_promotion  manual mode: wait for ``promote``
    waiting_offline     last wave passed; devices still offline get it on return
                        (their clocks run again then, capped by the wave deadline)
    next                last wave -> complete / failed; else wave k+1

The rollout's state changes (aborted, complete, failed) are the orchestrator events
of ``edgefleet.states.rollout.TRANSITIONS``.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.tables import Rollout, RolloutGates, utcnow
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.rollouts.atomic import (
    OrderSigner,
    hold_for_switch,
    issue_planned_order,
)
from edgefleet.control_plane.services.rollouts.deadlines import enforce_deadlines, online_devices
from edgefleet.control_plane.services.rollouts.lifecycle import claim_rollout
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher, publish_outbox
from edgefleet.control_plane.services.rollouts.pacing import is_paced, offer_queued
from edgefleet.control_plane.services.rollouts.waves import (
    aware,
    end_rollout,
    send_rollback,
    start_wave,
    wave_rows,
    wave_verdict,
)
from edgefleet.states.install import GATE_FAILED_STATES, INSTALLING_STATES, TIMED_OUT
from edgefleet.states.rollout import next_rollout_state

logger = logging.getLogger(__name__)

MAX_STEPS = 8  # phase changes one pass may make (installing -> soaking -> next ...)


def _record_wave(rollout: Rollout, state: str, values: list[dict[str, object]]) -> None:
    results = [r for r in (rollout.wave_results or []) if r.get("wave") != rollout.current_wave + 1]
    results.append({"wave": rollout.current_wave + 1, "state": state, "gates": values})
    rollout.wave_results = results  # a new list, so SQLAlchemy sees the JSON change


def _abort_on_breach(
    session: Session, publisher: FleetPublisher, rollout: Rollout, reason: str, actor: str,
    values: list[dict[str, object]],
) -> None:  # fmt: skip
    _record_wave(rollout, "breached", values)
    text = f"wave {rollout.current_wave + 1} gate breached: {reason}"
    end_rollout(
        session=session,
        publisher=publisher,
        rollout=rollout,
        state=next_rollout_state(rollout.state, "gate_breached"),
        reason=text,
        actor=actor,
        action="rollout.abort",
        detail={"gates": values},
    )
    logger.warning("rollout aborted rollout_id=%s reason=%s", rollout.id, text)


def _finish(session: Session, publisher: FleetPublisher, rollout: Rollout, actor: str) -> bool:
    """After the last wave: wait for offline devices, then complete or fail. True if ended."""
    rows = wave_rows(session, rollout)
    if any(r.state in INSTALLING_STATES or r.state == "rolling_back" for r in rows):
        if rollout.phase != "waiting_offline":
            rollout.phase = "waiting_offline"
            session.add(rollout)
        return False
    counted = [r for r in rows if r.state not in ("superseded", "cancelled")]
    gates = RolloutGates.model_validate(rollout.gates or {})
    failed = [r for r in counted if r.state in GATE_FAILED_STATES]
    timed_out = [r for r in failed if r.state == TIMED_OUT]
    if rollout.strategy == "shadow":
        # Shadow evaluation done: stop the shadows, nothing was installed.
        send_rollback(
            session=session,
            publisher=publisher,
            rollout=rollout,
            rows=[r for r in rows if r.state == "shadowing"],
            reason="shadow evaluation complete",
        )
        event = "all_waves_passed"
    elif failed and gates.max_install_failure_rate is None:
        event = "devices_failed"
    else:
        event = "all_waves_passed"
    state = next_rollout_state(rollout.state, event)
    rollout.state = state
    rollout.phase = "done"
    session.add(rollout)
    record_audit(
        session=session,
        actor=actor,
        action=f"rollout.{state}",
        rollout_id=rollout.id,
        reason=(
            f"{len(failed)} of {len(counted)} devices failed"
            + (f" ({len(timed_out)} timed out)" if timed_out else "")
            if failed
            else "every wave passed"
        ),
        detail={
            "devices": len(counted),
            "failed": [r.device_id for r in failed],
            "timed_out": {r.device_id: r.timed_out_in for r in timed_out},
        },
    )
    logger.info("rollout ended rollout_id=%s state=%s", rollout.id, state)
    return True


def _step(session: Session, publisher: FleetPublisher, rollout: Rollout, now: datetime,
          actor: str) -> bool:  # fmt: skip
    """One phase change of a running rollout; False when it has to wait."""
    wave = rollout.current_wave
    last = wave >= len(rollout.wave_sizes) - 1
    if rollout.phase == "installing":
        rows = wave_rows(session, rollout, wave)
        if is_paced(rollout) and any(r.state == "pending" for r in rows):
            # Offered in steps (``pacing``): the next as others finish, or as the budget
            # allows. The wave is judged once every device of it was offered.
            publish_outbox(
                publisher,
                offer_queued(session=session, rollout=rollout, rows=rows, now=now, actor=actor),
            )
            if any(r.state == "pending" for r in rows):
                return False
        waiting = [r.device_id for r in rows if r.state in INSTALLING_STATES]
        if online_devices(session, waiting):
            return False
        verdict = wave_verdict(session, rollout, wave)
        install = [v for v in verdict.values if v.name == "install_failure_rate"]
        if install and not install[0].ok:
            _abort_on_breach(session, publisher, rollout, install[0].name + " " + install[0].detail,
                             actor, [v.model_dump() for v in verdict.values])  # fmt: skip
            return False
        rollout.phase = "soaking"
        rollout.soak_started_at = now
        session.add(rollout)
        return True
    if rollout.phase == "soaking":
        assert rollout.soak_started_at is not None
        if (now - aware(rollout.soak_started_at)).total_seconds() < rollout.soak_seconds:
            return False
        verdict = wave_verdict(session, rollout, wave, now=now)
        values = [v.model_dump() for v in verdict.values]
        if verdict.breached or verdict.expired:
            # A breach the evidence shows ends the wave at once, whatever else is
            # still missing; missing evidence ends it only at its deadline.
            _abort_on_breach(session, publisher, rollout, verdict.reason(), actor, values)
            return False
        if verdict.waiting is not None:
            return False
        _record_wave(rollout, "passed", values)
        record_audit(
            session=session,
            actor=actor,
            action="rollout.wave_passed",
            rollout_id=rollout.id,
            reason="; ".join(f"{v.name} {v.detail}" for v in verdict.values) or "no gates",
            detail={"wave": wave + 1, "gates": values},
        )
        rollout.phase = "next" if (last or rollout.mode == "automatic") else "awaiting_promotion"
        session.add(rollout)
        return True
    if rollout.phase == "awaiting_promotion":
        if not rollout.promoted:
            return False
        rollout.phase = "next"
        return True
    if rollout.phase in ("next", "waiting_offline"):
        if last:
            _finish(session, publisher, rollout, actor)
            return False
        outbox = start_wave(session=session, rollout=rollout, wave=wave + 1, actor=actor)
        # Sent before the commit: a crash in between re-offers on the next pass
        # elsewhere (the agent de-duplicates) instead of leaving devices marked offered
        # that never heard of the bundle. Reports racing the commit are accepted.
        publish_outbox(publisher, outbox)
        return True
    return False


def advance_rollout(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout_id: int,
    actor: str,
    signer: OrderSigner | None = None,
) -> bool:
    """Advance one rollout as far as it can go now; False when another replica holds it."""
    rollout = claim_rollout(session, rollout_id, skip_locked=True)
    if rollout is None:
        session.rollback()
        return False
    if rollout.state != "in_progress":
        session.rollback()
        return True
    now = utcnow()
    before = (rollout.phase, rollout.current_wave)
    enforce_deadlines(session=session, rollout=rollout, now=now, actor=actor)
    # Atomic rollouts wait for their switch order (or fail) before the wave logic.
    held = hold_for_switch(session=session, publisher=publisher, rollout=rollout, now=now,
                           actor=actor)  # fmt: skip
    for _ in range(0 if held else MAX_STEPS):
        if rollout.state != "in_progress" or not _step(session, publisher, rollout, now, actor):
            break
    if (rollout.phase, rollout.current_wave) != before or rollout.state != "in_progress":
        rollout.updated_at = now
        rollout.owner = actor
        session.add(rollout)
    session.commit()
    if signer is not None and (rollout.switch_order or {}).get("state") == "planned":
        issue_planned_order(session=session, publisher=publisher, signer=signer,
                            rollout_id=rollout_id)  # fmt: skip
    return True


class RolloutOrchestrator:
    """What the scheduler runs on each replica, every ``interval`` seconds."""

    def __init__(
        self,
        *,
        engine: Engine,
        publisher: FleetPublisher,
        replica: str,
        signer: OrderSigner | None = None,
    ) -> None:
        self._engine = engine
        self._publisher = publisher
        self._signer = signer  # signs atomic rollouts' switch orders
        self.actor = f"orchestrator@{replica}"

    def tick(self) -> None:
        try:
            with Session(self._engine) as session:
                ids = session.exec(
                    select(Rollout.id)
                    .where(Rollout.state == "in_progress")
                    .order_by(col(Rollout.id))
                ).all()
        except Exception:  # top of a scheduled job: the database may be restarting
            logger.exception("rollout orchestrator could not list rollouts")
            return
        for rollout_id in ids:
            assert rollout_id is not None
            try:
                with Session(self._engine) as session:
                    advance_rollout(
                        session=session,
                        publisher=self._publisher,
                        rollout_id=rollout_id,
                        actor=self.actor,
                        signer=self._signer,
                    )
            except Exception:  # top of a scheduled job: one rollout must not stop the rest
                logger.exception("rollout advance failed rollout_id=%s", rollout_id)
