"""Wave sizing and gate arithmetic, without a database."""

from __future__ import annotations

import pytest

from edgefleet.control_plane.core.errors import InvalidRequestError
from edgefleet.control_plane.core.tables import RolloutGates
from edgefleet.control_plane.services.rollouts.gates import (
    DEFAULT_WINDOW_S,
    GateInputs,
    evaluate_gates,
    merged_p95,
)
from edgefleet.control_plane.services.rollouts.selection import wave_sizes


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


def test_missing_telemetry_keeps_the_wave_waiting_up_to_min_inferences() -> None:
    gates = RolloutGates(max_error_rate=0.05, min_inferences=50)
    verdict = evaluate_gates(gates=gates, inputs=GateInputs(candidate=[window(10)]))
    assert verdict.waiting is not None and not verdict.breached
    assert "10 of 50 inferences" in verdict.waiting


def test_telemetry_gate_never_passes_without_telemetry() -> None:
    verdict = evaluate_gates(
        gates=RolloutGates(max_error_rate=0.05, max_p95_latency_ratio=1.5, min_agreement=0.9),
        inputs=GateInputs(members=2, soak_elapsed_s=30.0),
    )
    assert not any(v.ok for v in verdict.values)
    assert not verdict.breached  # missing evidence is not a breach...
    assert verdict.waiting is not None and not verdict.expired  # ...the wave keeps soaking
    assert {v.name for v in verdict.values} == set(verdict.lacking)
    assert all(v.detail.startswith("not enough evidence") for v in verdict.values)


def test_soak_lasts_a_telemetry_window_unless_every_device_already_reported() -> None:
    gates = RolloutGates(max_error_rate=0.05)
    windows = [window(100) | {"window_s": 10}]
    early = GateInputs(candidate=windows, members=2, reporting=1, soak_elapsed_s=4.0)
    assert evaluate_gates(gates=gates, inputs=early).waiting == (
        "1 of 2 devices reported within the first telemetry window (10 s)"
    )
    everyone = GateInputs(candidate=windows, members=2, reporting=2, soak_elapsed_s=4.0)
    assert evaluate_gates(gates=gates, inputs=everyone).waiting is None
    later = GateInputs(candidate=windows, members=2, reporting=1, soak_elapsed_s=10.0)
    verdict = evaluate_gates(gates=gates, inputs=later)
    assert verdict.waiting is None and [v.ok for v in verdict.values] == [True]
    # Before any device reported, the agents' default window is assumed.
    silent = GateInputs(members=1, soak_elapsed_s=DEFAULT_WINDOW_S - 1)
    assert "telemetry window" in (evaluate_gates(gates=gates, inputs=silent).waiting or "")


def test_wave_without_evidence_fails_at_its_deadline_rather_than_passing() -> None:
    gates = RolloutGates(max_error_rate=0.05, evidence_wait_s=20)
    inputs = GateInputs(members=1, soak_s=5.0, soak_elapsed_s=DEFAULT_WINDOW_S + 19)
    assert not evaluate_gates(gates=gates, inputs=inputs).expired
    inputs = GateInputs(members=1, soak_s=5.0, soak_elapsed_s=DEFAULT_WINDOW_S + 20)
    verdict = evaluate_gates(gates=gates, inputs=inputs)
    assert verdict.expired and not verdict.breached
    assert verdict.reason() == "not enough evidence: error_rate: 0 of 1 inferences"


def test_breach_shown_by_enough_evidence_is_not_held_back_by_other_missing_evidence() -> None:
    verdict = evaluate_gates(
        gates=RolloutGates(max_error_rate=0.05, min_agreement=0.9),
        inputs=GateInputs(candidate=[window(100, errors=50)], members=1, reporting=1),
    )
    assert [v.name for v in verdict.breached] == ["error_rate"]
    assert verdict.lacking == ("agreement",)


def test_gates_without_telemetry_thresholds_need_no_evidence() -> None:
    verdict = evaluate_gates(
        gates=RolloutGates(max_install_failure_rate=0.0),
        inputs=GateInputs(finished=1, members=1, soak_elapsed_s=0.0),
    )
    assert verdict.waiting is None and [v.ok for v in verdict.values] == [True]


def test_install_failure_rate_and_agreement_gates() -> None:
    verdict = evaluate_gates(
        gates=RolloutGates(max_install_failure_rate=0.1, min_agreement=0.9),
        inputs=GateInputs(finished=10, failed=2, shadow=[{"count": 100, "agreement": 0.8}]),
    )
    assert [g.name for g in verdict.breached] == ["install_failure_rate", "agreement"]
    assert "2 of 10 devices failed" in verdict.reason()
