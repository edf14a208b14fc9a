"""``db``, ``backup`` and ``restore``: the control plane's database schema and its backups.

They work on the database and shared directory directly (``--data-dir``,
``EDGEFLEET_DATABASE_URL``, ``EDGEFLEET_SHARED_DIR``, ``EDGEFLEET_KEY_PASSPHRASE``),
not through the API. ``db upgrade`` and ``backup`` are safe while replicas run;
``restore`` wants the control plane stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgefleet.control_plane.cli.options import DatabaseOption, DataDirOption, JsonOption
from edgefleet.control_plane.cli.output import console, fail

if TYPE_CHECKING:
    from edgefleet.control_plane.core.settings import Settings

db_app = typer.Typer(no_args_is_help=True, help="The control plane's database schema.")


def _settings(data_dir: Path, database_url: str | None) -> Settings:
    from edgefleet.control_plane.core.settings import Settings

    return Settings(data_dir=data_dir, database_url=database_url)


@db_app.command("upgrade")
def db_upgrade(
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
) -> None:
    """Bring the database to this release's schema (creates an empty one), keeping every row."""
    from edgefleet.control_plane.core.db import make_engine
    from edgefleet.control_plane.core.migrate import DatabaseSchemaError, prepare_database

    engine = make_engine(_settings(data_dir, database_url))
    try:
        revision = prepare_database(engine, auto_upgrade=True)
    except DatabaseSchemaError as e:
        raise fail(e) from e
    finally:
        engine.dispose()
    console.print(f"database at schema revision {revision}")


@db_app.command("status")
def db_status(
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """The database's schema revision against the one this release needs."""
    import json

    from edgefleet.control_plane.core.db import make_engine
    from edgefleet.control_plane.core.migrate import current_revision, head_revision

    engine = make_engine(_settings(data_dir, database_url))
    try:
        with engine.connect() as connection:
            current = current_revision(connection)
    finally:
        engine.dispose()
    head = head_revision()
    if as_json:
        console.print_json(json.dumps({"current": current, "head": head}))
    else:
        state = "up to date" if current == head else "run edgefleet db upgrade"
        console.print(f"database revision {current}, this release {head}: {state}")


def backup(
    path: Annotated[Path, typer.Argument(help="the tar archive to write")],
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
) -> None:
    """Back up the database, the signed repository and its keys into one tar archive."""
    from edgefleet.control_plane.services.backup import BackupError
    from edgefleet.control_plane.services.backup import backup as write_backup

    try:
        manifest = write_backup(settings=_settings(data_dir, database_url), path=path)
    except BackupError as e:
        raise fail(e) from e
    versions = ", ".join(f"{r} v{v}" for r, v in sorted(manifest.repository_versions.items()))
    console.print(
        f"wrote {path}: {manifest.dialect} database at revision {manifest.schema_revision}, "
        f"{len(manifest.members)} files; repository {versions or 'empty'}"
    )


def restore(
    path: Annotated[Path, typer.Argument(help="a tar archive written by edgefleet backup")],
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
) -> None:
    """Restore a backup (control plane stopped); re-signs past what devices already trust."""
    from edgefleet.control_plane.services.backup import BackupError
    from edgefleet.control_plane.services.backup import restore as read_backup

    try:
        result = read_backup(settings=_settings(data_dir, database_url), path=path)
    except BackupError as e:
        raise fail(e) from e
    console.print(f"restored {path} (written {result.manifest.created_at})")
    for aside in result.moved_aside:
        console.print(f"kept the replaced files in {aside}")
    if result.bumped:
        console.print("re-signed " + ", ".join(f"{r} v{v}" for r, v in result.bumped.items()))
    if result.bump_error:
        console.print(
            f"root not re-signed: {result.bump_error}; run edgefleet repo bump where the "
            "root keys are"
        )
