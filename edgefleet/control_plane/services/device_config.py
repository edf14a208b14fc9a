"""Remote configuration: desired values per scope, the effective merge per device, what
devices report, and sending each device its desired configuration.

A change to a scope (``set_config``) is checked key by key against the shared schema
(``edgefleet.device_config``), refused as a whole with every bad key's reason, or
stored with a new version and audited (``config.set``) in one commit. Then each device
it reaches gets its effective merge again; a device whose merge changed gets it with
that version, retained on ``down/config`` so a device that is away finds it when it
reconnects. A device that comes online (new, or back) is brought up to date the same
way (``sync_device``), which also covers group membership changed since.

Versions grow across every scope (the next is one above the highest written), so a
device's desired version only grows whichever scope changed. Two replicas changing
configuration in the same instant may write the same version; a device takes a
version equal to the one it holds, so the later message still applies.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import func
from sqlmodel import Session, col, select

from edgefleet.control_plane.core.errors import InvalidRequestError, NotFoundError
from edgefleet.control_plane.core.tables import (
    ConfigChange,
    ConfigScope,
    ConfigScopeKind,
    ConfigScopePublic,
    Device,
    DeviceConfig,
    DeviceConfigPublic,
    DeviceGroup,
    utcnow,
)
from edgefleet.control_plane.services.audit import record_audit
from edgefleet.device_config import MAX_KEYS, Effective, device_layers, diff, merge, validate
from edgefleet.messages import ConfigReport, DesiredConfig

logger = logging.getLogger(__name__)

FLEET = ""
"""The fleet scope's name."""


class ConfigPublisher(Protocol):
    """What sends a device its desired configuration (the fleet link)."""

    def publish_config(self, device_id: str, desired: DesiredConfig) -> None: ...


def _row(session: Session, scope: ConfigScopeKind, name: str) -> ConfigScope | None:
    return session.get(ConfigScope, (scope, name))


def _check_scope(session: Session, scope: ConfigScopeKind, name: str) -> None:
    if scope == "group" and session.get(DeviceGroup, name) is None:
        raise NotFoundError(f"group {name} not found")
    if scope == "device" and session.get(Device, name) is None:
        raise NotFoundError(f"device {name} not found")


def get_scope(*, session: Session, scope: ConfigScopeKind, name: str = FLEET) -> ConfigScopePublic:
    """What ``scope`` ``name`` desires (empty, version 0, when it never set anything).

    Raises:
        NotFoundError: no such group or device.
    """
    _check_scope(session, scope, name)
    row = _row(session, scope, name)
    if row is None:
        return ConfigScopePublic(scope=scope, name=name, settings={}, version=0)
    return ConfigScopePublic(
        scope=scope,
        name=name,
        settings=dict(row.settings),
        version=row.version,
        updated_at=row.updated_at,
        updated_by=row.updated_by,
    )


def _next_version(session: Session) -> int:
    highest_scope = session.exec(select(func.max(ConfigScope.version))).one()
    highest_device = session.exec(select(func.max(DeviceConfig.desired_version))).one()
    return max(highest_scope or 0, highest_device or 0) + 1


def set_config(
    *,
    session: Session,
    publisher: ConfigPublisher,
    scope: ConfigScopeKind,
    name: str = FLEET,
    change: ConfigChange,
    actor: str,
) -> ConfigScopePublic:
    """Set and unset keys of one scope, as one new version; audited; sent to the devices
    whose effective configuration it changes.

    Raises:
        NotFoundError: no such group or device.
        InvalidRequestError: a key or value the schema refuses (every one named, with
            its reason), a key both set and unset, or nothing to change.
    """
    _check_scope(session, scope, name)
    accepted, refused = validate(change.set)
    both = sorted(set(change.set) & set(change.unset))
    for key in both:
        refused[key] = "both set and unset"
    if refused:
        reasons = "; ".join(f"{key}: {reason}" for key, reason in sorted(refused.items()))
        raise InvalidRequestError(f"configuration refused: {reasons}")
    if not accepted and not change.unset:
        raise InvalidRequestError("nothing to change: give keys to set or unset")
    row = _row(session, scope, name) or ConfigScope(scope=scope, name=name)
    settings = {k: v for k, v in row.settings.items() if k not in change.unset} | accepted
    if len(settings) > MAX_KEYS:
        raise InvalidRequestError(f"a scope holds at most {MAX_KEYS} keys")
    version = _next_version(session)
    row.settings, row.version = dict(sorted(settings.items())), version
    row.updated_at, row.updated_by = utcnow(), actor
    session.add(row)
    record_audit(
        session=session,
        actor=actor,
        action="config.set",
        reason=change.reason,
        target=f"{scope}:{name}" if name else scope,
        detail={"version": version, "set": accepted, "unset": list(change.unset)},
    )
    session.commit()
    logger.info("config set scope=%s name=%s version=%d", scope, name, version)
    for device_id in _reached(session, scope, name):
        sync_device(session=session, publisher=publisher, device_id=device_id, version=version)
    return get_scope(session=session, scope=scope, name=name)


