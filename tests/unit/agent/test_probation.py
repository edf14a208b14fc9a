"""The probation health rule and the reconnect backoff it relies on in the field."""

from __future__ import annotations

import random
import threading

from edgefleet.agent.config import ProbationConfig
from edgefleet.agent.telemetry.counters import InferenceStats, LatencyWindow, probation_breach
from edgefleet.mqtt import backoff_delay

RULE = ProbationConfig(min_requests=10, max_error_rate=0.1, max_p95_ms=100)


def window(ok: int, failed: int, latency_ms: float) -> LatencyWindow:
    w = LatencyWindow()
    for _ in range(ok):
        w.add(latency_ms, True)
    for _ in range(failed):
        w.add(latency_ms, False)
    return w


def test_healthy_window_passes() -> None:
    assert probation_breach(window(50, 1, 5), RULE) is None


def test_too_few_requests_are_not_judged() -> None:
    assert probation_breach(window(0, 9, 5), RULE) is None


def test_error_rate_breach_names_the_numbers() -> None:
    reason = probation_breach(window(40, 10, 5), RULE)
    assert reason is not None and "error rate 0.200" in reason and "10 of 50" in reason


def test_latency_breach_names_the_p95() -> None:
    reason = probation_breach(window(30, 0, 300), RULE)
    assert reason is not None and "p95 500 ms > 100 ms" in reason


def test_only_the_bundle_on_probation_counts_toward_its_window() -> None:
    stats = InferenceStats()
    stats.start_probation("new")
    stats.record(("old", 1.0, False))
    stats.record(("new", 1.0, True))
    assert stats.probation_window().count == 1
    assert stats.take_window().count == 2
    assert stats.take_window().count == 0


def test_observations_recorded_from_many_threads_are_each_counted_once() -> None:
    stats = InferenceStats()
    stats.start_probation("new")
    per_thread = 5000

    def serve(bundle: str) -> None:
        for i in range(per_thread):
            stats.record((bundle, float(i % 700), i % 10 != 0))

    threads = [threading.Thread(target=serve, args=(b,)) for b in ("old", "new", "new", "new")]
    for thread in threads:
        thread.start()
    folded = 0
    while any(t.is_alive() for t in threads):  # folding while they record
        folded += stats.fold()
    for thread in threads:
        thread.join()
    folded += stats.fold()
    window, probation = stats.take_window(), stats.probation_window()
    assert folded == window.count == 4 * per_thread
    assert window.errors == 4 * per_thread // 10
    assert probation.count == 3 * per_thread
    assert sum(window.buckets) == window.count
    one_thread = LatencyWindow()  # the one-at-a-time bisect reference
    for i in range(per_thread):
        one_thread.add(float(i % 700), True)
    assert probation.buckets == [3 * n for n in one_thread.buckets]


def test_window_reports_the_documented_inference_shape() -> None:
    data = window(3, 1, 7).to_data(10.0)
    assert set(data) == {"window_s", "count", "errors", "latency_ms", "histogram"}
    assert set(data["latency_ms"]) == {"p50", "p95", "p99"}
    assert sum(data["histogram"]["counts"]) == 4


def test_reconnect_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(30.0, 1.0 * 2**attempt)
        delays = {backoff_delay(attempt, 1.0, 30.0, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered, not lock-step
