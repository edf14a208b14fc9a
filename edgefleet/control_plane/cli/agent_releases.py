"""``agent-release``: sign the agent's own code as a release, to roll out like a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, JsonOption
from edgefleet.control_plane.cli.output import api_errors, console, fail, print_rows
from edgefleet.control_plane.client import ApiClient

agent_release_app = typer.Typer(
    no_args_is_help=True,
    help="Agent releases: the agent's own code, delivered through signed, staged rollouts.",
)


def collect_wheels(paths: list[Path]) -> list[Path]:
    """The wheels named: each path is a ``.whl`` file or a directory of them."""
    wheels: list[Path] = []
    for path in paths:
        if path.is_dir():
            wheels += sorted(path.glob("*.whl"))
        else:
            wheels.append(path)
    return wheels


@agent_release_app.command("add")
def agent_release_add(
    paths: Annotated[
        list[Path], typer.Argument(exists=True, help="pure-Python wheels, or directories of them")
    ],
    version: Annotated[str, typer.Option(help="the agent version its code says")],
    profile: Annotated[str, typer.Option(help="firmware profile whose devices install it")],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Sign the wheels as agent release VERSION for PROFILE; then `edgefleet rollout
    create --bundle BUNDLE_ID ...` rolls it out through the usual waves and gates."""
    wheels = collect_wheels(paths)
    if not wheels:
        raise fail(ValueError("no .whl file found in the paths given"))
    with api_errors(OSError), ApiClient(api) as client:
        bundle = client.add_agent_release(version=version, profile=profile, wheels=wheels)
    console.print(f"agent release {version} for {profile}: bundle {bundle['id']} "
                  f"(release {bundle['release']})")  # fmt: skip


@agent_release_app.command("list")
def agent_release_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """List agent releases (the bundles of kind agent)."""
    with api_errors(), ApiClient(api) as client:
        rows = [b for b in client.list_bundles() if b["manifest"].get("kind") == "agent"]
    print_rows(rows, ["id", "model_version", "profile", "release", "created_at"],
               "agent releases", as_json)  # fmt: skip
