"""``demo``: the whole spine end to end, from the demo package outside the product.

``edgefleet_demo`` is imported inside the command only: the product must import and
run without it.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.control_plane.cli.output import api_errors, console, setup_logging


def demo(
    agents: Annotated[int, typer.Option(min=1, max=50, help="number of device agents")] = 3,
    broker: Annotated[
        str | None, typer.Option(help="use this broker (mqtt://host:port) instead of a private one")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="keep everything here instead of a temp dir")
    ] = None,
    summary_json: Annotated[
        Path | None, typer.Option(help="also write the summary as JSON to this file")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds the rollout may take")] = 120.0,
    drift: Annotated[
        bool, typer.Option("--drift", help="then shift some devices' inputs and close the loop")
    ] = False,
    profiles: Annotated[
        str | None,
        typer.Option(
            help="comma-separated device classes to spread the agents over "
            "(default: two this machine runs; --drift uses the first)"
        ),
    ] = None,
) -> None:
    """Broker, control plane and N agents; train, sign per class, roll out, infer, report."""
    from edgefleet_demo.spine import Demo, print_summary, write_summary

    setup_logging("warning")
    started = time.monotonic()
    # A Ctrl-C or SIGTERM must still stop every child the demo started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with api_errors(TimeoutError, RuntimeError, OSError):
        result = Demo(
            agents=agents,
            console=console,
            broker_url=broker,
            data_dir=data_dir,
            timeout=timeout,
            drift=drift,
            profiles=[p.strip() for p in profiles.split(",") if p.strip()] if profiles else None,
        ).run()
    print_summary(console, result)
    if summary_json:
        write_summary(summary_json, result)
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")
    if not result.ok:
        raise typer.Exit(1)
