"""The chaos benchmark (bench/chaos.py) in a short version: three agents, outages of a
few seconds, the faults that matter most.

One run of the benchmark (a real Mosquitto, the control plane and three agent processes
under steady inference, each fault in turn) is shared by the tests below; each test
reads one scenario's outcome from the run's JSON and asserts that every inference an
agent answered was stored exactly once: per device, the sum of the stored ``inference``
windows' counts equals the load driver's ledger. How long convergence took is the
benchmark's to print, not a test's to assert.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "chaos.py"
SCENARIOS = ["broker-kill", "poison", "cp-kill"]


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("chaos")
    out = root / "result.json"
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--agents", "3",
            "--rate", "5",
            "--window", "0.5",
            "--broker-down", "3",
            "--cp-down", "1",
            "--poison-hold", "2",
            "--settle", "2",
            "--converge-timeout", "45",
            "--reconnect-max", "2",
            "--scenarios", ",".join(SCENARIOS),
            "--data-dir", str(root / "run"),
            "--json", str(out),
        ],
        capture_output=True,
        text=True,
        timeout=280,
    )  # fmt: skip
    # 0: every scenario kept its ledger; 1: one did not (the tests below say which).
    assert run.returncode in (0, 1), run.stdout[-4000:] + run.stderr[-4000:]
    payload = json.loads(out.read_text())
    assert payload["aborted"] is None, payload["aborted"]
    return {r["name"]: r for r in payload["results"]}


def assert_ledger_kept(result: dict[str, Any]) -> None:
    off = {
        d["device_id"]: (d["expected"], d["stored"])
        for d in result["per_device"]
        if d["stored"] != d["expected"]
    }
    assert not off, f"(answered, stored) per device off the ledger: {off}; {result['notes']}"
    assert result["expected"] > 0  # the load ran through the scenario
    assert result["converged_s"] is not None, result["notes"]


def test_steady_load_is_counted_exactly_once(chaos_run: dict[str, Any]) -> None:
    assert_ledger_kept(chaos_run["steady"])


@pytest.mark.xfail(
    strict=False,
    reason="issue 13 item 2: agents that reconnect before the control plane has re-subscribed "
    "have their replay acknowledged by a broker that kept no session for it, and delete it",
)
def test_broker_killed_and_restarted_loses_no_inference(chaos_run: dict[str, Any]) -> None:
    assert_ledger_kept(chaos_run["broker-kill"])


def test_poison_messages_on_every_up_topic_do_not_stop_ingest(chaos_run: dict[str, Any]) -> None:
    assert_ledger_kept(chaos_run["poison"])


def test_control_plane_killed_and_restarted_loses_no_inference(chaos_run: dict[str, Any]) -> None:
    assert_ledger_kept(chaos_run["cp-kill"])
