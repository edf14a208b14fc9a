"""Wave sizing and gate arithmetic, without a database."""

from __future__ import annotations

import pytest

from control_plane.errors import InvalidRequestError
from control_plane.models import RolloutGates
from control_plane.services.gates import GateInputs, evaluate_gates, merged_p95
from control_plane.services.rollouts import wave_sizes


def window(count: int, errors: int = 0, p95_bucket: int = 3) -> dict[str, object]:
    counts = [0] * 13
    counts[p95_bucket] = count
    bounds = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
    return {"count": count, "errors": errors, "histogram": {"bounds_ms": bounds, "counts": counts}}


def test_waves_are_cumulative_and_always_end_with_the_whole_fleet() -> None:
    assert wave_sizes([1, "10%", "50%", "100%"], 200) == [1, 20, 100, 200]
    assert wave_sizes([1, "10%"], 5) == [1, 5]  # 10% of 5 adds nobody; 100% appended
    assert wave_sizes(["100%"], 3) == [3]
    assert wave_sizes(["2", 50], 10) == [2, 10]


@pytest.mark.parametrize("spec", [0, "0%", "abc", "150%", True])
def test_invalid_wave_is_refused(spec: object) -> None:
    with pytest.raises(InvalidRequestError):
        wave_sizes([spec], 10)  # type: ignore[list-item]


def test_error_rate_breach_carries_the_numbers() -> None:
    verdict = evaluate_gates(
        gates=RolloutGates(max_error_rate=0.05),
        inputs=GateInputs(candidate=[window(100, errors=30), window(100, errors=10)]),
    )
    (breach,) = verdict.breached
    assert breach.value == pytest.approx(0.2)
    assert breach.detail == "0.200 > 0.050 (40 errors / 200 inferences)"


def test_latency_ratio_compares_merged_histograms_with_the_previous_bundle() -> None:
    assert merged_p95([window(95, p95_bucket=3), window(5, p95_bucket=6)]) == 10.0
    verdict = evaluate_gates(
        gates=RolloutGates(max_p95_latency_ratio=1.5),
        inputs=GateInputs(candidate=[window(100, p95_bucket=4)], baseline=[window(100)]),
    )
    (gate,) = verdict.values
    assert (gate.value, gate.ok) == (2.0, False)


def test_missing_telemetry_waits_only_when_a_minimum_is_set() -> None:
    gates = RolloutGates(max_error_rate=0.05, min_inferences=50)
    verdict = evaluate_gates(gates=gates, inputs=GateInputs(candidate=[window(10)]))
    assert verdict.waiting is not None and not verdict.breached
    relaxed = evaluate_gates(gates=RolloutGates(max_error_rate=0.05), inputs=GateInputs())
    assert relaxed.waiting is None and not relaxed.breached


def test_install_failure_rate_and_agreement_gates() -> None:
    verdict = evaluate_gates(
        gates=RolloutGates(max_install_failure_rate=0.1, min_agreement=0.9),
        inputs=GateInputs(finished=10, failed=2, shadow=[{"count": 100, "agreement": 0.8}]),
    )
    assert [g.name for g in verdict.breached] == ["install_failure_rate", "agreement"]
    assert "2 of 10 devices failed" in verdict.reason()
