"""Reading rollouts: the API's and the CLI's view of a rollout, its waves and devices.

Deadlines are shown where they still bind: a wave's while it installs (or waits for
offline devices), a device's while it installs, with ``clock_paused`` while it is
offline. A timed-out device shows the state it last reported (``timed_out_in``) and
any report after the time-out (``late_state``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import NotFoundError
from edgefleet.control_plane.core.tables import (
    GateValue,
    Rollout,
    RolloutDevicePublic,
    RolloutPublic,
    WavePublic,
)
from edgefleet.control_plane.services.groups import window_for_device
from edgefleet.control_plane.services.rollouts.atomic import switch_skew
from edgefleet.control_plane.services.rollouts.waves import aware, wave_rows, wave_verdict
from edgefleet.states.install import INSTALLING_STATES
from edgefleet.states.rollout import RUNNING_ROLLOUT_STATES


def list_rollouts(*, session: Session) -> Sequence[Rollout]:
    """Every rollout, oldest first."""
    return session.exec(select(Rollout).order_by(col(Rollout.id))).all()


def get_rollout(*, session: Session, rollout_id: int) -> Rollout:
    """The rollout ``rollout_id``.

    Raises:
        NotFoundError: no such rollout.
    """
    rollout = session.get(Rollout, rollout_id)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    return rollout


def _wave_state(rollout: Rollout, wave: int, result: dict[str, Any] | None) -> str:
    if result is not None:
        return str(result.get("state", "passed"))
    if wave > rollout.current_wave or rollout.state == "draft":
        return "cancelled" if rollout.state in ("aborted", "rolled_back") else "pending"
    if wave < rollout.current_wave:
        return "passed"
    return rollout.phase if rollout.state in RUNNING_ROLLOUT_STATES else rollout.state


def rollout_public(*, session: Session, rollout: Rollout) -> RolloutPublic:
    """The API view of a rollout: its waves with gate values, and its devices."""
    rows = wave_rows(session, rollout)
    assert rollout.id is not None
    sizes = rollout.wave_sizes or [len(rows)]
    results = {int(r["wave"]) - 1: r for r in (rollout.wave_results or [])}
    waves: list[WavePublic] = []
    previous = 0
    for index, cumulative in enumerate(sizes):
        members = [r for r in rows if r.wave == index]
        result = results.get(index)
        state = _wave_state(rollout, index, result)
        if result is not None:
            gates = [GateValue.model_validate(g) for g in result.get("gates", [])]
        elif index == rollout.current_wave and rollout.state in RUNNING_ROLLOUT_STATES:
            gates = wave_verdict(session, rollout, index).values
        else:
            gates = []
        soak_until = None
        deadline = None
        if index == rollout.current_wave and rollout.soak_started_at is not None:
            soak_until = datetime.fromtimestamp(
                aware(rollout.soak_started_at).timestamp() + rollout.soak_seconds, UTC
            )
        if index == rollout.current_wave and state in ("installing", "waiting_offline"):
            deadline = rollout.wave_deadline_at
        waves.append(
            WavePublic(
                wave=index + 1,
                size=cumulative - previous,
                state=state,
                counts=dict(Counter(r.state for r in members)),
                gates=gates,
                soak_until=soak_until,
                deadline=deadline,
            )
        )
        previous = cumulative
    return RolloutPublic(
        id=rollout.id,
        bundle_id=rollout.bundle_id,
        state=rollout.state,
        strategy=rollout.strategy,
        mode=rollout.mode,
        selector=rollout.selector or {},
        waves=list(rollout.waves or []),
        soak_seconds=rollout.soak_seconds,
        gates=rollout.gates or {},
        install_timeout_s=rollout.install_timeout_s,
        wave_timeout_s=rollout.wave_timeout_s,
        maintenance_window=rollout.maintenance_window,
        max_concurrent=rollout.max_concurrent,
        bandwidth_bytes_per_s=rollout.bandwidth_bytes_per_s,
        atomic=rollout.atomic,
        switch_order=rollout.switch_order,
        switch_skew_s=switch_skew(rows),
        wave=rollout.current_wave + 1,
        wave_count=len(sizes),
        phase=rollout.phase,
        reason=rollout.reason,
        created_by=rollout.created_by,
        created_at=rollout.created_at,
        updated_at=rollout.updated_at,
        counts=dict(Counter(row.state for row in rows)),
        wave_status=waves,
        devices=[
            RolloutDevicePublic(
                device_id=row.device_id,
                wave=row.wave + 1,
                state=row.state,
                reason=row.reason,
                install_seconds=row.install_seconds,
                offered_at=row.offered_at,
                deadline_at=row.deadline_at if row.state in INSTALLING_STATES else None,
                wave_deadline_at=(row.wave_deadline_at if row.state in INSTALLING_STATES else None),
                clock_paused=row.paused_at is not None and row.state in INSTALLING_STATES,
                timed_out_in=row.timed_out_in,
                late_state=row.late_state,
                switched_at=row.switched_at,
                switch_late_s=row.switch_late_s,
                maintenance_window=rollout.maintenance_window
                or window_for_device(session=session, device_id=row.device_id),
                updated_at=row.updated_at,
            )
            for row in rows
        ],
    )
