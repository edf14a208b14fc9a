"""`edgefleet bundle build` and `edgefleet build ...` against a served control plane.

The CLI starts a build job, prints each candidate as the control plane measures it,
and ends with the verdict; a failed build is exit code 1 with the build's reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.client import ApiClient
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.profile import default_profiles_dir
from edgefleet_demo.digits import DigitsModel
from tests.support.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]

PROFILE = "x86-64-gateway-onnx"
TINY = "x86-64-tiny-onnx"  # the same device with room for no model at all


@pytest.fixture
def api(tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel) -> Iterator[str]:
    """`python -m edgefleet.control_plane serve` with the shipped profiles plus TINY,
    and the digits model registered; its base URL."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    shipped = (default_profiles_dir() / f"{PROFILE}.toml").read_text()
    (profiles / f"{PROFILE}.toml").write_text(shipped)
    tiny = shipped.replace(f'name = "{PROFILE}"', f'name = "{TINY}"')
    (profiles / f"{TINY}.toml").write_text(
        tiny.replace("max_model_bytes = 67108864", "max_model_bytes = 1")
    )
    port = free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.control_plane",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "cp"),
            "--broker",
            broker.url,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "EDGEFLEET_PROFILES_DIR": str(profiles)},
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/api/v1/health").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, "the control plane to serve", timeout=120)
        with ApiClient(url) as client:
            client.register_model(
                name="digits", version="1", model=digits.onnx_bytes, samples=digits.samples
            )
        yield url
    finally:
        process.terminate()
        process.wait()


def test_bundle_build_prints_each_candidate_and_the_bundle(api: str) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "bundle",
            "build",
            "--model",
            "digits",
            "--version",
            "1",
            "--profile",
            PROFILE,
            "--api",
            api,
        ],
    )

    assert result.exit_code == 0, result.output
    with ApiClient(api) as client:
        (job,) = client.list_builds()
        bundle = client.get_bundle(job["bundle_id"])
    assert f"build {job['id']} started: digits v1 for {PROFILE}" in result.output
    lines = result.output.splitlines()
    for row in bundle["manifest"]["candidates"]:
        assert any(line.split()[:2] == [row["candidate"], row["verdict"]] for line in lines), (
            f"no line for {row['candidate']}"
        )
    assert f"build {job['id']} succeeded: bundle {bundle['id']}" in result.output


def test_build_wait_prints_the_candidates_and_exits_nonzero_when_the_build_fails(
    api: str,
) -> None:
    with ApiClient(api) as client:
        job = client.start_build(model="digits", version="1", profile=TINY)

    result = CliRunner().invoke(cli, ["build", "wait", str(job["id"]), "--api", api])

    assert result.exit_code == 1, result.output
    with ApiClient(api) as client:
        finished = client.get_build(job["id"])
    assert finished["state"] == "failed"
    assert finished["candidates"]
    for row in finished["candidates"]:
        assert f"{row['candidate']}" in result.output
    assert f"build {job['id']} failed: no candidate passed the gate for {TINY}" in result.output
    assert "error: HTTP 422" in result.output


def test_build_status_and_list_show_a_finished_build(api: str) -> None:
    with ApiClient(api) as client:
        done = client.wait_build(
            client.start_build(model="digits", version="1", profile=PROFILE)["id"]
        )

    status = CliRunner().invoke(cli, ["build", "status", str(done["id"]), "--api", api])
    listed = CliRunner().invoke(cli, ["build", "list", "--json", "--api", api])
    missing = CliRunner().invoke(cli, ["build", "wait", "424242", "--api", api])

    assert status.exit_code == 0, status.output
    assert f"bundle   {done['bundle_id']}" in status.output
    assert listed.exit_code == 0 and done["bundle_id"] in listed.output
    assert missing.exit_code == 1 and "build 424242 not found" in missing.output


def test_ctrl_c_stops_following_but_the_build_goes_on(api: str) -> None:
    command = [sys.executable, "-m", "edgefleet.control_plane", "bundle", "build"]
    command += ["--model", "digits", "--version", "1", "--profile", PROFILE, "--api", api]
    follower = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert follower.stdout is not None
    first = follower.stdout.readline()  # "build N started: ..." once the job exists
    assert " started: digits v1" in first, first

    follower.send_signal(signal.SIGINT)
    rest = follower.communicate(timeout=60)[0]

    build_id = int(first.split()[1])
    assert follower.returncode == 130, first + rest
    assert f"Follow it with: edgefleet build wait {build_id}" in rest
    with ApiClient(api) as client:
        assert client.wait_build(build_id)["state"] == "succeeded"
