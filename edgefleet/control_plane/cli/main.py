"""The ``edgefleet`` command: run the control plane and drive the fleet.

``serve`` runs the API and fleet link against an existing broker; ``up`` also starts
a private Mosquitto; ``demo`` runs the whole spine end to end. The other commands
talk to a running control plane over its HTTP API (``--api`` or ``EDGEFLEET_API``).

This module builds the root command from the groups in the sibling modules; the
order of registration is the order ``edgefleet --help`` lists them in.
"""

from __future__ import annotations

import typer

from edgefleet.control_plane.cli.agent_releases import agent_release_app
from edgefleet.control_plane.cli.builds import build_app
from edgefleet.control_plane.cli.bundles import bundle_app, model_app
from edgefleet.control_plane.cli.config import config_app
from edgefleet.control_plane.cli.db import backup, db_app, restore
from edgefleet.control_plane.cli.demo import demo
from edgefleet.control_plane.cli.devices import device_app, enrol_app
from edgefleet.control_plane.cli.drift import drift_app, hook_app, policy_app, retraining_app
from edgefleet.control_plane.cli.experiments import experiment_app
from edgefleet.control_plane.cli.groups import group_app
from edgefleet.control_plane.cli.rollouts import audit_app, rollout_app
from edgefleet.control_plane.cli.serve import serve, up
from edgefleet.control_plane.cli.tokens import token_app
from edgefleet.control_plane.cli.trust import keys_app, repo_app, trust_app

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run the edgefleet control plane and drive the fleet through its API.",
)
app.command()(serve)
app.command()(up)
app.command()(demo)
app.add_typer(model_app, name="model")
app.add_typer(bundle_app, name="bundle")
app.add_typer(agent_release_app, name="agent-release")
app.add_typer(build_app, name="build")
app.add_typer(device_app, name="device")
app.add_typer(group_app, name="group")
app.add_typer(rollout_app, name="rollout")
app.add_typer(experiment_app, name="experiment")
app.add_typer(config_app, name="config")
app.add_typer(trust_app, name="trust")
app.add_typer(drift_app, name="drift")
app.add_typer(retraining_app, name="retraining")
app.add_typer(policy_app, name="policy")
app.add_typer(hook_app, name="hook")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.add_typer(enrol_app, name="enrol")
app.add_typer(repo_app, name="repo")
app.add_typer(db_app, name="db")
app.command()(backup)
app.command()(restore)


def main() -> None:
    app()
