"""Alembic's environment: the tables' metadata, and the connection the caller passes.

Run through ``edgefleet.control_plane.core.migrate`` (``edgefleet db upgrade`` and the
start-up check), which hands over an open connection in ``config.attributes``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from edgefleet.control_plane.core import auth, tables  # noqa: F401  (register the tables)

config = context.config
target_metadata = SQLModel.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: copy-and-move instead
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url for the migrations")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
