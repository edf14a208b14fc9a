"""``token``: API tokens and the roles they carry (admin only)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, parse_duration
from edgefleet.control_plane.cli.output import api_errors, console, table
from edgefleet.control_plane.client import ApiClient

token_app = typer.Typer(no_args_is_help=True, help="API tokens (admin).")


@token_app.command("create")
def token_create(
    name: str,
    role: Annotated[str, typer.Option(help="viewer | operator | admin")] = "viewer",
    expires_in: Annotated[
        str | None, typer.Option(help="lifetime, e.g. 30d, 12h, 90m (default: no expiry)")
    ] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Issue an API token; its secret is printed once. Names are unique."""
    seconds = parse_duration(expires_in) if expires_in is not None else None
    with api_errors(), ApiClient(api) as client:
        token = client.create_token(name=name, role=role, expires_in_s=seconds)
    expiry = f", expires {token['expires_at']}" if token.get("expires_at") else ""
    console.print(f"token {token['id']} ({token['role']}) for {token['name']}{expiry}:")
    console.print(token["token"], soft_wrap=True)


@token_app.command("list")
def token_list(api: ApiOption = DEFAULT_API) -> None:
    """Issued tokens (never their secrets)."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_tokens()
    columns = ["id", "name", "role", "created_at", "expires_at", "revoked"]
    console.print(table(rows, columns, "api tokens"))


@token_app.command("revoke")
def token_revoke(token_id: int, api: ApiOption = DEFAULT_API) -> None:
    """Revoke a token at once."""
    with api_errors(), ApiClient(api) as client:
        client.revoke_token(token_id)
    console.print(f"token {token_id} revoked")
