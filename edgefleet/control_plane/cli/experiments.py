"""``experiment``: A/B experiments between two bundles of a model, decided on outcomes."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, JsonOption, parse_labels
from edgefleet.control_plane.cli.output import api_errors, console, print_rows
from edgefleet.control_plane.client import ApiClient

experiment_app = typer.Typer(
    no_args_is_help=True, help="A/B experiments: two bundles on one cohort, decided on outcomes."
)


MODES = {
    (False, False): "split",
    (False, True): "bandit",
    (True, False): "requests",
    (True, True): "requests_bandit",
}
"""(--by-requests, --bandit) -> the experiment's mode."""


@experiment_app.command("create")
def experiment_create(
    name: Annotated[str, typer.Option(help="a name for people")],
    bundle_a: Annotated[str, typer.Option("--a", help="arm A's bundle (usually the current)")],
    bundle_b: Annotated[str, typer.Option("--b", help="arm B's bundle (the candidate)")],
    device: Annotated[list[str] | None, typer.Option(help="cohort device (repeatable)")] = None,
    group: Annotated[list[str] | None, typer.Option(help="cohort group (repeatable)")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value the cohort carries")] = None,
    metric: Annotated[
        str, typer.Option(help="what decides: error_rate | latency_ms | accuracy | outcome")
    ] = "error_rate",
    minimize_outcome: Annotated[
        bool, typer.Option("--minimize-outcome", help="a lower posted outcome is better")
    ] = False,
    bandit: Annotated[
        bool, typer.Option("--bandit", help="shift devices toward the better arm as it shows")
    ] = False,
    by_requests: Annotated[
        bool,
        typer.Option(
            "--by-requests",
            help="split each device's requests: A stays active, B answers its share beside it",
        ),
    ] = False,
    share_b: Annotated[
        float, typer.Option(help="arm B's share of the cohort (of each device's requests)")
    ] = 0.5,
    alpha: Annotated[float, typer.Option(help="false-positive rate, however often read")] = 0.05,
    min_samples: Annotated[int, typer.Option(help="observations per arm before deciding")] = 100,
    promote_label: Annotated[
        list[str] | None,
        typer.Option(help="key=value: promote the winner only to these (default: the profile)"),
    ] = None,
    promote_waves: Annotated[
        str, typer.Option(help="waves of the winner's rollout: 1,10%,100%")
    ] = "100%",
    api: ApiOption = DEFAULT_API,
) -> None:
    """Split the cohort between two bundles, half each, by a hash of experiment and device.

    Each arm goes out as an ordinary rollout. A sequential test (mSPRT) reads the
    devices' telemetry on every pass; once the difference on METRIC is significant the
    winner is rolled out to the rest and a newer loser is rolled back.
    """
    selector: dict[str, Any] = {}
    if device:
        selector["device_ids"] = device
    if group:
        selector["groups"] = group
    if label:
        selector["labels"] = parse_labels(label)
    body: dict[str, Any] = {
        "name": name,
        "bundle_a": bundle_a,
        "bundle_b": bundle_b,
        "selector": selector,
        "metric": metric,
        "outcome_goal": "minimize" if minimize_outcome else "maximize",
        "mode": MODES[by_requests, bandit],
        "share_b": share_b,
        "alpha": alpha,
        "min_samples": min_samples,
        "promote_waves": [w.strip() for w in promote_waves.split(",") if w.strip()],
    }
    if promote_label:
        body["promote_to"] = {"labels": parse_labels(promote_label)}
    with api_errors(), ApiClient(api) as client:
        experiment = client.create_experiment(body)
    arms = ", ".join(
        f"{a['arm']}: {a['bundle_id']} on {len(a['devices'])} devices" for a in experiment["arms"]
    )
    console.print(f"experiment {experiment['id']} {experiment['state']} · {arms}")


def experiment_table(experiment: dict[str, Any]) -> Table:
    """Per metric: each arm's mean and count, the difference and the test's evidence."""
    title = (
        f"experiment {experiment['id']} · {experiment['name']} · {experiment['state']}"
        f" · {experiment['mode']} · decides on {experiment['metric']}"
    )
    arms = " · ".join(
        f"{a['arm']} {a['bundle_id']} ({len(a['devices'])} devices)" for a in experiment["arms"]
    )
    caption = " · ".join(x for x in (arms, experiment.get("reason")) if x)
    result = Table(title=title, caption=caption)
    for column in ("metric", "A", "n A", "B", "n B", "B - A", "likelihood ratio", "p (min)"):
        result.add_column(column, justify="left" if column == "metric" else "right")
    result.add_column("verdict")
    for metric, r in (experiment.get("results") or {}).items():
        verdict = (
            Text("significant", "green") if r.get("significant") else Text("not yet", "yellow")
        )
        result.add_row(
            metric + (" *" if metric == experiment["metric"] else ""),
            f"{r['mean_a']:.4g}",
            f"{r['n_a']:g}",
            f"{r['mean_b']:.4g}",
            f"{r['n_b']:g}",
            f"{r['difference']:+.4g}",
            f"{r['likelihood_ratio']:.3g} / {1 / r['alpha']:.3g}",
            f"{r.get('p_value_min', r['p_value']):.3g}",
            verdict,
        )
    return result


@experiment_app.command("status")
def experiment_status(
    experiment_id: Annotated[int | None, typer.Argument(help="omit to list them all")] = None,
    as_json: JsonOption = False,
    api: ApiOption = DEFAULT_API,
) -> None:
    """One experiment's numbers per metric (* marks the one that decides), or the list."""
    with api_errors(), ApiClient(api) as client:
        if experiment_id is None:
            rows = [
                e
                | {
                    "bundles": f"{e['arms'][0]['bundle_id']} / {e['arms'][1]['bundle_id']}",
                    "devices": sum(len(a["devices"]) for a in e["arms"]),
                }
                for e in client.list_experiments()
            ]
            columns = ["id", "name", "state", "mode", "metric", "bundles", "devices", "winner"]
            print_rows(rows, columns, "experiments", as_json)
            return
        experiment = client.get_experiment(experiment_id)
    if as_json:
        console.print_json(json.dumps(experiment))
    else:
        console.print(experiment_table(experiment))


@experiment_app.command("stop")
def experiment_stop(
    experiment_id: int,
    reason: Annotated[str | None, typer.Option(help="why: recorded in the audit log")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """End an experiment without a decision; every device keeps the arm it runs."""
    with api_errors(), ApiClient(api) as client:
        experiment = client.stop_experiment(experiment_id, reason=reason)
    console.print(f"experiment {experiment['id']} {experiment['state']}")
