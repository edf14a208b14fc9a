"""Rollouts: which devices, in which waves, and what the operators and devices did.

A rollout picks its devices with a selector (always narrowed to the bundle's
profile), splits them into cumulative waves (``[1, "10%", "50%", "100%"]``), and
is then advanced by the orchestrator (``services/orchestrator.py``). This module
holds the state changes themselves, each recorded in the audit log.

Rollout states::

    draft --start--> in_progress(wave k: installing -> soaking
                                 [-> awaiting_promotion] -> wave k+1 ...)
    in_progress --pause--> paused --resume--> in_progress
    in_progress --gate breach / abort--> aborted     (the wave's devices roll back)
    in_progress --all waves passed--> complete       (or failed: no gates, a device failed)
    any started state --rollback--> rolled_back      (every device that got it rolls back)

Device states: pending -> offered -> downloading .. smoke_tested -> active | failed;
active -> rolling_back -> rolled_back; pending -> cancelled when the rollout ends
first; shadowing for the shadow strategy; superseded when a newer rollout takes
the device over.

Precedence when two rollouts target one device: the newest rollout wins. Creating
a rollout marks the device ``superseded`` in every older draft / in_progress /
paused rollout where the device had not finished (pending or installing); those
rollouts no longer offer to it, re-offer to it or count it. A device that already
finished in an older rollout keeps that row as history. Devices are never offered
an older bundle over a newer one anyway: the agent refuses a lower release.

Offline devices: offers go out with MQTT QoS 1 to a persistent session, so a device
gets them when it returns; when it comes back online the control plane re-offers
anything still unfinished in an ``in_progress`` rollout. A wave does not wait for
offline devices; the last wave waits for them (``phase`` = ``waiting_offline``)
before the rollout is ``complete``, unless an operator aborts it.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import update
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import ConflictError, InvalidRequestError, NotFoundError
from edgefleet.control_plane.core.tables import (
    RUNNING_ROLLOUT_STATES,
    TERMINAL_DEVICE_STATES,
    Bundle,
    Device,
    DeviceGroup,
    Event,
    GateValue,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    RolloutDevicePublic,
    RolloutGates,
    RolloutPublic,
    RolloutSelector,
    WavePublic,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.control_plane.services.gates import GateInputs, GateVerdict, evaluate_gates
from edgefleet.messages import BundleOffer, DeviceCommand, InstallReport

logger = logging.getLogger(__name__)

# Agent states the rollout table does not distinguish.
_REPORT_STATE = {"committed": "active"}
INSTALLING_STATES = frozenset({"offered", "downloading", "verified", "staged", "smoke_tested"})
FINISHED_STATES = frozenset({"active", "failed", "rolled_back", "shadowing"})
FAILED_STATES = frozenset({"failed", "rolled_back"})
INACTIVE_ROW_STATES = frozenset({"pending", "superseded", "cancelled"})
_COUNT = re.compile(r"^[1-9][0-9]{0,6}$")
_PERCENT = re.compile(r"^(100|[1-9][0-9]?)(\.[0-9]+)?%$|^0\.[0-9]*[1-9][0-9]*%$")


class FleetPublisher(Protocol):
    def publish_offer(self, device_id: str, offer: BundleOffer) -> None: ...

    def publish_command(self, device_id: str, command: DeviceCommand) -> None: ...


Outbox = list[tuple[str, BundleOffer | DeviceCommand]]
"""Messages a state change owes devices, sent by the caller around its commit."""


def publish_outbox(publisher: FleetPublisher, outbox: Outbox) -> None:
    for device_id, message in outbox:
        if isinstance(message, BundleOffer):
            publisher.publish_offer(device_id, message)
        else:
            publisher.publish_command(device_id, message)


OfferPublisher = FleetPublisher  # the name callers used before commands existed


def aware(moment: datetime) -> datetime:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# -- creating -------------------------------------------------------------------


def wave_sizes(specs: Sequence[int | str], total: int) -> list[int]:
    """Cumulative device counts per wave; waves adding nobody are dropped, 100 % appended."""
    if total < 1:
        raise InvalidRequestError("no devices to split into waves")
    sizes: list[int] = []
    for spec in specs:
        if isinstance(spec, bool):
            raise InvalidRequestError(f"invalid wave {spec!r}")
        if isinstance(spec, int) or _COUNT.match(str(spec)):
            n = int(spec)
            if n < 1:
                raise InvalidRequestError(f"invalid wave {spec!r}: a count must be >= 1")
        elif _PERCENT.match(str(spec)):
            n = math.ceil(total * float(str(spec)[:-1]) / 100 - 1e-9)
        else:
            raise InvalidRequestError(f"invalid wave {spec!r}: use a count (3) or a share (10%)")
        n = min(max(n, 1), total)
        if sizes and n <= sizes[-1]:
            continue
        sizes.append(n)
    if sizes[-1] < total:
        sizes.append(total)
    return sizes


def _select_devices(session: Session, bundle: Bundle, rollout_in: RolloutCreate) -> list[Device]:
    selector = rollout_in.selector or RolloutSelector()
    if selector.profile is not None and selector.profile != bundle.profile:
        raise InvalidRequestError(
            f"selector profile {selector.profile} does not match bundle profile {bundle.profile}"
        )
    explicit: list[str] | None = None
    if rollout_in.device_ids is not None or selector.device_ids is not None:
        explicit = list(rollout_in.device_ids or []) + list(selector.device_ids or [])
    if selector.groups:
        explicit = list(explicit or [])
        for name in selector.groups:
            group = session.get(DeviceGroup, name)
            if group is None:
                raise InvalidRequestError(f"group {name} is not known")
            explicit.extend(group.device_ids)
    if explicit is None:
        devices = list(session.exec(select(Device).where(Device.profile == bundle.profile)).all())
    else:
        devices = []
        for device_id in dict.fromkeys(explicit):
            device = session.get(Device, device_id)
            if device is None:
                raise InvalidRequestError(f"device {device_id} is not known")
            if device.profile != bundle.profile:
                raise InvalidRequestError(
                    f"device {device_id} has profile {device.profile}; "
                    f"bundle {bundle.id} is built for {bundle.profile}"
                )
            devices.append(device)
    if selector.labels:
        wanted = selector.labels.items()
        devices = [d for d in devices if wanted <= (d.labels or {}).items()]
    # Online devices first, so the canary is a device that can answer now.
    devices.sort(key=lambda d: (not d.online, d.id))
    return devices


def _supersede_older(session: Session, rollout: Rollout, device_ids: list[str], actor: str) -> None:
    """Newest rollout wins: unfinished rows of these devices in running rollouts step aside."""
    rows = session.exec(
        select(RolloutDevice, Rollout)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(
            col(RolloutDevice.device_id).in_(device_ids),
            col(RolloutDevice.rollout_id) != rollout.id,
            col(Rollout.state).in_([*RUNNING_ROLLOUT_STATES, "draft"]),
            col(RolloutDevice.state).in_(["pending", *INSTALLING_STATES]),
        )
    ).all()
    taken: dict[int, list[str]] = {}
    now = utcnow()
    for row, older in rows:
        row.state = "superseded"
        row.reason = f"superseded by rollout {rollout.id}"
        row.updated_at = now
        session.add(row)
        assert older.id is not None
        taken.setdefault(older.id, []).append(row.device_id)
    for older_id, ids in taken.items():
        record_audit(
            session=session,
            actor=actor,
            action="rollout.supersede",
            rollout_id=older_id,
            reason=f"rollout {rollout.id} is newer and targets the same devices",
            detail={"device_ids": sorted(ids), "by_rollout": rollout.id},
        )


def create_rollout(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout_in: RolloutCreate,
    actor: str = "system",
) -> Rollout:
    """Create a rollout of ``rollout_in.bundle_id``; unless a draft, offer wave 1 now."""
    bundle = session.get(Bundle, rollout_in.bundle_id)
    if bundle is None:
        raise NotFoundError(f"bundle {rollout_in.bundle_id} not found")
    devices = _select_devices(session, bundle, rollout_in)
    if not devices:
        raise InvalidRequestError(f"no devices to roll bundle {bundle.id} out to")
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
    _supersede_older(session, rollout, [d.id for d in devices], actor)
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
        },
    )
    session.flush()
    outbox: Outbox = []
    if rollout_in.start:
        rollout.state = "in_progress"
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


# -- waves ------------------------------------------------------------------------


def wave_rows(session: Session, rollout: Rollout, wave: int | None = None) -> list[RolloutDevice]:
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout.id)
    if wave is not None:
        query = query.where(RolloutDevice.wave == wave)
    return list(session.exec(query.order_by(col(RolloutDevice.device_id))).all())


def _offer(bundle: Bundle, rollout: Rollout) -> BundleOffer:
    return BundleOffer(
        rollout_id=rollout.id, bundle_id=bundle.id, target=bundle.target, release=bundle.release
    )


def _shadow_start(bundle: Bundle, rollout: Rollout) -> DeviceCommand:
    return DeviceCommand(
        command="shadow_start",
        rollout_id=rollout.id,
        bundle_id=bundle.id,
        args={"target": bundle.target, "release": bundle.release},
    )


def start_wave(*, session: Session, rollout: Rollout, wave: int, actor: str) -> Outbox:
    """Move wave ``wave`` (0-based) to offered; the caller commits and sends the outbox."""
    bundle = session.get(Bundle, rollout.bundle_id)
    assert bundle is not None and rollout.id is not None
    now = utcnow()
    rollout.current_wave = wave
    rollout.phase = "installing"
    rollout.wave_started_at = now
    rollout.soak_started_at = None
    rollout.promoted = False
    rollout.updated_at = now
    session.add(rollout)
    rows = [r for r in wave_rows(session, rollout, wave) if r.state == "pending"]
    for row in rows:
        row.state = "shadowing" if rollout.strategy == "shadow" else "offered"
        row.offered_at = now
        row.updated_at = now
        session.add(row)
    record_audit(
        session=session,
        actor=actor,
        action="rollout.wave_start",
        rollout_id=rollout.id,
        reason=f"wave {wave + 1} of {len(rollout.wave_sizes)}",
        detail={"wave": wave + 1, "device_ids": [r.device_id for r in rows]},
    )
    session.flush()
    outbox: Outbox = []
    for row in rows:
        message = _shadow_start(bundle, rollout) if rollout.strategy == "shadow" else None
        outbox.append((row.device_id, message or _offer(bundle, rollout)))
    return outbox


def send_rollback(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout: Rollout,
    rows: Sequence[RolloutDevice],
    reason: str,
) -> list[str]:
    """Roll back (or stop shadowing on) the rows that got the bundle; cancel pending ones."""
    now = utcnow()
    sent: list[str] = []
    for row in rows:
        if row.state == "pending":
            row.state = "cancelled"
        elif row.state == "shadowing":
            publisher.publish_command(
                row.device_id,
                DeviceCommand(
                    command="shadow_stop",
                    rollout_id=rollout.id,
                    bundle_id=rollout.bundle_id,
                    reason=reason,
                ),
            )
            row.state = "cancelled"
            sent.append(row.device_id)
        elif row.state in INSTALLING_STATES or row.state in ("active", "rolling_back"):
            publisher.publish_command(
                row.device_id,
                DeviceCommand(
                    command="rollback",
                    rollout_id=rollout.id,
                    bundle_id=rollout.bundle_id,
                    reason=reason,
                ),
            )
            row.state = "rolling_back"
            sent.append(row.device_id)
        else:
            continue
        row.reason = reason
        row.updated_at = now
        session.add(row)
    return sent


def end_rollout(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout: Rollout,
    state: str,
    reason: str | None,
    actor: str,
    action: str,
    rollback_all: bool = False,
    detail: dict[str, Any] | None = None,
) -> None:
    """Abort or roll back: the current wave (or every wave) rolls back, later waves cancel."""
    rows = wave_rows(session, rollout)
    to_roll_back = [r for r in rows if rollback_all or r.wave == rollout.current_wave]
    to_cancel = [r for r in rows if r not in to_roll_back and r.state == "pending"]
    text = reason or action
    sent = send_rollback(
        session=session, publisher=publisher, rollout=rollout, rows=to_roll_back, reason=text
    )
    send_rollback(
        session=session, publisher=publisher, rollout=rollout, rows=to_cancel, reason=text
    )
    rollout.state = state
    rollout.phase = "done"
    rollout.reason = text
    rollout.updated_at = utcnow()
    session.add(rollout)
    record_audit(
        session=session,
        actor=actor,
        action=action,
        rollout_id=rollout.id,
        reason=text,
        detail=(detail or {}) | {"rolled_back": sent, "wave": rollout.current_wave + 1},
    )


# -- gates -------------------------------------------------------------------------


def wave_verdict(
    session: Session, rollout: Rollout, wave: int, *, now: datetime | None = None
) -> GateVerdict:
    """Gate values for wave ``wave`` at ``now``, from its rows and the events since it started.

    While the wave soaks, the time since the soak began decides how long the gates
    may still wait for evidence (``services.gates``).
    """
    rows = wave_rows(session, rollout)
    members = [r.device_id for r in rows if r.wave == wave and r.state not in INACTIVE_ROW_STATES]
    running = {r.device_id for r in rows if r.wave == wave and r.state in ("active", "shadowing")}
    reporting: set[str] = set()
    finished = [r for r in rows if r.wave == wave and r.state in FINISHED_STATES | {"rolling_back"}]
    failed = [r for r in finished if r.state in FAILED_STATES | {"rolling_back"}]
    gates = RolloutGates.model_validate(rollout.gates or {})
    since = aware(rollout.wave_started_at or rollout.created_at)
    everyone = [r.device_id for r in rows]
    candidate: list[dict[str, Any]] = []
    baseline: list[dict[str, Any]] = []
    shadow: list[dict[str, Any]] = []
    needs_events = any(
        v is not None
        for v in (gates.max_error_rate, gates.max_p95_latency_ratio, gates.min_agreement)
    ) or (gates.min_inferences > 0)
    if needs_events and everyone:
        events = session.exec(
            select(Event.device_id, Event.kind, Event.bundle_id, Event.data).where(
                col(Event.kind).in_(["inference", "shadow"]),
                col(Event.device_id).in_(everyone),
                col(Event.ts) >= since,
            )
        ).all()
        member_set = set(members)
        for device_id, kind, bundle_id, raw in events:
            data: dict[str, Any] = dict(raw or {})
            if kind == "shadow":
                about = data.get("bundle_id") or bundle_id
                if device_id in member_set and about == rollout.bundle_id:
                    shadow.append(data)
                    if rollout.strategy == "shadow":
                        reporting.add(device_id)
            elif bundle_id == rollout.bundle_id:
                if device_id in member_set:
                    candidate.append(data)
                    reporting.add(device_id)
            elif bundle_id is not None:
                baseline.append(data)
    if rollout.strategy == "shadow":
        # The candidate only runs beside the active model: judge its shadow windows,
        # against the active model's own inference windows on the same devices.
        baseline = baseline + candidate
        candidate = [
            {
                "count": s.get("count", 0),
                "errors": 0,
                "latency_ms": s.get("latency_ms") or {},
                "window_s": s.get("window_s"),
            }
            for s in shadow
        ]
    soaking = rollout.phase == "soaking" and rollout.current_wave == wave
    elapsed = None
    if soaking and rollout.soak_started_at is not None:
        elapsed = ((now or utcnow()) - aware(rollout.soak_started_at)).total_seconds()
    return evaluate_gates(
        gates=gates,
        inputs=GateInputs(
            finished=len(finished),
            failed=len(failed),
            candidate=candidate,
            baseline=baseline,
            shadow=shadow,
            members=len(running),
            reporting=len(reporting & running),
            soak_elapsed_s=elapsed,
            soak_s=rollout.soak_seconds,
        ),
    )


# -- device reports -------------------------------------------------------------------


def _find_rollout_device(
    session: Session, device_id: str, report: InstallReport
) -> tuple[Rollout, RolloutDevice] | None:
    if report.rollout_id is not None:
        rollout = session.get(Rollout, report.rollout_id)
        row = session.get(RolloutDevice, (report.rollout_id, device_id))
        if rollout is None or row is None or rollout.bundle_id != report.bundle_id:
            return None
        return rollout, row
    # A report without a rollout id belongs to the newest rollout of that bundle.
    result = session.exec(
        select(Rollout, RolloutDevice)
        .join(RolloutDevice, col(RolloutDevice.rollout_id) == col(Rollout.id))
        .where(Rollout.bundle_id == report.bundle_id, RolloutDevice.device_id == device_id)
        .order_by(col(Rollout.id).desc())
    ).first()
    return None if result is None else (result[0], result[1])


def apply_install_report(
    *, session: Session, device_id: str, report: InstallReport
) -> RolloutDevice | None:
    """Record a device's install progress; None when it matches no rollout of ours.

    Only the device's row changes here: the orchestrator decides what the rollout
    does about it, on its next pass.
    """
    found = _find_rollout_device(session, device_id, report)
    if found is None:
        logger.info(
            "install report ignored device_id=%s bundle_id=%s rollout_id=%s",
            device_id,
            report.bundle_id,
            report.rollout_id,
        )
        return None
    rollout, row = found
    # Replicas share reports through a shared subscription, so two of one device's
    # reports can be applied at once: lock the row and judge the newest state.
    locked = session.get(
        RolloutDevice,
        (row.rollout_id, row.device_id),
        with_for_update=True,
        populate_existing=True,
    )
    assert locked is not None
    row = locked
    state = _REPORT_STATE.get(report.state, report.state)
    # A report can beat the commit of the wave that offered it (offers go out before
    # the commit), so ``pending`` in a running rollout still takes reports.
    late = (
        row.state in ("superseded", "cancelled")
        or (row.state == "pending" and rollout.state not in RUNNING_ROLLOUT_STATES)
        or (row.state in TERMINAL_DEVICE_STATES and state not in TERMINAL_DEVICE_STATES)
        or (row.state == "rolling_back" and state not in FAILED_STATES)
    )
    if late:
        logger.info(
            "late install report ignored device_id=%s rollout_id=%s state=%s current=%s",
            device_id,
            rollout.id,
            state,
            row.state,
        )
        return row
    now = utcnow()
    row.state = state
    row.reason = report.reason
    if report.install_seconds is not None:
        row.install_seconds = report.install_seconds
    row.updated_at = now
    session.add(row)
    if state == "active":
        device = session.get(Device, device_id)
        bundle = session.get(Bundle, rollout.bundle_id)
        if device is not None and bundle is not None:
            device.bundle_id = bundle.id
            device.release = bundle.release
            device.model = bundle.model
            device.model_version = bundle.model_version
            session.add(device)
    session.commit()
    session.refresh(row)
    return row


def reoffer_on_reconnect(*, session: Session, publisher: FleetPublisher, device_id: str) -> int:
    """A device came back online: offer again whatever is unfinished in running rollouts."""
    rows = session.exec(
        select(RolloutDevice, Rollout)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(
            RolloutDevice.device_id == device_id,
            Rollout.state == "in_progress",
            col(RolloutDevice.state).in_([*INSTALLING_STATES, "shadowing", "rolling_back"]),
        )
    ).all()
    sent = 0
    for row, rollout in rows:
        bundle = session.get(Bundle, rollout.bundle_id)
        if bundle is None:
            continue
        if row.state == "shadowing":
            publisher.publish_command(device_id, _shadow_start(bundle, rollout))
        elif row.state == "rolling_back":
            continue  # the command waits in the device's session
        else:
            publisher.publish_offer(device_id, _offer(bundle, rollout))
        sent += 1
        logger.info(
            "re-offered on reconnect device_id=%s rollout_id=%s state=%s",
            device_id,
            rollout.id,
            row.state,
        )
    return sent


# -- operator actions ------------------------------------------------------------------


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


def _require(rollout: Rollout, allowed: set[str], action: str) -> None:
    if rollout.state not in allowed:
        raise ConflictError(f"cannot {action} rollout {rollout.id}: it is {rollout.state}")


def act_on_rollout(
    *,
    session: Session,
    publisher: FleetPublisher,
    rollout_id: int,
    action: str,
    actor: str,
    reason: str | None = None,
) -> Rollout:
    """``start | pause | resume | promote | abort | rollback``, each audited."""
    rollout = claim_rollout(session, rollout_id, skip_locked=False)
    if rollout is None:
        raise NotFoundError(f"rollout {rollout_id} not found")
    now = utcnow()
    outbox: Outbox = []
    if action == "start":
        _require(rollout, {"draft"}, action)
        rollout.state = "in_progress"
        record_audit(session=session, actor=actor, action="rollout.start", rollout_id=rollout.id,
                     reason=reason)  # fmt: skip
        outbox = start_wave(session=session, rollout=rollout, wave=0, actor=actor)
    elif action == "pause":
        _require(rollout, {"in_progress"}, action)
        rollout.state = "paused"
        record_audit(session=session, actor=actor, action="rollout.pause", rollout_id=rollout.id,
                     reason=reason, detail={"wave": rollout.current_wave + 1})  # fmt: skip
    elif action == "resume":
        _require(rollout, {"paused"}, action)
        rollout.state = "in_progress"
        record_audit(session=session, actor=actor, action="rollout.resume", rollout_id=rollout.id,
                     reason=reason, detail={"wave": rollout.current_wave + 1})  # fmt: skip
    elif action == "promote":
        _require(rollout, {"in_progress", "paused"}, action)
        if rollout.phase != "awaiting_promotion":
            raise ConflictError(
                f"cannot promote rollout {rollout.id}: wave {rollout.current_wave + 1} "
                f"is {rollout.phase}, not awaiting promotion"
            )
        rollout.promoted = True
        record_audit(session=session, actor=actor, action="rollout.promote", rollout_id=rollout.id,
                     reason=reason, detail={"wave": rollout.current_wave + 1})  # fmt: skip
    elif action in ("abort", "rollback"):
        if action == "abort":
            _require(rollout, {"draft", "in_progress", "paused"}, action)
        else:
            _require(rollout, {"in_progress", "paused", "complete", "aborted", "failed"}, action)
        end_rollout(
            session=session,
            publisher=publisher,
            rollout=rollout,
            state="aborted" if action == "abort" else "rolled_back",
            reason=reason or f"{action} by {actor}",
            actor=actor,
            action=f"rollout.{action}",
            rollback_all=action == "rollback",
        )
    else:
        raise InvalidRequestError(f"unknown action {action}")
    rollout.updated_at = now
    session.add(rollout)
    session.commit()
    publish_outbox(publisher, outbox)
    session.refresh(rollout)
    return rollout


# -- reading -----------------------------------------------------------------------------


def list_rollouts(*, session: Session) -> Sequence[Rollout]:
    return session.exec(select(Rollout).order_by(col(Rollout.id))).all()


def get_rollout(*, session: Session, rollout_id: int) -> Rollout:
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
        if index == rollout.current_wave and rollout.soak_started_at is not None:
            soak_until = datetime.fromtimestamp(
                aware(rollout.soak_started_at).timestamp() + rollout.soak_seconds, UTC
            )
        waves.append(
            WavePublic(
                wave=index + 1,
                size=cumulative - previous,
                state=state,
                counts=dict(Counter(r.state for r in members)),
                gates=gates,
                soak_until=soak_until,
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
                updated_at=row.updated_at,
            )
            for row in rows
        ],
    )
