"""What a device's stored event adds to an arm: each metric read from its own fields, and
whatever a device sends that is not a well-formed number counting for nothing."""

from __future__ import annotations

from typing import Any

import pytest

from edgefleet.control_plane.services.experiments.outcomes import ArmOutcomes, add_event

BOUNDS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


def _tallies(kind: str, data: Any) -> dict[str, tuple[float, float, float]]:
    arm = ArmOutcomes()
    add_event(arm, kind, data)
    return {m: (t.n, t.total, t.total_sq) for m, t in arm.tallies.items() if t.n}


def test_an_inference_window_adds_errors_and_latency() -> None:
    counts = [0] * 13
    counts[2], counts[12] = 3, 1  # three at 5 ms, one above 5 s
    tallies = _tallies(
        "inference",
        {"count": 4, "errors": 1, "histogram": {"bounds_ms": BOUNDS, "counts": counts}},
    )
    assert tallies["error_rate"] == (4, 1, 1)
    assert tallies["latency_ms"] == (4, 15 + 10_000, 75 + 100_000_000)


def test_outcome_and_accuracy_events_add_their_sums() -> None:
    assert _tallies("outcome", {"count": 3, "sum": -1.5, "sum_sq": 2.0}) == {
        "outcome": (3, -1.5, 2.0)
    }
    drift = {"drifted": False, "accuracy": {"labelled": 10, "correct": 9, "value": 0.9}}
    assert _tallies("drift", drift) == {"accuracy": (10, 9, 9)}


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("inference", "not an object"),
        ("inference", {"count": True, "errors": 0}),
        ("inference", {"count": 5, "errors": 6}),
        ("inference", {"count": -1, "errors": 0}),
        ("inference", {"count": float("nan"), "errors": 0}),
        ("inference", {"histogram": {"bounds_ms": BOUNDS, "counts": [1, 2]}}),
        ("inference", {"histogram": {"bounds_ms": ["x"] * 12, "counts": [1] * 13}}),
        ("inference", {"histogram": {"bounds_ms": list(range(1000)), "counts": [1] * 1001}}),
        ("outcome", {"count": 1, "sum": "1", "sum_sq": 1}),
        ("outcome", {"count": 1, "sum": float("inf"), "sum_sq": 1}),
        ("drift", {"accuracy": {"labelled": 3, "correct": 4}}),
        ("drift", {"accuracy": [[[[]]]]}),
    ],
)
def test_a_malformed_event_counts_for_nothing(kind: str, data: Any) -> None:
    assert _tallies(kind, data) == {}
