"""``config``: remote device configuration per fleet, group and device.

``set`` changes one scope (``--fleet``, ``--group NAME`` or ``--device ID``) as one new
version; ``get`` shows a scope (for a device: its own values, the effective merge and
where each key comes from, and what it reported); ``diff`` shows where a device's
desired and reported configuration differ (every device without ``--device``).
Values are read as JSON where they parse (``5``, ``0.5``, ``true``, ``"5"``) and as
text otherwise (``logs.level=DEBUG``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, JsonOption
from edgefleet.control_plane.cli.output import api_errors, console, err_console
from edgefleet.control_plane.client import ApiClient

config_app = typer.Typer(no_args_is_help=True, help="Remote device configuration and flags.")

FleetOption = Annotated[bool, typer.Option("--fleet", help="the whole fleet's values")]
GroupOption = Annotated[str | None, typer.Option("--group", help="a device group's values")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="one device's values")]


def scope_path(fleet: bool, group: str | None, device: str | None) -> str:
    """The API path of the one scope chosen.

    Raises:
        typer.BadParameter: none or more than one of the scopes given.
    """
    scopes = (("fleet", fleet), (f"groups/{group}", group), (f"devices/{device}", device))
    chosen = [path for path, given in scopes if given]
    if len(chosen) != 1:
        raise typer.BadParameter("give exactly one of --fleet, --group NAME, --device ID")
    return chosen[0]


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON where it parses, text otherwise.

    Raises:
        typer.BadParameter: a pair without ``=`` or with an empty key.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected key=value, got {pair!r}")
        try:
            values[key.strip()] = json.loads(text)
        except ValueError:
            values[key.strip()] = text
    return values


@config_app.command("set")
def config_set(
    assignments: Annotated[
        list[str] | None, typer.Argument(help="key=value (telemetry.window_s=30, flags.x=true)")
    ] = None,
    unset: Annotated[list[str] | None, typer.Option("--unset", help="a key to unset")] = None,
    reason: Annotated[str | None, typer.Option(help="why, for the audit log")] = None,
    fleet: FleetOption = False,
    group: GroupOption = None,
    device: DeviceOption = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Set (and unset) keys of one scope; the devices it reaches get it at once."""
    path = scope_path(fleet, group, device)
    values = parse_assignments(assignments or [])
    with api_errors(), ApiClient(api) as client:
        result = client.change_config(path, values, list(unset or []), reason)
    version = result.get("desired_version", result.get("version"))
    console.print(f"{path}: version {version}")
    print_values(result.get("own", result.get("settings", {})), "values set here")


@config_app.command("get")
def config_get(
    fleet: FleetOption = False,
    group: GroupOption = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Show one scope's values; for a device, its effective merge and its report."""
    path = scope_path(fleet, group, device)
    with api_errors(), ApiClient(api) as client:
        result = client.get_config(path)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if device is None:
        console.print(f"{path}: version {result['version']}")
        print_values(result["settings"], "values set here")
        return
    console.print(
        f"{device}: desired version {result['desired_version']}, "
        f"applied version {result['applied_version']}, "
        + ("in sync" if result["in_sync"] else "not in sync")
    )
    rows = Table(title="effective configuration")
    for column in ("key", "desired", "from", "applied"):
        rows.add_column(column)
    for key in sorted(set(result["desired"]) | set(result["applied"])):
        rows.add_row(
            key,
            _shown(result["desired"].get(key)),
            result["sources"].get(key, ""),
            _shown(result["applied"].get(key)),
        )
    console.print(rows)
    report_problems(device, result)


@config_app.command("diff")
def config_diff(
    device: DeviceOption = None,
    as_json: JsonOption = False,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Where desired and reported differ, per device; exit code 1 when any does."""
    with api_errors(), ApiClient(api) as client:
        found = client.get_config(f"devices/{device}" if device else "devices")
    views: list[dict[str, Any]] = [found] if device else list(found)
    out_of_sync = [v for v in views if not v["in_sync"] and (v["desired"] or v["applied"])]
    if as_json:
        typer.echo(json.dumps(out_of_sync, indent=2))
    else:
        for view in out_of_sync:
            console.print(
                f"{view['device_id']}: desired version {view['desired_version']}, "
                f"reported {view['reported_version']}, applied {view['applied_version']}"
            )
            for key, pair in sorted(view["diff"].items()):
                console.print(
                    f"  {key}: desired {_shown(pair['desired'])}, "
                    f"reported {_shown(pair['reported'])}"
                )
            report_problems(view["device_id"], view)
        if not out_of_sync:
            console.print("every device reports its desired configuration")
    if out_of_sync:
        raise typer.Exit(1)


def report_problems(device_id: str, view: dict[str, Any]) -> None:
    """What the device refused, and what waits for its restart."""
    for key, reason in sorted(view["refused"].items()):
        err_console.print(f"{device_id} refused {key}: {reason}")
    if view["pending_restart"]:
        err_console.print(
            f"{device_id} applies at its next restart: {', '.join(view['pending_restart'])}"
        )


def print_values(values: dict[str, Any], title: str) -> None:
    rows = Table(title=title)
    rows.add_column("key")
    rows.add_column("value")
    for key, value in sorted(values.items()):
        rows.add_row(key, _shown(value))
    console.print(rows)


def _shown(value: Any) -> str:
    return "—" if value is None else json.dumps(value)
