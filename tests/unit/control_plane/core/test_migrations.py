"""The shipped migrations: they build exactly the tables, and start-up uses them."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from edgefleet.control_plane.core import tables  # noqa: F401  (registers the tables)
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.migrate import (
    DatabaseOutOfDateError,
    DatabaseSchemaError,
    alembic_config,
    current_revision,
    head_revision,
)
from edgefleet.control_plane.core.settings import Settings


def test_migrations_match_the_tables(tmp_path: Path) -> None:
    """A table change without a revision fails here: write one with
    ``python -m edgefleet.control_plane.core.migrate revision "what changed"``."""
    engine = create_engine(f"sqlite:///{tmp_path / 'head.db'}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "render_as_batch": True}
        )
        diff = compare_metadata(context, SQLModel.metadata)
    assert diff == [], (
        "the tables differ from the migrations' head; write a revision with "
        'python -m edgefleet.control_plane.core.migrate revision "what changed"'
    )


def test_migrations_downgrade_to_nothing_and_back(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'round.db'}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")
        command.downgrade(alembic_config(connection), "base")
        assert set(inspect(connection).get_table_names()) == {"alembic_version"}
        command.upgrade(alembic_config(connection), "head")
        assert current_revision(connection) == head_revision()


def test_an_empty_database_is_created_at_head(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    create_db_and_tables(engine)
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
        assert "rolloutdevice" in inspect(connection).get_table_names()
    create_db_and_tables(engine)  # again: nothing to do


def test_a_create_all_database_is_stamped_and_left_as_it_is(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    SQLModel.metadata.create_all(engine)
    create_db_and_tables(engine)
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()


def test_an_older_database_is_refused_when_auto_upgrade_is_off(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
    with pytest.raises(DatabaseOutOfDateError, match="edgefleet db upgrade"):
        create_db_and_tables(engine, auto_upgrade=False)
    create_db_and_tables(engine, auto_upgrade=True)
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()


def test_unknown_tables_without_a_revision_are_refused(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE something_else (id INTEGER PRIMARY KEY)"))
    with pytest.raises(DatabaseSchemaError, match="match no edgefleet"):
        create_db_and_tables(engine)


def test_a_revision_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    engine = make_engine(Settings(data_dir=tmp_path))
    create_db_and_tables(engine)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(DatabaseSchemaError, match="newer edgefleet"):
        create_db_and_tables(engine)
