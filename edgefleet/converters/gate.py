"""The accuracy gate: which measured candidates may ship, and which one does.

Pure functions over measurements, so the rules are tested without any runtime.
Accuracy is judged against the float model on the holdout given with the build;
agreement with the float model's top-1 catches a candidate that is "as accurate"
for the wrong reasons; a per-class check stops a candidate that trades one class
away for the others. Without labels only agreement can be judged, and the result
says so (``verified`` false).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgefleet.profile import Objective

MIN_AGREEMENT = 0.98
REFUSE_BELOW_AGREEMENT = 0.9
MAX_CLASS_DROP = 0.05


@dataclass(frozen=True)
class GateLimits:
    max_accuracy_drop: float
    max_model_bytes: int
    latency_budget_ms: float
    min_agreement: float = MIN_AGREEMENT
    refuse_below_agreement: float = REFUSE_BELOW_AGREEMENT
    max_class_drop: float = MAX_CLASS_DROP


@dataclass
class CandidateResult:
    """One row of the build's candidates table."""

    candidate: str
    precision: str
    format: str
    size_bytes: int
    latency_ms: float | None = None
    accuracy: float | None = None
    drop: float | None = None
    agreement: float | None = None
    worst_class_drop: float | None = None
    verdict: str = "error"  # passed | failed | refused | skipped | error
    reasons: list[str] = field(default_factory=list)
    chosen: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[int, float]:
    return {int(c): float(np.mean(predictions[labels == c] == c)) for c in np.unique(labels)}


def judge(
    row: CandidateResult,
    *,
    predictions: np.ndarray,
    float_predictions: np.ndarray,
    labels: np.ndarray | None,
    limits: GateLimits,
) -> CandidateResult:
    """Fill in ``row``'s metrics and verdict from its predictions on the holdout."""
    reasons: list[str] = []
    row.agreement = float(np.mean(predictions == float_predictions))
    if labels is not None:
        float_accuracy = float(np.mean(float_predictions == labels))
        row.accuracy = float(np.mean(predictions == labels))
        row.drop = float_accuracy - row.accuracy
        if row.drop > limits.max_accuracy_drop + 1e-12:
            reasons.append(f"accuracy drop {row.drop:.4f} > {limits.max_accuracy_drop:.4f}")
        before = per_class_accuracy(float_predictions, labels)
        after = per_class_accuracy(predictions, labels)
        drops = {c: before[c] - after[c] for c in before}
        worst = max(drops, key=lambda c: drops[c])
        row.worst_class_drop = float(drops[worst])
        if drops[worst] > limits.max_class_drop + 1e-12:
            reasons.append(f"class {worst} lost {drops[worst]:.3f} > {limits.max_class_drop}")
    if row.agreement < limits.min_agreement:
        reasons.append(f"agreement {row.agreement:.4f} < {limits.min_agreement}")
    if row.size_bytes > limits.max_model_bytes:
        reasons.append(f"size {row.size_bytes} > {limits.max_model_bytes} bytes")
    if row.latency_ms is not None and row.latency_ms > limits.latency_budget_ms:
        reasons.append(f"latency {row.latency_ms:.3f} ms > {limits.latency_budget_ms} ms")
    if row.agreement < limits.refuse_below_agreement:
        row.verdict = "refused"
    else:
        row.verdict = "failed" if reasons else "passed"
    row.reasons = reasons
    return row


def choose(rows: list[CandidateResult], objective: Objective) -> CandidateResult | None:
    """The passing candidate that best meets ``objective``; ``None`` when none passed.

    Ties go to the more accurate, then the smaller candidate.
    """
    passing = [r for r in rows if r.passed]
    if not passing:
        return None

    def quality(r: CandidateResult) -> float:
        return r.accuracy if r.accuracy is not None else (r.agreement or 0.0)

    if objective == "smallest":
        best = min(passing, key=lambda r: (r.size_bytes, -quality(r)))
    elif objective == "fastest":
        best = min(passing, key=lambda r: (r.latency_ms or 0.0, -quality(r), r.size_bytes))
    else:
        best = min(passing, key=lambda r: (-quality(r), r.size_bytes))
    best.chosen = True
    return best
