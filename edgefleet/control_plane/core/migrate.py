"""Bring a database to the schema of this release, keeping every row.

The revisions are Alembic's, shipped in ``migrations/`` (package data, found through
``importlib.resources`` so an installed wheel has them too). ``prepare_database`` is
what start-up and ``edgefleet db upgrade`` call:

* an empty database is created by the migrations (``upgrade head``);
* a database at an older revision is upgraded when ``auto_upgrade`` allows, and
  otherwise refused with :class:`DatabaseOutOfDateError`;
* a database made by ``create_all`` before migrations existed (tables but no
  ``alembic_version``) is compared with each revision's schema, stamped with the
  newest one it matches, then upgraded; one that matches none is refused;
* a database at a revision this release does not know (written by a newer one) is
  refused.

On PostgreSQL the whole check-and-upgrade runs in one transaction under an advisory
lock, so replicas that start together migrate once: the second waits, then finds the
database at head. To write a new revision after changing the tables::

    python -m edgefleet.control_plane.core.migrate revision "what changed"
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

from edgefleet.control_plane.core.errors import ControlPlaneError

__all__ = [
    "DatabaseOutOfDateError",
    "DatabaseSchemaError",
    "current_revision",
    "head_revision",
    "prepare_database",
]

logger = logging.getLogger(__name__)

# pg_advisory_xact_lock key: "edgefleet-migrate", as a stable signed 64-bit number.
_ADVISORY_LOCK_KEY = 0x6564676566_6C74


class DatabaseSchemaError(ControlPlaneError):
    """The database's schema is not one this release can bring to its own."""


class DatabaseOutOfDateError(DatabaseSchemaError):
    """The database is at an older revision and automatic upgrades are off."""

    def __init__(self, current: str | None, head: str) -> None:
        super().__init__(
            f"the database is at schema revision {current}, this release needs {head}: "
            "back it up (edgefleet backup) and run edgefleet db upgrade "
            "(or set EDGEFLEET_DB_AUTO_UPGRADE=true)"
        )
        self.current = current
        self.head = head


def _script_location() -> str:
    return str(resources.files("edgefleet.control_plane.core") / "migrations")


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic configuration for the shipped revisions, on ``connection`` or ``url``."""
    config = Config()
    config.set_main_option("script_location", _script_location())
    if url is not None:
        config.set_main_option("sqlalchemy.url", url)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _user_tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def _shape(connection: Connection) -> dict[str, frozenset[str]]:
    """Each table's column names: what a ``create_all`` database is matched on."""
    inspector = inspect(connection)
    return {
        name: frozenset(c["name"] for c in inspector.get_columns(name))
        for name in _user_tables(connection)
    }


def _revision_shapes() -> Iterator[tuple[str, dict[str, frozenset[str]]]]:
    """Each revision, newest first, with the tables a scratch database gets from it."""
    script = ScriptDirectory.from_config(alembic_config())
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'shape.db'}")
        try:
            with engine.begin() as connection:
                command.upgrade(alembic_config(connection), "head")
            for rev in script.walk_revisions():
                with engine.begin() as connection:
                    command.downgrade(alembic_config(connection), rev.revision)
                    yield rev.revision, _shape(connection)
        finally:
            engine.dispose()


def _legacy_revision(connection: Connection) -> str:
    """The revision a database made by ``create_all`` (no ``alembic_version``) is at."""
    found = _shape(connection)
    for revision, shape in _revision_shapes():
        if found == shape:
            return revision
    raise DatabaseSchemaError(
        "the database has tables but no schema revision, and they match no edgefleet "
        f"release's schema (tables: {', '.join(sorted(found))}); restore a backup or "
        "point EDGEFLEET_DATABASE_URL at an empty database"
    )


@contextmanager
def _migration_connection(engine: Engine) -> Iterator[Connection]:
    """One transaction; on PostgreSQL under the migration advisory lock, on SQLite with
    foreign-key enforcement off (a batch migration copies tables others refer to)."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                if engine.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                    )
                yield connection
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()


def prepare_database(engine: Engine, *, auto_upgrade: bool = True) -> str:
    """Bring the database behind ``engine`` to this release's schema; returns its revision.

    Raises :class:`DatabaseOutOfDateError` when it is older and ``auto_upgrade`` is
    false, :class:`DatabaseSchemaError` when it cannot be brought there.
    """
    head = head_revision()
    known = {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}
    with _migration_connection(engine) as connection:
        current = current_revision(connection)
        if current is None and not _user_tables(connection):
            logger.info("creating the database schema revision=%s", head)
            command.upgrade(alembic_config(connection), "head")
            return head
        if current is None:
            current = _legacy_revision(connection)
            logger.info("database made before migrations matches revision=%s: stamped", current)
            command.stamp(alembic_config(connection), current)
        if current not in known:
            raise DatabaseSchemaError(
                f"the database is at schema revision {current}, which this release does not "
                "know: it was written by a newer edgefleet"
            )
        if current == head:
            return head
        if not auto_upgrade:
            raise DatabaseOutOfDateError(current, head)
        logger.info("upgrading the database schema from=%s to=%s", current, head)
        command.upgrade(alembic_config(connection), "head")
        return head


def _write_revision(message: str) -> None:
    """Autogenerate a revision: the tables against a scratch database at head."""
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'autogenerate.db'}"
        engine = create_engine(url)
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "head")
        engine.dispose()
        script = ScriptDirectory.from_config(alembic_config())
        rev_id = f"{len(list(script.walk_revisions())) + 1:04d}"
        written = command.revision(
            alembic_config(url=url), message, autogenerate=True, rev_id=rev_id
        )
    paths = [str(s.path) for s in (written if isinstance(written, list) else [written]) if s]
    for args in (["check", "--fix", "--quiet"], ["format", "--quiet"]):  # house style
        try:
            subprocess.run([sys.executable, "-m", "ruff", *args, *paths], check=False)
        except OSError:
            break
    print("wrote " + ", ".join(paths) + ": read it, and give new non-null columns a default")


if __name__ == "__main__":  # python -m edgefleet.control_plane.core.migrate revision "..."
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m edgefleet.control_plane.core.migrate revision "message"')
    _write_revision(sys.argv[2])
