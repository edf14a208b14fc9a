"""The control plane's schema migrations (Alembic), shipped as package data.

Each revision in ``versions/`` moves the database one step; ``0001`` is the schema
of edgefleet 0.1 (the tables ``create_all`` made before migrations existed).

A change to ``edgefleet/control_plane/core/tables.py`` needs a revision, or
``tests/unit/control_plane/core/test_migrations.py::test_migrations_match_the_tables``
fails. To write one, from the repository root::

    python -m edgefleet.control_plane.core.migrate revision "what changed"

which upgrades a scratch SQLite database to the current head, autogenerates the
difference against the tables into ``versions/`` as ``NNNN_what_changed.py`` and runs
ruff on it. Read it before committing: give new non-null columns a
``server_default`` so existing rows get a value (SQLite refuses a NOT NULL column
without one, and ``tests/integration/control_plane/test_schema_upgrade.py``, which
upgrades a database written by 0.1, fails). Revisions must not import the tables
module: they describe the schema as it was at their revision.
"""
