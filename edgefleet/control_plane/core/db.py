"""Database engine and sessions: SQLite (WAL) by default, PostgreSQL by URL.

The SQLite file holds token hashes, certificate serials and every device's telemetry:
it is created 0600 in a 0700 directory (an existing one is tightened), and SQLite
gives its ``-wal`` and ``-shm`` files the database file's mode.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import Request
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

from edgefleet.control_plane.core import tables  # noqa: F401  (registers the tables)
from edgefleet.control_plane.core.migrate import prepare_database
from edgefleet.control_plane.core.settings import Settings


def make_engine(settings: Settings) -> Engine:
    """An engine for ``settings.database_url``; SQLite gets WAL and cross-thread use."""
    url = settings.sqlalchemy_url
    if url.startswith("sqlite"):
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        database = make_url(url).database
        if database and database != ":memory:":
            _make_private(Path(database))
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def _make_private(database: Path) -> None:
    """Create ``database`` empty at 0600 if missing; tighten it and its WAL files if not."""
    database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(database, os.O_WRONLY | os.O_CREAT, 0o600))
    for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
        if path.exists():
            os.chmod(path, 0o600)


def create_db_and_tables(engine: Engine, *, auto_upgrade: bool = True) -> None:
    """Bring the database to this release's schema through the migrations.

    Empty: created; older: upgraded unless ``auto_upgrade`` is false; made by
    ``create_all`` before migrations: stamped and upgraded (see ``core.migrate``).
    """
    prepare_database(engine, auto_upgrade=auto_upgrade)


def get_session(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request on the app's engine."""
    with Session(request.app.state.engine) as session:
        yield session
