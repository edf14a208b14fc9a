"""Output drift: the model's answers per window against its answers on the holdout."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.drift import DriftDetector, Reference, reference_statistics

WINDOW = 500


def softmax_scores(classes: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    logits = rng.normal(0, 0.5, (len(classes), n_classes))
    logits[np.arange(len(classes)), classes] += 3.0
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def holdout() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20)
    x = rng.normal(0, 1, (3000, 4))
    classes = rng.choice(4, size=3000, p=[0.4, 0.3, 0.2, 0.1])
    return x, softmax_scores(classes, 4, rng)


def test_class_shares_are_part_of_the_reference(holdout: tuple[np.ndarray, np.ndarray]) -> None:
    x, scores = holdout
    stats = reference_statistics(x, input_name="x", outputs=scores)
    assert stats["outputs"]["kind"] == "classes"
    assert stats["outputs"]["categories"] == [0.0, 1.0, 2.0, 3.0]
    assert sum(stats["outputs"]["proportions"]) == pytest.approx(1.0)
    assert stats["outputs"]["psi_threshold"] > 0


def test_shifted_answers_drift_the_output_but_not_the_inputs(
    holdout: tuple[np.ndarray, np.ndarray],
) -> None:
    x, scores = holdout
    reference = Reference.from_json(reference_statistics(x, input_name="x", outputs=scores))
    rng = np.random.default_rng(21)
    rows = x[rng.integers(0, len(x), 2 * WINDOW)]
    same = softmax_scores(rng.choice(4, size=WINDOW, p=[0.4, 0.3, 0.2, 0.1]), 4, rng)
    moved = softmax_scores(rng.choice(4, size=WINDOW, p=[0.1, 0.2, 0.3, 0.4]), 4, rng)
    first, second = DriftDetector(reference).observe(rows, np.concatenate([same, moved]))
    assert not first.drifted and not second.drifted  # the inputs did not move
    assert first.output is not None and not first.output.drifted
    assert second.output is not None and second.output.drifted
    data = second.to_data()
    assert data["output"]["drifted"] and data["output"]["kind"] == "classes"
    assert data["drifted"] is False


def test_regression_scores_are_binned_by_quantiles() -> None:
    rng = np.random.default_rng(22)
    x = rng.normal(0, 1, (2000, 3))
    y = x.sum(axis=1, keepdims=True).astype(np.float32)
    stats = reference_statistics(x, input_name="x", outputs=y)
    assert stats["outputs"]["kind"] == "scores" and "categories" not in stats["outputs"]
    reference = Reference.from_json(stats)
    (report,) = DriftDetector(reference).observe(x[:WINDOW], y[:WINDOW] + 2.0)
    assert report.output is not None and report.output.drifted


def test_without_outputs_the_report_has_no_output_field(
    holdout: tuple[np.ndarray, np.ndarray],
) -> None:
    x, scores = holdout
    reference = Reference.from_json(reference_statistics(x, input_name="x"))
    (report,) = DriftDetector(reference).observe(x[:WINDOW], scores[:WINDOW])
    assert report.output is None and "output" not in report.to_data()
