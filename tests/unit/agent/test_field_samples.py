"""Field samples: sent from drifted windows with the window's labelled rows, under a
daily byte budget; accuracy per window from the labels joined during it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.inference.feedback import LabelledAnswer
from edgefleet.agent.telemetry.budget import ByteBudget
from edgefleet.agent.telemetry.drift import DriftMonitor, Reservoir, fit_sample
from edgefleet.bundle import Manifest, build_manifest
from edgefleet.drift import DriftThresholds, Reference, reference_statistics
from edgefleet.messages import TelemetryEvent
from tests.support.polling import wait_until

WINDOW = 200
DAY = 86_400.0


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(2000, 4)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(rows: np.ndarray) -> Reference:
    stats = reference_statistics(rows, input_name="input", window=WINDOW, seed=0)
    return Reference.from_json(stats)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    fields = {
        "bundle_id": "m-1-p-r1",
        "model": {"name": "m", "version": "1"},
        "release": 1,
        "profiles": ["p"],
        "hardware": ["x86_64"],
        "runtime": {"name": "onnxruntime", "version": ">=1"},
        "artifact": "model.onnx",
        "signature": {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        },
    }
    return build_manifest(fields, {"model.onnx": (b"\x08\x07onnx", "model")})


class Monitor:
    """A running monitor and the events it published."""

    def __init__(self, reference: Reference, manifest: Manifest, budget: ByteBudget) -> None:
        self.events: list[TelemetryEvent] = []
        self.monitor = DriftMonitor(
            reference=reference,
            manifest=manifest,
            publish=self.events.append,
            thresholds=DriftThresholds(window=WINDOW),
            sample_size=20,
            budget=budget,
        )
        self.monitor.start()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.kind == kind]

    def window(self, x: np.ndarray, windows: int) -> None:
        self.monitor.submit(x, np.zeros(len(x), np.int64))
        wait_until(lambda: len(self.of("drift")) >= windows, f"{windows} drift windows")


def labelled(rows: np.ndarray, predicted: list[int], labels: list[int]) -> LabelledAnswer:
    return LabelledAnswer(
        request_id="r",
        model="m",
        model_version="1",
        bundle_id="m-1-p-r1",
        predicted=np.asarray(predicted),
        labels=np.asarray(labels),
        feeds={"input": rows},
    )


def test_clean_window_sends_only_labelled_rows_and_drifted_window_sends_its_reservoir(
    rows: np.ndarray, reference: Reference, manifest: Manifest, tmp_path: Path
) -> None:
    run = Monitor(reference, manifest, ByteBudget(1 << 20, tmp_path / "budget.json"))
    try:
        run.window(rows[:WINDOW], 1)  # clean, no labels: nothing to send
        assert run.of("sample") == []
        assert run.of("drift")[0]["accuracy"] == {"labelled": 0, "correct": 0, "value": None}

        run.monitor.observe_labels(labelled(rows[:4], [1, 2, 3, 4], [1, 2, 0, 0]))
        run.window(rows[WINDOW : 2 * WINDOW], 2)  # clean, with labels
        (sample,) = run.of("sample")
        assert sample["drifted"] is False and sample["labels"] == [1, 2, 0, 0]
        assert run.of("drift")[1]["accuracy"] == {"labelled": 4, "correct": 2, "value": 0.5}

        run.window(rows[:WINDOW] + 5.0, 3)  # every feature shifted: drifted
        assert run.of("drift")[2]["drifted"] is True
        drifted = run.of("sample")[1]
        assert drifted["drifted"] is True and drifted["drawn_from"] == WINDOW
        assert len(drifted["inputs"]) == 20 and drifted["labels"] == [None] * 20
        assert drifted["withheld_rows"] == 0
    finally:
        run.monitor.stop()


def test_at_the_daily_budget_rows_are_withheld_and_counted_until_the_next_day(
    rows: np.ndarray, reference: Reference, manifest: Manifest, tmp_path: Path
) -> None:
    now = [1_000 * DAY]
    budget = ByteBudget(1000, tmp_path / "budget.json", clock=lambda: now[0])
    run = Monitor(reference, manifest, budget)
    try:
        run.window(rows[:WINDOW] + 5.0, 1)
        first = run.of("sample")[0]
        assert 0 < len(first["inputs"]) < 20  # 20 rows of 4 floats do not fit 1000 bytes
        assert first["withheld_rows"] == 20 - len(first["inputs"])
        run.window(rows[:WINDOW] + 5.0, 2)
        second = run.of("sample")[1]
        assert len(second["inputs"]) < 20 and second["withheld_rows"] > 0
        assert budget.used <= 1000
        now[0] += DAY  # a new UTC day: a fresh budget
        run.window(rows[:WINDOW] + 5.0, 3)
        assert len(run.of("sample")[2]["inputs"]) == len(first["inputs"])
    finally:
        run.monitor.stop()


def test_budget_survives_a_restart_within_the_day_and_resets_on_the_next(tmp_path: Path) -> None:
    now = [5 * DAY + 10]
    path = tmp_path / "budget.json"
    ByteBudget(1000, path, clock=lambda: now[0]).spend(700)
    assert ByteBudget(1000, path, clock=lambda: now[0]).remaining() == 300
    now[0] += DAY
    assert ByteBudget(1000, path, clock=lambda: now[0]).remaining() == 1000
    path.write_text("{not json")
    assert ByteBudget(1000, path, clock=lambda: now[0]).remaining() == 1000


def test_sample_takes_labelled_rows_first_when_the_budget_is_short() -> None:
    labelled_rows = [(np.array([1.0, 2.0]), 1, 1), (np.array([3.0, 4.0]), 0, 2)]
    drawn = [(np.array([5.0, 6.0]), 1)] * 5
    inputs, answers, labels, withheld = fit_sample(labelled_rows, drawn, 40)
    assert labels == [1, 2] and answers == [1, 0] and withheld == 5
    inputs, _, labels, withheld = fit_sample(labelled_rows, drawn, 10_000)
    assert len(inputs) == 7 and labels[2:] == [None] * 5 and withheld == 0


def test_reservoir_holds_a_bounded_uniform_sample_of_every_row_offered() -> None:
    reservoir = Reservoir(50, seed=1)
    x = np.arange(10_000, dtype=np.float64)[:, None]
    reservoir.offer(x, np.zeros(10_000, np.int64))
    kept, seen = reservoir.take()
    assert seen == 10_000 and len(kept) == 50
    values = np.array([row[0] for row, _ in kept])
    assert values.min() < 2_500 and values.max() > 7_500  # from all over the stream
    assert reservoir.take() == ([], 0)
