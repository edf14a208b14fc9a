"""``model`` and ``bundle``: what the control plane builds, from a registered model to
the signed bundle for one firmware profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from edgefleet.control_plane.cli.builds import (
    ctrl_c_keeps_building,
    follow_build,
    report_finished,
)
from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, JsonOption
from edgefleet.control_plane.cli.output import api_errors, console, print_rows
from edgefleet.control_plane.client import ApiClient

model_app = typer.Typer(no_args_is_help=True, help="Register and list model versions.")
bundle_app = typer.Typer(no_args_is_help=True, help="Build and list signed bundles.")


@model_app.command("register")
def model_register(
    name: str,
    version: str,
    file: Annotated[
        Path,
        typer.Option(
            "--file", exists=True, dir_okay=False, help="model: .onnx or .tflite, told by content"
        ),
    ],
    samples: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help=".npy float32 [n, features] sample inputs"),
    ],
    companion: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="the same model in the other format (.tflite beside .onnx, or the reverse)",
        ),
    ] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Register an ONNX or TFLite model version with representative sample inputs."""
    with api_errors(ValueError, OSError), ApiClient(api) as client:
        model = client.register_model(
            name=name,
            version=version,
            model=file.read_bytes(),
            samples=np.load(samples, allow_pickle=False),
            companion=companion.read_bytes() if companion is not None else None,
        )
    console.print(f"registered {model['name']} v{model['version']} sha256 {model['sha256']}")


@model_app.command("list")
def model_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """List registered model versions."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_models()
    print_rows(
        rows, ["name", "version", "format", "size_bytes", "sha256", "created_at"], "models", as_json
    )


@bundle_app.command("build")
def bundle_build(
    model: Annotated[str, typer.Option(help="model name")],
    version: Annotated[str, typer.Option(help="model version")],
    profile: Annotated[str, typer.Option(help="firmware profile")],
    holdout: Annotated[
        Path | None,
        typer.Option(help="gate holdout .npz with x and y (default: the registered one)"),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="largest accuracy drop the gate allows (default: profile)")
    ] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Build every candidate for a firmware profile, gate them, sign and publish the best."""
    holdout_x = holdout_y = None
    if holdout is not None:
        with np.load(holdout, allow_pickle=False) as npz:
            holdout_x = npz["x"]
            holdout_y = npz["y"] if "y" in npz.files else None
    with api_errors(), ApiClient(api) as client:
        job = client.start_build(
            model=model,
            version=version,
            profile=profile,
            max_accuracy_drop=max_accuracy_drop,
            holdout_x=holdout_x,
            holdout_y=holdout_y,
        )
        with ctrl_c_keeps_building(job["id"]):
            console.print(
                f"build {job['id']} started: {model} v{version} for {profile} "
                f"(Ctrl-C stops following, not the build)"
            )
            finished = follow_build(client, job["id"])
            if finished["state"] == "succeeded":
                bundle = client.get_bundle(finished["bundle_id"])
                console.print(_candidates_table(bundle["manifest"].get("candidates", [])))
            report_finished(client, finished)


def _candidates_table(rows: list[dict[str, Any]]) -> Table:
    """Candidate, accuracy, drop, agreement, size, latency, chosen: one row per candidate."""
    table = Table(title="candidates")
    for column in (
        "candidate",
        "accuracy",
        "drop",
        "agreement",
        "size",
        "latency ms",
        "verdict",
        "chosen",
    ):
        table.add_column(column)

    def num(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        table.add_row(
            str(row["candidate"]),
            num(row.get("accuracy")),
            num(row.get("drop")),
            num(row.get("agreement")),
            str(row.get("size_bytes", "")),
            num(row.get("latency_ms"), 3),
            row.get("verdict", "")
            + (
                ""
                if row.get("verdict") == "passed"
                else f" ({'; '.join(str(r) for r in row.get('reasons') or [])})"
            ),
            "*" if row.get("chosen") else "",
        )
    return table


@bundle_app.command("list")
def bundle_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """List signed bundles."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_bundles()
    columns = ["id", "model", "model_version", "profile", "release", "length", "created_at"]
    print_rows(rows, columns, "bundles", as_json)
