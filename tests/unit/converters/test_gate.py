"""Gate rules on measurements alone: drop, agreement, per-class loss, budgets, objective."""

from __future__ import annotations

import numpy as np

from edgefleet.converters.gate import CandidateResult, GateLimits, choose, judge

LIMITS = GateLimits(max_accuracy_drop=0.01, max_model_bytes=1000, latency_budget_ms=5.0)
LABELS = np.repeat(np.arange(10), 20)


def _row(name: str = "c", size: int = 100, latency: float = 1.0) -> CandidateResult:
    return CandidateResult(
        candidate=name, precision="int8", format="onnx", size_bytes=size, latency_ms=latency
    )


def test_identical_predictions_pass() -> None:
    row = judge(_row(), predictions=LABELS, float_predictions=LABELS, labels=LABELS, limits=LIMITS)
    assert row.verdict == "passed" and row.agreement == 1.0 and row.drop == 0.0


def test_candidate_that_loses_one_class_fails_even_within_the_overall_drop() -> None:
    predictions = LABELS.copy()
    predictions[LABELS == 3][:2] = 0
    idx = np.flatnonzero(LABELS == 3)[:2]
    predictions[idx] = 0  # class 3 loses 10 points, overall only 1
    limits = GateLimits(
        max_accuracy_drop=0.02, max_model_bytes=1000, latency_budget_ms=5.0, min_agreement=0.9
    )
    row = judge(
        _row(), predictions=predictions, float_predictions=LABELS, labels=LABELS, limits=limits
    )
    assert row.verdict == "failed"
    assert any("class 3" in r for r in row.reasons)


def test_agreement_below_point_nine_is_refused_outright() -> None:
    predictions = (LABELS + 1) % 10
    row = judge(
        _row(), predictions=predictions, float_predictions=LABELS, labels=None, limits=LIMITS
    )
    assert row.verdict == "refused"


def test_without_labels_only_agreement_and_budgets_are_judged() -> None:
    row = judge(_row(), predictions=LABELS, float_predictions=LABELS, labels=None, limits=LIMITS)
    assert row.verdict == "passed" and row.accuracy is None and row.drop is None


def test_size_and_latency_budgets_fail_a_candidate() -> None:
    row = judge(
        _row(size=5000, latency=9.0),
        predictions=LABELS,
        float_predictions=LABELS,
        labels=LABELS,
        limits=LIMITS,
    )
    assert row.verdict == "failed" and len(row.reasons) == 2


def test_objective_picks_among_passing_candidates_only() -> None:
    rows = [
        _row("big", size=900, latency=0.5),
        _row("small", size=100, latency=2.0),
        _row("broken", size=10, latency=0.1),
    ]
    for r in rows:
        judge(r, predictions=LABELS, float_predictions=LABELS, labels=LABELS, limits=LIMITS)
    rows[2].verdict = "failed"
    assert choose(rows, "smallest").candidate == "small"  # type: ignore[union-attr]
    for r in rows:
        r.chosen = False
    assert choose(rows, "fastest").candidate == "big"  # type: ignore[union-attr]


def test_no_passing_candidate_chooses_nothing() -> None:
    row = _row()
    row.verdict = "failed"
    assert choose([row], "most_accurate") is None
