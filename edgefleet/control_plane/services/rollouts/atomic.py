"""The fleet-wide atomic switch, control-plane side: a quorum of armed devices, one signed
moment, or nobody switches.

An atomic rollout (``Rollout.atomic``, a ``RolloutAtomic``) is one wave. Its offers
carry ``atomic``: each device downloads, verifies, stages, smoke-tests and reports
``armed`` (``edgefleet.agent.install.switch_order``). Each orchestrator pass calls
``hold_for_switch`` before the wave logic:

* more devices ``failed`` / ``timed_out`` than the quorum allows, or the wave's deadline
  passed with fewer than the quorum armed: every device still installing or armed gets
  ``drop_staged``, and the rollout is ``failed`` naming the devices (nobody switched);
* the quorum is armed and no online device is still on its way: the order is *planned*
  (``Rollout.switch_order`` with ``switch_at_ms`` = now + ``switch_lead_s`` and
  ``valid_until_ms`` = that + ``late_switch_s``, UTC epoch milliseconds) and committed;
* after the commit, ``issue_planned_order`` signs it as the TUF target
  ``switch-order-r<id>.json`` (custom field ``switch_order``) with the repository's
  online targets key (the same metadata the devices verify bundles with; signing the same
  plan twice is a no-op, so replicas racing each other agree) and sends every device of
  the rollout still installing or armed a ``switch`` command naming the target.

After the order, the wave logic runs as for any rollout: devices report ``active`` with
``switched_at``; ``switch_skew_s`` (max - min over the devices that switched on time) is
shown by ``rollout status``. A device that arms or comes back after the order gets the
``switch`` command then (``order_for_device``), and switches if the order is still valid.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime
from typing import Any, Protocol

from sqlmodel import Session

from edgefleet.control_plane.core.errors import ConflictError
from edgefleet.control_plane.core.tables import Rollout, RolloutAtomic, RolloutDevice
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.rollouts.deadlines import online_devices
from edgefleet.control_plane.services.rollouts.outbox import FleetPublisher
from edgefleet.control_plane.services.rollouts.waves import aware, wave_rows
from edgefleet.messages import DeviceCommand
from edgefleet.states.install import GATE_FAILED_STATES, INACTIVE_ROW_STATES, INSTALLING_STATES
from edgefleet.states.rollout import next_rollout_state

logger = logging.getLogger(__name__)

ARMED = "armed"
ORDER_FIELD = "switch_order"  # the signed target's custom field (the agent reads it)


class OrderSigner(Protocol):
    """What signs an order: the control plane's ``SignedRepository``."""

    def add_target(self, target_path: str, data: bytes, custom: dict[str, Any]) -> Any: ...


def order_target(rollout_id: int) -> str:
    """The TUF target path of a rollout's switch order."""
    return f"switch-order-r{rollout_id}.json"


def settings_of(rollout: Rollout) -> RolloutAtomic | None:
    """The rollout's atomic settings, or None for an ordinary rollout."""
    return RolloutAtomic.model_validate(rollout.atomic) if rollout.atomic else None


def switch_command(rollout: Rollout) -> DeviceCommand | None:
    """The ``switch`` command of an issued order, or None before it is signed."""
    order = rollout.switch_order or {}
    if order.get("state") != "issued":
        return None
    return DeviceCommand(
        command="switch",
        rollout_id=rollout.id,
        bundle_id=rollout.bundle_id,
        args={"target": order["target"]},
    )


