"""``build``: bundle builds as the control plane runs them, in the background.

``edgefleet bundle build`` starts a build job and follows it; ``build wait`` follows
one already started (each candidate as it is measured, then the verdict; exit code 1
when it failed), ``build status`` shows one as it stands and ``build list`` the latest.
Ctrl-C stops following, never the build.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.text import Text

from edgefleet.control_plane.cli.options import DEFAULT_API, ApiOption, JsonOption
from edgefleet.control_plane.cli.output import api_errors, console, fail, print_rows
from edgefleet.control_plane.client import ApiClient, ApiError

build_app = typer.Typer(
    no_args_is_help=True, help="Follow bundle builds (jobs on the control plane)."
)

BuildId = Annotated[int, typer.Argument(help="build job id (edgefleet build list)")]
INTERRUPTED_EXIT = 130


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def candidate_line(row: dict[str, Any]) -> str:
    """One candidate as it lands: name, verdict, its numbers, and why when not passed."""
    size = row.get("size_bytes")
    parts = [
        f"  {row.get('candidate', '?'):<24} {row.get('verdict', '?'):<8}",
        f"agreement {_num(row.get('agreement'))}",
        f"drop {_num(row.get('drop'))}",
        f"size {size if size is not None else '-'} B",
        f"latency {_num(row.get('latency_ms'), 3)} ms",
    ]
    line = "  ".join(parts)
    reasons = row.get("reasons") or []
    if row.get("verdict") != "passed" and reasons:
        line += f"  ({'; '.join(str(r) for r in reasons)})"
    return line


def _say(text: str) -> None:
    """Print text that came from the server as it is (the console has markup off)."""
    console.print(text, highlight=False)


@contextmanager
def ctrl_c_keeps_building(build_id: int) -> Iterator[None]:
    """Ctrl-C inside the block stops the command, not build ``build_id``, and says so.

    Raises:
        typer.Exit: Code 130 on Ctrl-C, after saying how to follow the build again.
    """
    try:
        yield
    except KeyboardInterrupt:
        _say(
            f"stopped following build {build_id}; it keeps running on the control plane. "
            f"Follow it with: edgefleet build wait {build_id}"
        )
        raise typer.Exit(INTERRUPTED_EXIT) from None


def follow_build(client: ApiClient, build_id: int) -> dict[str, Any]:
    """Print each candidate of build ``build_id`` as it lands; the finished job."""
    shown = 0
    with console.status(Text(f"build {build_id}: waiting")) as status:

        def update(job: dict[str, Any]) -> None:
            nonlocal shown
            for row in job.get("candidates", [])[shown:]:
                _say(candidate_line(row))
            shown = len(job.get("candidates", []))
            stage = job.get("stage") or job["state"]
            status.update(Text(f"build {build_id} {job['state']}: {stage}"))

        return client.wait_build(build_id, on_update=update)


def report_finished(client: ApiClient, job: dict[str, Any]) -> None:
    """The verdict of a finished job: its bundle, or the error line and exit code 1."""
    if job["state"] != "succeeded":
        raise fail(
            ApiError(
                job.get("error_status") or 500, f"build {job['id']} failed: {job.get('error')}"
            )
        )
    bundle = client.get_bundle(job["bundle_id"])
    metrics = bundle["manifest"].get("metrics", {})
    verified = "verified" if metrics.get("verified") else "UNVERIFIED (no labels)"
    _say(
        f"build {job['id']} succeeded: bundle {bundle['id']} release {bundle['release']} "
        f"{bundle['length']} bytes sha256 {bundle['sha256']} gate {verified}"
    )


@build_app.command("wait")
def build_wait(build_id: BuildId, api: ApiOption = DEFAULT_API) -> None:
    """Follow a build until it ends: each candidate as it is measured, then the verdict."""
    with api_errors(), ApiClient(api) as client, ctrl_c_keeps_building(build_id):
        job = client.get_build(build_id)
        _say(f"build {build_id}: {job['model']} v{job['model_version']} for {job['profile']}")
        report_finished(client, follow_build(client, build_id))


@build_app.command("status")
def build_status(
    build_id: BuildId, api: ApiOption = DEFAULT_API, as_json: JsonOption = False
) -> None:
    """One build as it stands: state, stage, the candidates measured so far, bundle or error."""
    with api_errors(), ApiClient(api) as client:
        job = client.get_build(build_id)
    if as_json:
        console.print_json(data=job)
        return
    _say(f"build {job['id']}: {job['model']} v{job['model_version']} for {job['profile']}")
    _say(f"  state    {job['state']}" + (f" ({job['stage']})" if job.get("stage") else ""))
    for row in job.get("candidates", []):
        _say(candidate_line(row))
    if job.get("bundle_id"):
        _say(f"  bundle   {job['bundle_id']}")
    if job.get("error"):
        _say(f"  error    {job['error']}")


@build_app.command("list")
def build_list(
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(help="how many of the latest builds")] = 20,
) -> None:
    """The latest builds, newest first."""
    with api_errors(), ApiClient(api) as client:
        rows = client.list_builds(limit=limit)
    columns = [
        "id",
        "state",
        "model",
        "model_version",
        "profile",
        "bundle_id",
        "error",
        "created_at",
    ]
    print_rows(rows, columns, "builds", as_json)
