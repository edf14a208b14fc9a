"""``device`` and ``enrol``: the fleet, its labels and groups, and the credentials
devices enrol with and lose when revoked."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from edgefleet.control_plane.cli.options import (
    DEFAULT_API,
    ApiOption,
    JsonOption,
    parse_duration,
    parse_labels,
)
from edgefleet.control_plane.cli.output import api_errors, console, err_console, print_rows
from edgefleet.control_plane.client import ApiClient

device_app = typer.Typer(no_args_is_help=True, help="See the fleet.")
enrol_app = typer.Typer(no_args_is_help=True, help="Device enrolment (secured broker).")


@device_app.command("list")
def device_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """List devices with their presence and installed bundle."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_devices()
    for row in rows:  # every model the device serves, as "name vX rN" (one line each)
        row["models_served"] = (
            "\n".join(
                f"{m.get('name')} v{m.get('version')} r{m.get('release')}"
                for m in row.get("models") or []
            )
            or None
        )
    columns = ["id", "profile", "online", "models_served", "bundle_id", "release", "last_seen"]
    if as_json:
        rows = [{k: v for k, v in row.items() if k != "models_served"} for row in rows]
    print_rows(rows, columns, "devices", as_json)


@device_app.command("show")
def device_show(device_id: str, api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """One device: its presence, and every model it serves with its bundle and release."""
    with api_errors(), ApiClient(api) as client:
        device = client.get_device(device_id)
    if as_json:
        console.print_json(json.dumps(device))
        return
    for key in ("id", "profile", "online", "agent_version", "spool_depth", "last_seen"):
        console.print(f"{key}: {device.get(key)}")
    models = device.get("models") or []
    print_rows(models, ["name", "version", "bundle_id", "release"], "models", False)


@device_app.command("label")
def device_label(
    device_id: str,
    label: Annotated[list[str], typer.Argument(help="key=value (replaces all labels)")],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Set a device's labels, which rollout selectors match."""
    with api_errors(), ApiClient(api) as client:
        device = client.set_device_labels(device_id, parse_labels(label))
    console.print(f"{device['id']} labels {device['labels']}")


@device_app.command("group")
def device_group(
    name: str,
    device: Annotated[list[str], typer.Argument(help="member device ids (replaces the group)")],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Create or replace a device group, which rollout selectors can name."""
    with api_errors(), ApiClient(api) as client:
        group = client.set_group(name, device)
    console.print(f"group {group['name']}: {len(group['device_ids'])} devices")


@device_app.command("revoke")
def device_revoke(device_id: str, api: ApiOption = DEFAULT_API) -> None:
    """Revoke a device's broker credentials and cut its live session."""
    with api_errors(), ApiClient(api) as client:
        result = client.revoke_device(device_id)
    console.print(f"device {result['device_id']} revoked at {result['revoked_at']}")


@device_app.command("logs")
def device_logs(
    device_id: str,
    since: Annotated[str, typer.Option(help="how far back: 90s, 30m, 1h, 2d")] = "1h",
    max_bytes: Annotated[
        int | None, typer.Option(help="most log to fetch (default 256 KiB, at most 1 MiB)")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the device")] = 10.0,
    as_json: JsonOption = False,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Print the device agent's recent log, fetched over MQTT (operator role)."""
    with api_errors(), ApiClient(api, timeout=timeout + 30) as client:
        logs = client.device_logs(
            device_id, since_s=parse_duration(since), max_bytes=max_bytes, timeout_s=timeout
        )
    if as_json:
        typer.echo(json.dumps(logs, indent=2))
        return
    if logs["truncated"]:
        err_console.print(
            f"[yellow]... {logs['omitted']} older lines left out (max_bytes reached)[/]"
        )
    for line in logs["lines"]:
        typer.echo(format_log_line(line))  # the device's text as it is: no markup


def format_log_line(line: dict[str, Any]) -> str:
    """One log record as ``<ts> <LEVEL> <logger> <message>``."""
    return f"{line['ts']} {line['level']} {line['logger']} {line['message']}"


@enrol_app.command("token")
def enrol_token(
    ttl: Annotated[int, typer.Option(help="seconds the token stays valid")] = 3600,
    note: Annotated[str | None, typer.Option(help="what the token is for")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Issue a one-time enrolment token; its secret is printed once."""
    with api_errors(), ApiClient(api) as client:
        token = client.create_enrolment_token(ttl_seconds=ttl, note=note)
    console.print(f"enrolment token {token['id']} valid until {token['expires_at']}:")
    console.print(token["token"], soft_wrap=True)
