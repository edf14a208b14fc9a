"""The control plane as `edgefleet serve` runs it: a real uvicorn server, real HTTP.

Forwarding headers count only from configured proxies (uvicorn trusts 127.0.0.1 by
default, which let a local caller pose as any address and slip past the enrolment
rate limit), and the CLI's `policy set` changes only what it is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.client import ApiClient
from edgefleet.control_plane.core.netutil import free_port
from edgefleet_demo.digits import DigitsModel
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration
BURST = 3

Serve = Callable[..., str]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start `python -m edgefleet.control_plane serve` with extra environment; its base URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> str:
        port = free_port()
        data_dir = tmp_path / f"cp-{port}"
        log = (tmp_path / f"serve-{port}.log").open("wb")
        command = [sys.executable, "-m", "edgefleet.control_plane", "serve", "--port", str(port)]
        command += ["--data-dir", str(data_dir), "--broker", f"mqtt://127.0.0.1:{free_port()}"]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "EDGEFLEET_ENROL_BURST": str(BURST),
                "EDGEFLEET_ENROL_RATE_PER_MINUTE": "0.001",  # no refill during the test
                **env,
            },
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert process.poll() is None, (tmp_path / f"serve-{port}.log").read_text()
            try:
                return httpx.get(f"{url}/api/v1/health").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, "the control plane to serve", timeout=120)
        return url

    yield start
    for process in processes:
        process.terminate()
        process.wait()


def enrol(url: str, forwarded_for: str) -> int:
    body = {"token": "x", "device_id": "dev-aaaaaaaa", "profile": "p"}
    headers = {"X-Forwarded-For": forwarded_for}
    return httpx.post(f"{url}/api/v1/enrol", json=body, headers=headers).status_code


def test_forwarded_for_from_the_local_host_does_not_reset_the_enrolment_limit(
    serve: Serve,
) -> None:
    url = serve()
    statuses = [enrol(url, f"203.0.113.{i}") for i in range(BURST + 2)]
    # No broker auth configured: attempts within the limit are refused with 409.
    assert statuses == [409] * BURST + [429, 429]


def test_forwarded_for_counts_from_a_configured_proxy(serve: Serve) -> None:
    url = serve(EDGEFLEET_FORWARDED_ALLOW_IPS="127.0.0.1")
    assert [enrol(url, f"198.51.100.{i}") for i in range(BURST + 2)] == [409] * (BURST + 2)
    assert [enrol(url, "198.51.100.200") for _ in range(BURST + 1)] == [409] * BURST + [429]


def test_cli_policy_set_changes_only_the_options_given(
    serve: Serve, tmp_path: Path, digits: DigitsModel
) -> None:
    hooks = tmp_path / "hooks.toml"
    hooks.write_text('[hooks.nightly]\ncommand = ["/bin/true"]\n')
    url = serve(EDGEFLEET_RETRAINING_HOOKS_FILE=str(hooks))
    model = digits
    with ApiClient(url) as client:
        client.register_model(
            name="digits", version="1", model=model.onnx_bytes, samples=model.samples
        )
    runner = CliRunner()
    first = runner.invoke(
        cli,
        ["policy", "set", "digits", "--retrain", "automatic", "--hook", "nightly", "--api", url],
    )
    assert first.exit_code == 0, first.output
    second = runner.invoke(cli, ["policy", "set", "digits", "--margin", "0.01", "--api", url])
    assert second.exit_code == 0, second.output
    with ApiClient(url) as client:
        policy = client.get_policy("digits")
    assert (policy["retrain"], policy["hook"], policy["comparison_margin"]) == (
        "automatic",
        "nightly",
        0.01,
    )
    refused = runner.invoke(
        cli, ["policy", "set", "digits", "--hook", "../../bin/sh", "--api", url]
    )
    assert refused.exit_code == 1
    assert "422" in refused.output
    listed = runner.invoke(cli, ["hook", "list", "--json", "--api", url])
    assert '"nightly"' in listed.output and "/bin/true" not in listed.output
