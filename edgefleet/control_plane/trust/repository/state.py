"""What the repository keeps in the database: signed versions, trust floors, lifetimes.

Every signed version of every role is a row of ``repository_metadata``; what devices
report trusting is a row of ``trust_floor`` per role. A signing step (see
:mod:`.signed`) reads both at its start into a ``_Step``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, create_engine, select
from tuf.api.metadata import Metadata, Root, Snapshot, Targets, Timestamp

from edgefleet.control_plane.core.tables import RepositoryMetadata, TrustFloor, utcnow
from edgefleet.control_plane.trust.keyring import ROLES, SigningError

EXPIRY = {
    Root.type: timedelta(days=365),
    Targets.type: timedelta(days=90),
    Snapshot.type: timedelta(days=7),
    Timestamp.type: timedelta(days=1),
}
MAX_VERSION = 2**31 - 1
"""Largest version a device may report (the database column is a 32-bit integer)."""


class TrustFloorError(SigningError):
    """Signing would publish a version at or below one a device already trusts.

    The repository's state is older than what the fleet has seen (restored from a
    backup): ``bump`` re-signs past what devices trust.
    """

    def __init__(self, role: str, version: int, floor: int, device_id: str) -> None:
        super().__init__(
            f"{role} version {version} is not above version {floor} that device "
            f"{device_id} already trusts: the repository is older than what devices have "
            "seen (restored from a backup?); run `edgefleet repo bump`"
        )
        self.role, self.version, self.floor, self.device_id = role, version, floor, device_id


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def standalone_engine(path: Path) -> Engine:
    """A SQLite database of the repository's own, for a repository used without a control plane."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30}
    )

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def create_repository_tables(engine: Engine) -> None:
    """The repository's tables (the control plane creates them with all the others)."""
    names = ("repository_metadata", "repository_lock", "trust_floor")
    SQLModel.metadata.create_all(engine, tables=[SQLModel.metadata.tables[n] for n in names])


# -- trust floors: what devices already trust ---------------------------------------


def raise_trust_floor(*, session: Session, device_id: str, versions: Mapping[str, int]) -> None:
    """Record the metadata versions ``device_id`` trusts; each role's floor only goes up.

    Idempotent and safe under concurrency (one upsert per role, raised only by a
    higher version). Unknown roles and implausible versions are ignored. The caller
    commits.
    """
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    now = utcnow()
    for role, version in versions.items():
        if role not in ROLES or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
            continue
        statement = insert(TrustFloor).values(
            role=role, version=version, device_id=device_id, reported_at=now
        )
        statement = statement.on_conflict_do_update(
            index_elements=["role"],
            set_={
                "version": statement.excluded.version,
                "device_id": statement.excluded.device_id,
                "reported_at": statement.excluded.reported_at,
            },
            where=col(TrustFloor.version) < statement.excluded.version,
        )
        session.execute(statement)


def trust_floors(session: Session) -> dict[str, tuple[int, str]]:
    """Per role: (highest version a device trusts, the device that reported it)."""
    return {f.role: (f.version, f.device_id) for f in session.exec(select(TrustFloor)).all()}


@dataclass
class _State:
    """The latest signed version of each role, as read at the start of a step."""

    root: Metadata[Root] | None = None
    targets: Metadata[Targets] | None = None
    snapshot: Metadata[Snapshot] | None = None
    timestamp: Metadata[Timestamp] | None = None


@dataclass
class _Step:
    """One serialized signing step: what it signed, to be stored and published."""

    session: Session
    floors: dict[str, tuple[int, str]]
    signed: list[tuple[str, int, bytes]] = field(default_factory=list)
    filling_root_chain: bool = False

    def floor(self, role: str) -> int:
        return self.floors.get(role, (0, ""))[0]


def _latest(session: Session) -> _State:
    state = _State()
    for role in ROLES:
        data = session.exec(
            select(RepositoryMetadata.data)
            .where(RepositoryMetadata.role == role)
            .order_by(col(RepositoryMetadata.version).desc())
            .limit(1)
        ).first()
        if data is not None:
            setattr(state, role, Metadata.from_bytes(bytes(data)))
    return state
