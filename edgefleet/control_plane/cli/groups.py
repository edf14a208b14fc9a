"""``group``: device groups' settings kept on the control plane (their maintenance window)."""

from __future__ import annotations

from typing import Annotated

import typer

from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, parse_duration
from edgefleet.control_plane.cli.output import api_errors, console
from edgefleet.control_plane.client import ApiClient

group_app = typer.Typer(no_args_is_help=True, help="Device groups' settings.")


@group_app.command("set-window")
def group_set_window(
    name: str,
    cron: Annotated[
        str | None, typer.Option(help='when the window opens, five-field cron: "0 2 * * *"')
    ] = None,
    duration: Annotated[str, typer.Option(help="how long it stays open: 2h")] = "1h",
    tz: Annotated[str, typer.Option(help="the devices' time zone: Europe/Berlin")] = "UTC",
    clear: Annotated[bool, typer.Option("--clear", help="remove the group's window")] = False,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Store a maintenance window with group NAME: its devices stage at once but switch
    only inside it. A rollout's own --window-cron wins over it."""
    if not clear and not cron:
        raise typer.BadParameter("give --cron (or --clear)")
    window = None if clear else {"cron": cron, "duration_s": parse_duration(duration), "tz": tz}
    with api_errors(), ApiClient(api) as client:
        group = client.set_group_window(name, window)
    shown = group.get("maintenance_window")
    if shown:
        console.print(
            f"group {group['name']}: window {shown['cron']} ({shown['tz']})"
            f" for {shown['duration_s']:g}s"
        )
    else:
        console.print(f"group {group['name']}: no window")
