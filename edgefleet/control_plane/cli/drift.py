"""``drift``, ``retraining``, ``policy`` and ``hook``: the drift loop, from the drift
devices report to the retraining it triggers under each model's policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, JsonOption
from edgefleet.control_plane.cli.output import api_errors, console, fail, print_rows
from edgefleet.control_plane.client import ApiClient

drift_app = typer.Typer(no_args_is_help=True, help="Input drift the fleet reports.")
retraining_app = typer.Typer(no_args_is_help=True, help="Retraining requests from the drift loop.")
policy_app = typer.Typer(no_args_is_help=True, help="Per-model drift-loop policy.")
hook_app = typer.Typer(no_args_is_help=True, help="Retraining hooks an admin defined.")


@drift_app.command("status")
def drift_status(
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """The fleet drift rule per model version and cohort."""
    with api_errors(), ApiClient(api) as client:
        rows = client.drift_status(model=model)
    columns = ["model", "model_version", "cohort", "devices_reporting", "share", "fires"]
    print_rows(rows, columns, "fleet drift", as_json)


@drift_app.command("plot")
def drift_plot(
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write")] = Path(
        "drift.png"
    ),
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    version: Annotated[str | None, typer.Option(help="only this model version")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Plot drift over time per feature and cohort to a PNG."""
    from edgefleet.control_plane.drift.plot import plot_drift

    with api_errors(OSError):
        with ApiClient(api) as client:
            points = client.drift_series(model=model, version=version)
        plot_drift(points, output)
    console.print(f"wrote {output} ({len(points)} drift windows)")


@retraining_app.command("list")
def retraining_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """Retraining requests, newest first, with their state and reason."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_retraining()
    columns = ["id", "model", "from_version", "new_version", "trigger", "state", "reason"]
    print_rows(rows, columns, "retraining requests", as_json)


@retraining_app.command("request")
def retraining_request(
    model: str,
    version: Annotated[str, typer.Option(help="the model version to retrain from")],
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """File a retraining request by hand; the model's policy decides if it needs approval."""
    with api_errors(), ApiClient(api) as client:
        row = client.request_retraining(model=model, version=version, reason=reason)
    console.print(f"request {row['id']} {row['state']}")


@retraining_app.command("approve")
def retraining_approve(request_id: int, api: ApiOption = DEFAULT_API) -> None:
    """Approve a request waiting for approval; the drift loop runs it next."""
    with api_errors(), ApiClient(api) as client:
        row = client.decide_retraining(request_id, approve=True)
    console.print(f"request {row['id']} {row['state']}")


@retraining_app.command("reject")
def retraining_reject(
    request_id: int,
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Reject a request waiting for approval."""
    with api_errors(), ApiClient(api) as client:
        row = client.decide_retraining(request_id, approve=False, reason=reason)
    console.print(f"request {row['id']} {row['state']}: {row['reason']}")


@policy_app.command("show")
def policy_show(model: str, api: ApiOption = DEFAULT_API) -> None:
    """The drift-loop policy of a model."""
    with api_errors(), ApiClient(api) as client:
        console.print_json(json.dumps(client.get_policy(model)))


@policy_app.command("set")
def policy_set(
    model: str,
    retrain: Annotated[str | None, typer.Option(help="automatic | approval | off")] = None,
    hook: Annotated[
        str | None, typer.Option(help="a retraining hook an admin defined (edgefleet hook list)")
    ] = None,
    clear_hook: Annotated[bool, typer.Option("--clear-hook", help="select no hook")] = False,
    canary_devices: Annotated[int | None, typer.Option(min=1)] = None,
    margin: Annotated[float | None, typer.Option(help="accuracy the challenger must gain")] = None,
    cron: Annotated[str | None, typer.Option(help="crontab for scheduled retraining")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Change how drift on a model is handled; options not given keep their value."""
    if hook is not None and clear_hook:
        raise fail(ValueError("give either --hook or --clear-hook"))
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "retrain": retrain,
            "hook": hook,
            "canary_device_count": canary_devices,
            "comparison_margin": margin,
            "retrain_cron": cron,
        }.items()
        if v is not None
    }
    if clear_hook:
        changes["hook"] = None
    if not changes:
        raise fail(ValueError("nothing to change: give at least one option"))
    with api_errors(), ApiClient(api) as client:
        console.print_json(json.dumps(client.set_policy(model, changes)))


@hook_app.command("list")
def hook_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """Retraining hooks an admin defined (EDGEFLEET_RETRAINING_HOOKS_FILE); policies pick one."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_hooks()
    print_rows(rows, ["name", "kind", "timeout_s", "description"], "retraining hooks", as_json)
