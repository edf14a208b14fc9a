"""The drift benchmark on real data (``bench/drift_detection.py --quick``), run as a user
runs it: every detector's row is printed for every dataset, with figures it measured.

Needs the ``bench-drift`` extra (the datasets ship inside statsmodels' and NannyML's
wheels; river brings ADWIN), which ``make setup-test`` installs; skipped without it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("statsmodels", reason="needs the bench-drift extra")
pytest.importorskip("river", reason="needs the bench-drift extra")
pytest.importorskip("nannyml", reason="needs the bench-drift extra")

ROOT = Path(__file__).resolve().parents[3]
DETECTORS = ("edgefleet PSI", "scipy KS", "river ADWIN", "NannyML JS")
DATASETS = ("Nile flow 1871-1970", "US census MA 2015-2018")
ROW = re.compile(
    r"^\| (?P<data>[^|]+) \| (?P<detector>[^|]+) \| (?P<fa>[\d.]+) \((?P<fa_n>\d+)/(?P<n>\d+)\) "
    r"\| (?P<fs>[\d.]+) \(\d+/\d+\) \| (?P<delay>\d+|missed) \| (?P<after>\d+)/(?P<after_n>\d+) "
    r"\| (?P<cpu>[\d.]+) \|$"
)


@pytest.fixture(scope="module")
def quick_output() -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NML_DISABLE_USAGE_LOGGING": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "drift_detection.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rows(output: str) -> dict[tuple[str, str], re.Match[str]]:
    found = {}
    for line in output.splitlines():
        match = ROW.match(line)
        if match:
            found[(match["data"], match["detector"])] = match
    return found


def test_quick_benchmark_prints_every_detector_on_every_real_dataset(quick_output: str) -> None:
    table = rows(quick_output)
    assert set(table) == {(d, k) for d in DATASETS for k in DETECTORS}, quick_output
    assert "not run" not in quick_output
    for match in table.values():
        assert int(match["n"]) > 0 and int(match["after_n"]) > 0
        assert float(match["fa"]) == pytest.approx(int(match["fa_n"]) / int(match["n"]), abs=1e-3)
        assert float(match["cpu"]) > 0


def test_edgefleet_flags_the_documented_nile_change_without_false_alarms(
    quick_output: str,
) -> None:
    nile = rows(quick_output)[("Nile flow 1871-1970", "edgefleet PSI")]
    assert nile["delay"] != "missed"
    assert int(nile["after"]) > 0
    assert int(nile["fa_n"]) == 0


def test_quick_benchmark_measures_the_device_cost_per_sample(quick_output: str) -> None:
    cost = re.search(
        r"batch 1: (?P<one>[\d.]+) µs/sample, batch 32: (?P<many>[\d.]+) µs/sample", quick_output
    )
    assert cost, quick_output
    assert float(cost["one"]) > 0 and float(cost["many"]) > 0
