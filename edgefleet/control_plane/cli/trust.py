"""``trust``, ``keys`` and ``repo``: the signed repository devices trust, its keys,
and its versions across replicas.

``keys init`` and the ``repo`` commands work on the data directory and database
directly (before the control plane first starts, or beside running replicas); the
others go through the API.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from edgefleet.control_plane.cli.options import (
    DEFAULT_API,
    ApiOption,
    DatabaseOption,
    DataDirOption,
    JsonOption,
)
from edgefleet.control_plane.cli.output import api_errors, console, err_console, fail, table
from edgefleet.control_plane.client import ApiClient

if TYPE_CHECKING:
    from edgefleet.control_plane.trust.repository import SignedRepository

trust_app = typer.Typer(no_args_is_help=True, help="Trust material devices are given.")
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys of the bundle repository.")
repo_app = typer.Typer(
    no_args_is_help=True,
    help="The signed repository every replica shares (run where its database and "
    "shared directory are reachable; safe while replicas run).",
)


@trust_app.command("root")
def trust_root(
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write root.json")],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Save the current TUF root metadata, to give to devices at provisioning."""
    with api_errors(OSError), ApiClient(api) as client:
        output.write_bytes(client.trust_root())
    console.print(f"wrote {output}")


@keys_app.command("init")
def keys_init(
    data_dir: DataDirOption = Path(".edgefleet"),
    root_keys: Annotated[int, typer.Option(min=1, max=9)] = 3,
    root_threshold: Annotated[int, typer.Option(min=1, max=9)] = 2,
    passphrase: Annotated[
        str | None,
        typer.Option(envvar="EDGEFLEET_KEY_PASSPHRASE", help="encrypts the private keys"),
    ] = None,
) -> None:
    """Create the signed repository and its keys (before the control plane first starts)."""
    from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet.control_plane.trust.repository import SignedRepository

    settings = Settings(data_dir=data_dir)
    if (settings.repository_dir / "metadata" / "root.json").exists():
        raise fail(FileExistsError(f"a repository already exists in {settings.repository_dir}"))
    engine = make_engine(settings)
    create_db_and_tables(engine)
    try:
        repository = SignedRepository(
            settings.repository_dir,
            engine=engine,
            passphrase=passphrase.encode() if passphrase else None,
            root_keys=root_keys,
            root_threshold=root_threshold,
        )
    except ValueError as e:
        raise fail(e) from e
    repository.init_or_load()
    _print_keys(repository.keys_summary())
    if not passphrase:
        err_console.print(
            Text.assemble(("warning:", "yellow"), " keys are not encrypted (no passphrase given)")
        )
    console.print(
        f"Move the root key files ({repository.keyring.keys_dir}/root-*.pem) offline; "
        f"{root_threshold} of them are needed to rotate or revoke keys."
    )


def _print_keys(summary: list[dict[str, Any]]) -> None:
    rows = [
        {
            "role": r["role"],
            "threshold": r["threshold"],
            "keyid": k["keyid"][:16],
            "kind": k["kind"],
            "available": k["available"],
            "expires": r["expires"],
        }
        for r in summary
        for k in r["keys"]
    ]
    console.print(
        table(rows, ["role", "threshold", "keyid", "kind", "available", "expires"], "keys")
    )


@keys_app.command("list")
def keys_list(api: ApiOption = DEFAULT_API) -> None:
    """Roles, thresholds and keys of the running control plane's repository."""
    with api_errors(), ApiClient(api) as client:
        _print_keys(client.list_keys())


@keys_app.command("rotate")
def keys_rotate(
    role: str,
    keyid: Annotated[str | None, typer.Option(help="key to replace (prefix is enough)")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Replace a key; publishes a new root signed by the old and the new root keys."""
    with api_errors(), ApiClient(api) as client:
        result = client.rotate_key(role, keyid)
    console.print(f"{result['role']} key rotated: new key {result['keyid'][:16]}")


@keys_app.command("revoke")
def keys_revoke(keyid: str, api: ApiOption = DEFAULT_API) -> None:
    """Remove a key from its role; refused when the role would fall below its threshold."""
    with api_errors(), ApiClient(api) as client:
        result = client.revoke_key(keyid)
    console.print(f"{result['role']} key {result['keyid'][:16]} revoked")


def _open_repository(data_dir: Path, database_url: str | None) -> SignedRepository:
    from edgefleet.control_plane.core.db import make_engine
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet.control_plane.trust.repository import SignedRepository

    settings = Settings(data_dir=data_dir, database_url=database_url)
    if not (settings.repository_dir / "keys" / "keyring.json").exists():
        raise fail(FileNotFoundError(f"no repository in {settings.repository_dir}"))
    return SignedRepository(
        settings.repository_dir,
        engine=make_engine(settings),
        passphrase=settings.key_passphrase_bytes,
        replica="cli",
    )


def _print_versions(versions: dict[str, dict[str, Any]]) -> None:
    rows = [{"role": role, **info} for role, info in versions.items()]
    columns = ["role", "version", "device_trusts", "reported_by", "expires"]
    console.print(table(rows, columns, "signed metadata"))


@repo_app.command("status")
def repo_status(
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each role's latest signed version against the highest any device trusts."""
    versions = _open_repository(data_dir, database_url).versions()
    if as_json:
        console.print_json(json.dumps(versions))
    else:
        _print_versions(versions)


@repo_app.command("bump")
def repo_bump(
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
) -> None:
    """Re-sign every role past the highest version devices trust (after a restore)."""
    from edgefleet.control_plane.trust.keyring import SigningError

    repository = _open_repository(data_dir, database_url)
    try:
        signed = repository.bump()
    except SigningError as e:
        raise fail(e) from e
    console.print("re-signed " + ", ".join(f"{r} v{v}" for r, v in signed.items()))
    _print_versions(repository.versions())


@repo_app.command("export")
def repo_export(
    dest: Annotated[Path, typer.Argument(help="directory a web server, CDN or bucket serves")],
    data_dir: DataDirOption = Path(".edgefleet"),
) -> None:
    """Write the signed repository (metadata and targets, never keys) as a static tree
    for HTTP mirrors; agents list its URL in ``mirrors``. The control plane does this
    after every signing step when ``EDGEFLEET_STATIC_TREE_DIR`` is set."""
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet.control_plane.trust.repository.export import export_static_tree

    settings = Settings(data_dir=data_dir)
    if not (settings.repository_dir / "metadata" / "timestamp.json").exists():
        raise fail(FileNotFoundError(f"no signed repository in {settings.repository_dir}"))
    try:
        result = export_static_tree(settings.repository_dir, dest)
    except OSError as e:
        raise fail(e) from e
    console.print(f"exported {result.files} files ({result.bytes:,} bytes) to {dest}")
