"""What of a model's answers the device's output drift counts."""

from __future__ import annotations

import numpy as np

from edgefleet.agent.telemetry.drift import scored_outputs


def test_agent_counts_predicted_classes_or_the_first_score() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert scored_outputs({"probs": scores}, "classes").tolist() == [1, 0]
    assert scored_outputs({"label": np.array([3, 1])}, "classes").tolist() == [3, 1]
    assert scored_outputs({"y": np.array([[1.5], [2.5]])}, "scores").tolist() == [1.5, 2.5]
    assert scored_outputs({"label": np.array([3, 1])}, "scores") is None
