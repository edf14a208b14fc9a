"""Which devices a rollout reaches, in which waves, and which older rollouts step aside.

A rollout picks its devices with a selector (always narrowed to the bundle's
profile) and splits them into cumulative waves (``[1, "10%", "50%", "100%"]``).
The newest rollout wins a device: see ``supersede_older``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import InvalidRequestError
from edgefleet.control_plane.core.tables import (
    Bundle,
    Device,
    DeviceGroup,
    Rollout,
    RolloutCreate,
    RolloutDevice,
    RolloutSelector,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.states.install import INSTALLING_STATES
from edgefleet.states.rollout import RUNNING_ROLLOUT_STATES

_COUNT = re.compile(r"^[1-9][0-9]{0,6}$")
_PERCENT = re.compile(r"^(100|[1-9][0-9]?)(\.[0-9]+)?%$|^0\.[0-9]*[1-9][0-9]*%$")


def wave_sizes(specs: Sequence[int | str], total: int) -> list[int]:
    """Cumulative device counts per wave; waves adding nobody are dropped, 100 % appended.

    Args:
        specs: per wave, a cumulative count (``3``, ``"3"``) or share (``"10%"``).
        total: how many devices the rollout has.

    Raises:
        InvalidRequestError: no devices, or a spec that is neither a count nor a share.
    """
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


def select_devices(session: Session, bundle: Bundle, rollout_in: RolloutCreate) -> list[Device]:
    """The devices ``rollout_in`` selects for ``bundle``, online ones first.

    Explicit device ids and groups are added up, then narrowed by labels; without
    either, every device of the bundle's profile is a candidate.

    Raises:
        InvalidRequestError: an unknown device or group, or a device (or selector)
            whose profile is not the bundle's.
    """
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


def supersede_older(session: Session, rollout: Rollout, device_ids: list[str], actor: str) -> None:
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