def hold_for_switch(
    *, session: Session, publisher: FleetPublisher, rollout: Rollout, now: datetime, actor: str
) -> bool:
    """One pass of an atomic rollout before its order; True while the wave logic must wait.

    Fails the rollout (nobody switches) when the quorum can no longer be met, or plans the
    order once it is. The caller commits, then calls ``issue_planned_order``.
    """
    atomic = settings_of(rollout)
    if atomic is None or rollout.switch_order is not None:
        return False
    rows = [r for r in wave_rows(session, rollout) if r.state not in INACTIVE_ROW_STATES]
    required = math.ceil(atomic.quorum_pct / 100.0 * len(rows) - 1e-9)
    failed = [r for r in rows if r.state in GATE_FAILED_STATES]
    armed = [r for r in rows if r.state == ARMED]
    on_the_way = [r.device_id for r in rows if r.state in INSTALLING_STATES and r.state != ARMED]
    deadline = rollout.wave_deadline_at
    past_deadline = deadline is not None and now >= aware(deadline)
    if len(rows) - len(failed) < required:
        names = ", ".join(f"{r.device_id} ({r.state}: {r.reason or 'no reason'})" for r in failed)
        _call_off(session, publisher, rollout, rows, actor,
                  f"atomic switch off: staging failed on {names}")  # fmt: skip
        return True
    if past_deadline and len(armed) < required:
        missing = ", ".join(r.device_id for r in rows if r.state != ARMED)
        _call_off(session, publisher, rollout, rows, actor,
                  f"atomic switch off: {len(armed)} of {len(rows)} armed by the deadline "
                  f"(quorum {required}); not armed: {missing}")  # fmt: skip
        return True
    if len(armed) >= required and (past_deadline or not online_devices(session, on_the_way)):
        # Whole milliseconds: TUF's canonical JSON signs no floats.
        switch_at_ms = round((now.timestamp() + atomic.switch_lead_s) * 1000)
        switch_at = switch_at_ms / 1000
        rollout.switch_order = {
            "state": "planned",
            "target": order_target(rollout.id or 0),
            "rollout_id": rollout.id,
            "bundle_id": rollout.bundle_id,
            "switch_at": switch_at,
            "switch_at_ms": switch_at_ms,
            "valid_until_ms": switch_at_ms + round(atomic.late_switch_s * 1000),
            "armed": [r.device_id for r in armed],
        }
        session.add(rollout)
        logger.info("atomic switch planned rollout_id=%s armed=%d of %d switch_at=%.3f",
                    rollout.id, len(armed), len(rows), switch_at)  # fmt: skip
    return True


def _call_off(
    session: Session,
    publisher: FleetPublisher,
    rollout: Rollout,
    rows: list[RolloutDevice],
    actor: str,
    reason: str,
) -> None:
    """Nobody switches: drop every staged bundle, fail the rollout naming the devices."""
    for row in rows:
        if row.state in INSTALLING_STATES:
            publisher.publish_command(
                row.device_id,
                DeviceCommand(
                    command="drop_staged",
                    rollout_id=rollout.id,
                    bundle_id=rollout.bundle_id,
                    reason=reason,
                ),
            )
    rollout.state = next_rollout_state(rollout.state, "devices_failed")
    rollout.phase = "done"
    rollout.reason = reason
    session.add(rollout)
    record_audit(
        session=session,
        actor=actor,
        action="rollout.failed",
        rollout_id=rollout.id,
        reason=reason,
        detail={"failed": [r.device_id for r in rows if r.state in GATE_FAILED_STATES]},
    )
    logger.warning("atomic rollout failed rollout_id=%s reason=%s", rollout.id, reason)


def issue_planned_order(
    *, session: Session, publisher: FleetPublisher, signer: OrderSigner, rollout_id: int
) -> bool:
    """Sign a planned order and send it; True when an order went out. Commits.

    Called with no transaction open (signing writes the repository's own rows).
    """
    rollout = session.get(Rollout, rollout_id)
    order = dict(rollout.switch_order or {}) if rollout else {}
    if rollout is None or order.get("state") != "planned":
        return False
    signed = {k: order[k] for k in ("rollout_id", "bundle_id", "switch_at_ms", "valid_until_ms")}
    data = json.dumps(signed, sort_keys=True).encode()
    session.rollback()  # no transaction held while the repository signs
    try:
        signer.add_target(order["target"], data, {ORDER_FIELD: signed})
    except ConflictError:
        logger.warning("switch order already signed differently rollout_id=%s", rollout_id)
    rollout = session.get(Rollout, rollout_id)
    assert rollout is not None
    rollout.switch_order = order | {"state": "issued"}
    session.add(rollout)
    record_audit(
        session=session,
        actor="orchestrator",
        action="rollout.switch_order",
        rollout_id=rollout_id,
        reason=f"switch at {datetime.fromtimestamp(order['switch_at']).isoformat()}",
        detail=signed,
    )
    command = switch_command(rollout)
    assert command is not None
    targets = [r.device_id for r in wave_rows(session, rollout) if r.state in INSTALLING_STATES]
    session.commit()
    for device_id in targets:
        publisher.publish_command(device_id, command)
    logger.info("atomic switch order sent rollout_id=%s devices=%d", rollout_id, len(targets))
    return True


def order_for_device(rollout: Rollout, row: RolloutDevice) -> DeviceCommand | None:
    """The ``switch`` command a device that armed (or came back) after the order needs."""
    if rollout.atomic is None or row.state not in INSTALLING_STATES:
        return None
    return switch_command(rollout)


def switch_skew(rows: list[RolloutDevice]) -> float | None:
    """Max - min of the on-time devices' switch times (late returners are reported apart)."""
    times = [
        r.switched_at for r in rows if r.switched_at is not None and not (r.switch_late_s or 0) > 1
    ]
    return max(times) - min(times) if len(times) >= 2 else None
