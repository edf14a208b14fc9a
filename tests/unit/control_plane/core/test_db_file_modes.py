"""The control plane's SQLite database is its own, whatever umask it was started with."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlmodel import Session

from edgefleet.control_plane.core.auth import issue_token
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.settings import Settings


def test_database_and_its_wal_files_are_0600_under_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        settings = Settings(data_dir=tmp_path / "cp")
        engine = make_engine(settings)
        create_db_and_tables(engine)
        with Session(engine) as session:
            issue_token(session=session, name="modes", role="viewer")
            database = tmp_path / "cp" / "control-plane.db"
            for path in (database, Path(f"{database}-wal"), Path(f"{database}-shm")):
                assert path.exists(), path
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        engine.dispose()
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "cp").stat().st_mode) == 0o700
