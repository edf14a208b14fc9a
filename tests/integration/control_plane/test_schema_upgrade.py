"""A database written by edgefleet 0.1 (``create_all``, before migrations) upgrades to
this release's schema and keeps every row, on SQLite and on PostgreSQL.

The fixture ``tests/fixtures/db/edgefleet-0.1-2026-12-07.sqlite`` was written by the
0.1 code itself (``tests/fixtures/db/make_edgefleet_0_1.py``). On PostgreSQL its rows
are loaded into the 0.1 schema (revision 0001, which builds exactly what 0.1's
``create_all`` did; the revision table is then dropped, as 0.1 had none).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from sqlalchemy import MetaData, create_engine, inspect, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col
from sqlmodel import select as sm_select

from edgefleet.control_plane.core.auth import ApiToken
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.migrate import alembic_config, current_revision, head_revision
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.core.tables import (
    DEFAULT_INSTALL_TIMEOUT_S,
    DEFAULT_WAVE_TIMEOUT_S,
    AuditEntry,
    Bundle,
    Device,
    EnrolmentToken,
    Event,
    ModelVersion,
    RepositoryMetadata,
    Rollout,
    RolloutDevice,
    TrustFloor,
)

FIXTURE = Path(__file__).parents[2] / "fixtures" / "db" / "edgefleet-0.1-2026-12-07.sqlite"
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _row_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        names = set(inspect(connection).get_table_names()) - {"alembic_version"}
        return {
            name: connection.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            for name in names
        }


def assert_every_row_kept(engine: Engine, before: dict[str, int]) -> None:
    with engine.connect() as connection:
        assert current_revision(connection) == head_revision()
    after = _row_counts(engine)
    assert {name: after[name] for name in before} == before
    with Session(engine) as s:
        devices = s.exec(sm_select(Device).order_by(col(Device.id))).all()
        assert [d.id for d in devices] == ["dev-0000", "dev-0001", "dev-0002"]
        assert devices[1].labels == {"site": "s1"} and devices[2].online is False
        assert _utc(devices[0].last_seen) == T0  # type: ignore[arg-type]

        rollout = s.get(Rollout, 1)
        assert rollout is not None
        assert (rollout.state, rollout.phase, rollout.waves) == ("complete", "done", [50, 100])
        assert rollout.wave_results == [{"wave": 1, "ok": True}]
        # The columns 0.1 lacked have their defaults.
        assert rollout.install_timeout_s == DEFAULT_INSTALL_TIMEOUT_S
        assert rollout.wave_timeout_s == DEFAULT_WAVE_TIMEOUT_S
        assert rollout.wave_deadline_at is None
        members = s.exec(sm_select(RolloutDevice).order_by(col(RolloutDevice.device_id))).all()
        assert [(m.device_id, m.state) for m in members] == [
            ("dev-0000", "active"),
            ("dev-0001", "active"),
            ("dev-0002", "failed"),
        ]
        for m in members:
            assert (m.deadline_at, m.paused_at, m.wave_deadline_at) == (None, None, None)
            assert (m.timed_out_in, m.late_state) == (None, None)

        events = s.exec(sm_select(Event).order_by(col(Event.event_id))).all()
        assert [e.data for e in events] == [{"n": i} for i in range(4)]
        audit = s.exec(sm_select(AuditEntry).order_by(col(AuditEntry.id))).all()
        assert [(a.action, a.target) for a in audit] == [
            ("rollout.create", "digits-1-x86"),
            ("token.create", "ops"),
        ]
        assert audit[0].detail == {"devices": 3}
        keys = s.exec(sm_select(RepositoryMetadata).order_by(col(RepositoryMetadata.role))).all()
        assert {(k.role, k.version) for k in keys} == {
            ("root", 1), ("snapshot", 1), ("targets", 1), ("timestamp", 1)
        }  # fmt: skip
        assert all(k.data.startswith(b"{") for k in keys)
        assert s.get(TrustFloor, "targets") is not None
        assert s.exec(sm_select(EnrolmentToken)).one().used_by == "dev-0000"
        assert s.exec(sm_select(ApiToken)).one().name == "admin"
        assert s.exec(sm_select(ModelVersion)).one().sha256 == "b" * 64
        assert s.exec(sm_select(Bundle)).one().manifest == {"schema": 1, "model": "digits"}
        # The upgraded database takes new rows, with the new columns.
        s.add(Rollout(bundle_id="digits-1-x86", install_timeout_s=60.0))
        s.commit()


def test_a_0_1_sqlite_database_upgrades_keeping_every_row(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    database = tmp_path / "control-plane.db"
    shutil.copyfile(FIXTURE, database)
    engine = make_engine(settings)
    before = _row_counts(engine)
    assert before["event"] == 4 and before["repository_metadata"] == 4
    create_db_and_tables(engine)  # what start-up does
    assert_every_row_kept(engine, before)


def test_a_0_1_postgresql_database_upgrades_keeping_every_row(tmp_path: Path, pg_url: str) -> None:
    engine = make_engine(Settings(data_dir=tmp_path, database_url=pg_url))
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.execute(text("DROP TABLE alembic_version"))  # as 0.1's create_all left it
    old = create_engine(f"sqlite:///{FIXTURE}")
    source, target = MetaData(), MetaData()
    source.reflect(old)
    target.reflect(engine)
    with old.connect() as read, engine.begin() as write:
        for table in target.sorted_tables:
            rows = [dict(r._mapping) for r in read.execute(select(source.tables[table.name]))]
            if rows:
                write.execute(table.insert(), rows)
        for table in target.sorted_tables:  # serial columns continue after the copied ids
            for column in table.primary_key.columns:
                if column.autoincrement is True or (
                    column.autoincrement == "auto" and column.type.python_type is int
                ):
                    write.execute(
                        text(
                            f"SELECT setval(pg_get_serial_sequence('\"{table.name}\"', "
                            f"'{column.name}'), coalesce(max(\"{column.name}\"), 0) + 1, false) "
                            f'FROM "{table.name}"'
                        )
                    )
    old.dispose()
    before = _row_counts(engine)
    assert before["event"] == 4
    create_db_and_tables(engine)
    assert_every_row_kept(engine, before)


def test_replicas_starting_together_on_postgresql_migrate_once(tmp_path: Path, pg_url: str) -> None:
    """Each replica's start-up runs the migrations under one advisory lock: the second
    waits for the first, then finds the database at head."""
    import threading

    engines = [make_engine(Settings(data_dir=tmp_path, database_url=pg_url)) for _ in range(3)]
    with engines[0].begin() as connection:  # 0.1's database, so there is work to do
        command.upgrade(alembic_config(connection), "0001")
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(engines))

    def start(engine: Engine) -> None:
        barrier.wait(timeout=30)
        try:
            create_db_and_tables(engine)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with engines[0].connect() as connection:
        assert current_revision(connection) == head_revision()
        versions = connection.execute(text("SELECT count(*) FROM alembic_version")).scalar_one()
        assert versions == 1
    for engine in engines:
        engine.dispose()