def _reached(session: Session, scope: ConfigScopeKind, name: str) -> Sequence[str]:
    if scope == "device":
        return [name]
    if scope == "group":
        group = session.get(DeviceGroup, name)
        return list(group.device_ids) if group else []
    return session.exec(select(Device.id).order_by(col(Device.id))).all()


def effective_config(*, session: Session, device_id: str) -> Effective:
    """The merge of the fleet's, the device's groups' and the device's own values."""
    groups = session.exec(select(DeviceGroup)).all()
    mine = [g.name for g in groups if device_id in g.device_ids]
    scopes = {
        (row.scope, row.name): row.settings
        for row in session.exec(select(ConfigScope)).all()
        if (row.scope, row.name) in {("fleet", FLEET), ("device", device_id)}
        or (row.scope == "group" and row.name in mine)
    }
    return merge(
        device_layers(
            scopes.get(("fleet", FLEET), {}),
            {g: scopes[("group", g)] for g in mine if ("group", g) in scopes},
            scopes.get(("device", device_id), {}),
        )
    )


def sync_device(
    *,
    session: Session,
    publisher: ConfigPublisher,
    device_id: str,
    version: int | None = None,
) -> DeviceConfig | None:
    """Send ``device_id`` its effective configuration if it changed since last sent.

    Args:
        version: the version to send it as; the next free one when None.

    Returns:
        The device's row when something was sent, else None (nothing changed, or
        nothing was ever desired of it).
    """
    effective = effective_config(session=session, device_id=device_id)
    row = session.get(DeviceConfig, device_id, with_for_update=True)
    if row is None and not effective.values:
        return None
    if row is not None and row.desired == effective.values and row.desired_version > 0:
        if row.sources != effective.sources:
            row.sources = effective.sources
            session.add(row)
            session.commit()
        return None
    row = row or DeviceConfig(device_id=device_id)
    row.desired_version = version if version is not None else _next_version(session)
    row.desired, row.sources = effective.values, effective.sources
    row.published_at = utcnow()
    session.add(row)
    session.commit()
    desired = DesiredConfig(version=row.desired_version, values=dict(effective.values))
    publisher.publish_config(device_id, desired)
    return row


def sync_devices(*, session: Session, publisher: ConfigPublisher, device_ids: Iterable[str]) -> int:
    """``sync_device`` for each of ``device_ids``; how many were sent a new version."""
    return sum(
        sync_device(session=session, publisher=publisher, device_id=d) is not None
        for d in device_ids
    )


def record_report(*, session: Session, device_id: str, report: ConfigReport) -> DeviceConfig:
    """Store what ``device_id`` reported of its desired configuration (the newest wins)."""
    row = session.get(DeviceConfig, device_id, with_for_update=True) or DeviceConfig(
        device_id=device_id
    )
    if row.reported_version is not None and report.version < row.reported_version:
        logger.info(
            "config report older than the one stored device_id=%s version=%d stored=%d",
            device_id,
            report.version,
            row.reported_version,
        )
        return row
    row.reported_version = report.version
    row.applied_version = report.applied_version
    row.applied = dict(report.applied)
    row.refused = dict(report.refused)
    row.pending_restart = list(report.pending_restart)
    row.reported_at = utcnow()
    session.add(row)
    session.commit()
    if report.refused:
        logger.warning(
            "config refused by device device_id=%s version=%d keys=%s",
            device_id,
            report.version,
            sorted(report.refused),
        )
    return row


def device_config(*, session: Session, device_id: str) -> DeviceConfigPublic:
    """A device's own scope, its effective merge, what it reported, and where they differ.

    Raises:
        NotFoundError: no such device.
    """
    _check_scope(session, "device", device_id)
    effective = effective_config(session=session, device_id=device_id)
    return _public(session, device_id, effective, session.get(DeviceConfig, device_id))


def list_device_configs(*, session: Session) -> list[DeviceConfigPublic]:
    """Every device's configuration view, by device id."""
    rows = {r.device_id: r for r in session.exec(select(DeviceConfig)).all()}
    return [
        _public(session, d, effective_config(session=session, device_id=d), rows.get(d))
        for d in session.exec(select(Device.id).order_by(col(Device.id))).all()
    ]


def _public(
    session: Session, device_id: str, effective: Effective, row: DeviceConfig | None
) -> DeviceConfigPublic:
    own = _row(session, "device", device_id)
    applied: dict[str, Any] = dict(row.applied) if row else {}
    reported = row is not None and row.reported_version is not None
    differences = diff(effective.values, applied) if reported else {}
    desired_version = row.desired_version if row else 0
    return DeviceConfigPublic(
        device_id=device_id,
        own=dict(own.settings) if own else {},
        desired_version=desired_version,
        desired=effective.values,
        sources=effective.sources,
        reported_version=row.reported_version if row else None,
        applied_version=row.applied_version if row else None,
        applied=applied,
        refused=dict(row.refused) if row else {},
        pending_restart=list(row.pending_restart) if row else [],
        reported_at=row.reported_at if row else None,
        in_sync=(
            row is not None
            and row.applied_version == desired_version
            and not row.refused
            and not differences
        ),
        diff={k: {"desired": d, "reported": r} for k, (d, r) in differences.items()},
    )
