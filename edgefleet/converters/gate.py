"""The accuracy gate: which measured candidates may ship, and which one does.

Pure functions over measurements, so the rules are tested without any runtime.
Every output is judged against the float model's output on the same holdout rows,
by what it means (its task, declared at registration; ``parse_task``):

* ``classification``: top-1 agreement, which catches a candidate that is "as accurate"
  for the wrong reasons; with labels, the accuracy drop and per-class recall, which
  stops a candidate that trades one class away, judged only for classes with at least
  ``MIN_CLASS_ROWS`` rows (smaller ones are reported as not judged, never veto);
* ``binary:THRESHOLD``: one score per row; agreement of the decisions at the threshold,
  the score error, and with labels the accuracy drop;
* ``regression``: RMS error relative to the float output's spread;
* ``embedding``: mean cosine similarity to the float embeddings;
* ``generic`` (the default without labels): float outputs on relative error, integer
  outputs on exact agreement.

A metric that cannot discriminate on the holdout (argmax over one column, a constant
output, too few rows for the agreement bound) is an ``UnjudgeableError`` before any
candidate is measured, never a pass. Without labels only agreement with the float
model is judged, and the result says so (``verified`` false).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgefleet.converters.errors import UnjudgeableError
from edgefleet.profile import Objective
from edgefleet.tensors import TensorSpec

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
    relative_error: float | None = None  # the worst numeric error relative to the float spread
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-output metrics
    not_judged: list[str] = field(default_factory=list)  # metrics the holdout is too thin for
    verdict: str = "error"  # passed | failed | refused | skipped | error
    reasons: list[str] = field(default_factory=list)
    chosen: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


MIN_CLASS_ROWS = 20
"""A class with fewer holdout rows than this is reported as not judged: its recall moves
in steps too coarse to veto a candidate, or to pass one."""


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
    """Fill in ``row``'s metrics and verdict from its top-1 classes on the holdout."""
    score = _classes(predictions, float_predictions, labels, limits)
    row.agreement, row.accuracy, row.drop = score.agreement, score.accuracy, score.drop
    row.worst_class_drop = score.worst_class_drop
    row.not_judged = list(score.not_judged)
    return _verdict(row, score.reasons, refused=score.refused, limits=limits)


def _verdict(
    row: CandidateResult, reasons: list[str], *, refused: bool, limits: GateLimits
) -> CandidateResult:
    reasons = list(reasons)
    if row.size_bytes > limits.max_model_bytes:
        reasons.append(f"size {row.size_bytes} > {limits.max_model_bytes} bytes")
    if row.latency_ms is not None and row.latency_ms > limits.latency_budget_ms:
        reasons.append(f"latency {row.latency_ms:.3f} ms > {limits.latency_budget_ms} ms")
    if refused:
        row.verdict = "refused"
    else:
        row.verdict = "failed" if reasons else "passed"
    row.reasons = reasons
    return row


@dataclass
class OutputScore:
    """One output's metrics against the float model, and what they fail or cannot judge."""

    task: str
    agreement: float | None = None
    accuracy: float | None = None
    drop: float | None = None
    worst_class_drop: float | None = None
    relative_error: float | None = None
    cosine: float | None = None
    reasons: list[str] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)
    refused: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], False)}


def _classes(
    predictions: np.ndarray,
    float_predictions: np.ndarray,
    labels: np.ndarray | None,
    limits: GateLimits,
    *,
    prefix: str = "",
) -> OutputScore:
    score = OutputScore(task="classification")
    score.agreement = float(np.mean(predictions == float_predictions))
    if labels is not None:
        labels = labels.astype(np.int64)
        float_accuracy = float(np.mean(float_predictions == labels))
        score.accuracy = float(np.mean(predictions == labels))
        score.drop = float_accuracy - score.accuracy
        if score.drop > limits.max_accuracy_drop + 1e-12:
            score.reasons.append(
                f"{prefix}accuracy drop {score.drop:.4f} > {limits.max_accuracy_drop:.4f}"
            )
        classes, counts = np.unique(labels, return_counts=True)
        judged = [int(c) for c, k in zip(classes, counts, strict=True) if k >= MIN_CLASS_ROWS]
        small = [
            f"{int(c)} ({int(k)} rows)"
            for c, k in zip(classes, counts, strict=True)
            if k < MIN_CLASS_ROWS
        ]
        if small:
            score.not_judged.append(
                f"{prefix}per-class recall of class {', '.join(small)}: "
                f"fewer than {MIN_CLASS_ROWS} holdout rows"
            )
        before = per_class_accuracy(float_predictions, labels)
        after = per_class_accuracy(predictions, labels)
        drops = {c: before[c] - after[c] for c in judged}
        if drops:
            worst = max(drops, key=lambda c: drops[c])
            score.worst_class_drop = float(drops[worst])
            if drops[worst] > limits.max_class_drop + 1e-12:
                score.reasons.append(
                    f"{prefix}class {worst} lost {drops[worst]:.3f} > {limits.max_class_drop}"
                )
    _agreement_rule(score, limits, prefix=prefix, what="agreement")
    return score


def _agreement_rule(score: OutputScore, limits: GateLimits, *, prefix: str, what: str) -> None:
    assert score.agreement is not None
    if score.agreement < limits.min_agreement:
        score.reasons.append(f"{prefix}{what} {score.agreement:.4f} < {limits.min_agreement}")
    if score.agreement < limits.refuse_below_agreement:
        score.refused = True


def choose(rows: list[CandidateResult], objective: Objective) -> CandidateResult | None:
    """The passing candidate that best meets ``objective``; ``None`` when none passed.

    Ties go to the more accurate, then the smaller candidate.
    """
    passing = [r for r in rows if r.passed]
    if not passing:
        return None

    def quality(r: CandidateResult) -> float:
        if r.accuracy is not None:
            return r.accuracy
        if r.agreement is not None:
            return r.agreement
        return -(r.relative_error or 0.0)

    if objective == "smallest":
        best = min(passing, key=lambda r: (r.size_bytes, -quality(r)))
    elif objective == "fastest":
        best = min(passing, key=lambda r: (r.latency_ms or 0.0, -quality(r), r.size_bytes))
    else:
        best = min(passing, key=lambda r: (-quality(r), r.size_bytes))
    best.chosen = True
    return best


# -- tasks: what each output means, and the metric that judges it -----------------------

TASKS = ("classification", "binary", "regression", "embedding", "generic")
DEFAULT_THRESHOLD = 0.5
MAX_RELATIVE_ERROR = 0.05
"""Largest RMS error of a candidate's output relative to the float output's spread (std)."""
MIN_COSINE = 0.99
"""Smallest mean cosine similarity of a candidate's embeddings to the float model's."""
MIN_ERROR_ROWS = 10
"""Fewest holdout rows an error metric is judged on."""


@dataclass(frozen=True)
class OutputTask:
    """What one output means: ``kind`` (one of ``TASKS``) and, for ``binary``, the
    decision threshold on its score."""

    kind: str
    threshold: float = DEFAULT_THRESHOLD

    def __str__(self) -> str:
        return f"binary:{self.threshold:g}" if self.kind == "binary" else self.kind


def _one_task(text: str) -> OutputTask:
    kind, _, arg = text.strip().partition(":")
    if kind not in TASKS:
        raise ValueError(f"unknown task {text.strip()!r}: one of {', '.join(TASKS)}")
    if kind != "binary":
        if arg:
            raise ValueError(f"task {kind} takes no argument, given {text.strip()!r}")
        return OutputTask(kind)
    try:
        threshold = float(arg) if arg else DEFAULT_THRESHOLD
    except ValueError as e:
        raise ValueError(f"binary threshold must be a number, given {arg!r}") from e
    if not np.isfinite(threshold):
        raise ValueError(f"binary threshold must be finite, given {arg!r}")
    return OutputTask("binary", threshold)


def parse_task(text: str | None) -> tuple[OutputTask | None, dict[str, OutputTask]]:
    """``"classification"``, ``"binary:0.3"``, or per output ``"scores=binary:0.3,
    boxes=regression"``, a bare task first applying to the outputs not named.

    Returns:
        (the task for unnamed outputs or None, output name -> task).

    Raises:
        ValueError: An unknown task, a malformed threshold, an output named twice.
    """
    default: OutputTask | None = None
    per_output: dict[str, OutputTask] = {}
    if not text or not text.strip():
        return None, {}
    for item in text.split(","):
        name, eq, task = item.partition("=")
        if not eq:
            if default is not None:
                raise ValueError(f"two tasks for every output: {text!r}")
            default = _one_task(item)
            continue
        name = name.strip()
        if not name or name in per_output:
            raise ValueError(f"output {name!r} named twice or empty in {text!r}")
        per_output[name] = _one_task(task)
    return default, per_output


def resolve_tasks(
    text: str | None, output_names: list[str], *, labels: np.ndarray | None
) -> dict[str, OutputTask]:
    """The task of every output. Undeclared: ``classification`` when integer labels came
    with the holdout, ``regression`` for float labels, else ``generic``.

    Raises:
        ValueError: The text is malformed or names an output the model does not have.
    """
    default, per_output = parse_task(text)
    unknown = sorted(set(per_output) - set(output_names))
    if unknown:
        raise ValueError(f"task names output {unknown[0]!r}; the model's are {output_names}")
    if default is None:
        if labels is None:
            default = OutputTask("generic")
        else:
            default = OutputTask("regression" if labels.dtype.kind == "f" else "classification")
    return {name: per_output.get(name, default) for name in output_names}


def signature_problems(tasks: dict[str, OutputTask], outputs: list[TensorSpec]) -> list[str]:
    """What the declared tasks cannot judge, seen from the output shapes alone (before
    any holdout runs): argmax over one column, a binary task on several scores."""
    problems: list[str] = []
    for spec in outputs:
        task = tasks.get(spec.name)
        if task is None:
            continue
        columns = math.prod(spec.shape[1:]) if len(spec.shape) > 1 else 1
        if any(d == -1 for d in spec.shape[1:]):
            continue  # known only when the model runs
        floating = spec.datatype.startswith("FP")
        if task.kind == "classification" and floating and columns < 2:
            problems.append(
                f"output {spec.name!r} {spec.describe()}: classification takes argmax over "
                f"{columns} column, which is always 0; declare binary:THRESHOLD"
            )
        if task.kind == "binary" and columns != 1:
            problems.append(
                f"output {spec.name!r} {spec.describe()}: binary needs one score per row, "
                f"has {columns}"
            )
    return problems


def _rows(value: np.ndarray, n: int) -> np.ndarray:
    return value.reshape(n, -1) if value.size else value.reshape(n, 0)


def _top1(value: np.ndarray, n: int) -> np.ndarray:
    flat = _rows(value, n)
    if value.dtype.kind == "f":
        return np.argmax(flat, axis=1).astype(np.int64)
    return flat[:, 0].astype(np.int64)


def _why_unjudgeable(
    name: str, value: np.ndarray, task: OutputTask, limits: GateLimits
) -> str | None:
    """Why ``task`` cannot discriminate on the float model's ``value`` of output ``name``."""
    n = len(value) if value.ndim else 0
    min_decision_rows = int(np.ceil(1.0 / max(1e-9, 1.0 - limits.min_agreement)))
    flat = _rows(value, n) if n else value.reshape(0, 0)
    width = flat.shape[1] if n else 0
    if task.kind == "classification":
        if value.dtype.kind == "f" and width < 2:
            return (
                f"output {name!r}: classification takes argmax over {width} column, which "
                "is always 0; declare binary:THRESHOLD for one score per row"
            )
        if value.dtype.kind in "iub" and width != 1:
            return f"output {name!r}: classification needs one label per row, has {width}"
        if n < min_decision_rows:
            return (
                f"output {name!r}: {n} holdout rows cannot resolve agreement "
                f"{limits.min_agreement}; need at least {min_decision_rows}"
            )
        if len(np.unique(_top1(value, n))) < 2:
            return f"output {name!r}: the float model predicts one class on every holdout row"
        return None
    if value.dtype.kind not in "fiub":
        return f"output {name!r}: {value.dtype} values cannot be compared"
    if task.kind == "binary":
        if width != 1:
            return f"output {name!r}: binary needs one score per row, has {width} columns"
        if n < min_decision_rows:
            return (
                f"output {name!r}: {n} holdout rows cannot resolve decision agreement "
                f"{limits.min_agreement}; need at least {min_decision_rows}"
            )
        decisions = flat[:, 0] >= task.threshold
        if decisions.all() or not decisions.any():
            side = "at or above" if decisions.all() else "below"
            return (
                f"output {name!r}: every float score is {side} the threshold "
                f"{task.threshold:g}, so decision agreement cannot discriminate"
            )
        return None
    if n < MIN_ERROR_ROWS:
        return f"output {name!r}: {n} holdout rows; {task.kind} needs at least {MIN_ERROR_ROWS}"
    if task.kind in ("regression", "embedding") and value.dtype.kind != "f":
        return f"output {name!r}: {task.kind} needs float values, has {value.dtype}"
    if float(np.std(value.astype(np.float64))) == 0.0:
        return (
            f"output {name!r} is constant on the holdout: {task.kind} error relative to "
            "its spread cannot be judged"
        )
    if value.dtype.kind in "iub" and n < min_decision_rows:
        return (
            f"output {name!r}: {n} holdout rows cannot resolve agreement "
            f"{limits.min_agreement}; need at least {min_decision_rows}"
        )
    return None


def check_judgeable(
    reference: dict[str, np.ndarray],
    tasks: dict[str, OutputTask],
    *,
    labels: np.ndarray | None,
    limits: GateLimits,
) -> None:
    """``UnjudgeableError`` naming every output whose declared metric cannot
    discriminate on the float model's holdout outputs ``reference``, or labels that
    cannot be classes of a classification or binary output."""
    decided = [n for n, t in tasks.items() if t.kind in ("classification", "binary")]
    fractional = (
        labels is not None
        and labels.dtype.kind == "f"
        and not np.array_equal(labels, np.round(labels))
    )
    if decided and fractional:
        raise UnjudgeableError([f"labels for {decided} are fractional, not classes"])
    reasons = [
        why
        for name, task in tasks.items()
        if (why := _why_unjudgeable(name, np.asarray(reference[name]), task, limits))
    ]
    if reasons:
        raise UnjudgeableError(reasons)


def _relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    ref = reference.astype(np.float64)
    diff = candidate.astype(np.float64) - ref
    return float(np.sqrt(np.mean(diff**2)) / np.std(ref))


def _score_output(
    name: str,
    value: np.ndarray,
    reference: np.ndarray,
    task: OutputTask,
    labels: np.ndarray | None,
    limits: GateLimits,
) -> OutputScore:
    n = len(reference)
    prefix = f"{name}: "
    if task.kind == "classification":
        score = _classes(
            _top1(value, n),
            _top1(reference, n),
            None if labels is None else labels.astype(np.int64),
            limits,
            prefix=prefix,
        )
        return score
    score = OutputScore(task=str(task))
    if task.kind == "binary":
        got, want = _rows(value, n)[:, 0], _rows(reference, n)[:, 0]
        decided, expected = got >= task.threshold, want >= task.threshold
        score.agreement = float(np.mean(decided == expected))
        score.relative_error = _relative_error(got, want)
        if labels is not None:
            truth = labels.astype(np.int64) != 0
            score.accuracy = float(np.mean(decided == truth))
            score.drop = float(np.mean(expected == truth)) - score.accuracy
            if score.drop > limits.max_accuracy_drop + 1e-12:
                score.reasons.append(
                    f"{prefix}accuracy drop {score.drop:.4f} > {limits.max_accuracy_drop:.4f}"
                )
        _agreement_rule(
            score, limits, prefix=prefix, what=f"decision agreement at {task.threshold:g}"
        )
        if score.relative_error > MAX_RELATIVE_ERROR:
            score.reasons.append(
                f"{prefix}score error {score.relative_error:.4f} of the float spread "
                f"> {MAX_RELATIVE_ERROR}"
            )
        return score
    if reference.dtype.kind in "iub":  # generic labels, masks, counts: exact agreement
        score.agreement = float(np.mean(np.all(_rows(value, n) == _rows(reference, n), axis=1)))
        _agreement_rule(score, limits, prefix=prefix, what="exact agreement")
        return score
    score.relative_error = _relative_error(value, reference)
    if task.kind == "embedding":
        a, b = _rows(value, n).astype(np.float64), _rows(reference, n).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        usable = norms > 0
        cosine = np.sum(a * b, axis=1)[usable] / norms[usable]
        score.cosine = float(np.mean(cosine)) if cosine.size else 0.0
        if score.cosine < MIN_COSINE:
            score.reasons.append(f"{prefix}mean cosine {score.cosine:.4f} < {MIN_COSINE}")
        return score
    if score.relative_error > MAX_RELATIVE_ERROR:
        score.reasons.append(
            f"{prefix}error {score.relative_error:.4f} of the float spread > {MAX_RELATIVE_ERROR}"
        )
    return score


def judge_outputs(
    row: CandidateResult,
    *,
    outputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    tasks: dict[str, OutputTask],
    labels: np.ndarray | None,
    limits: GateLimits,
) -> CandidateResult:
    """Judge every output of a candidate by its task against the float model's outputs
    on the same holdout rows (``check_judgeable`` first, once per build)."""
    reasons: list[str] = []
    refused = False
    scores: dict[str, OutputScore] = {}
    for name, task in tasks.items():
        want = np.asarray(reference[name])
        got = outputs.get(name)
        if got is None or np.shape(got) != want.shape:
            row.verdict = "error"
            shape = None if got is None else list(np.shape(got))
            row.reasons = [
                f"{name}: output shape {shape} differs from the float model's {list(want.shape)}"
            ]
            return row
        got = np.asarray(got)
        if got.dtype.kind == "f" and not np.isfinite(got).all():
            row.verdict, row.reasons = "refused", [f"{name}: NaN or infinite values"]
            return row
        score = _score_output(name, got, want, task, labels, limits)
        scores[name] = score
        reasons += score.reasons
        refused = refused or score.refused
        row.not_judged += score.not_judged
    row.outputs = {name: score.as_dict() for name, score in scores.items()}

    def worst(values: list[float | None], pick: Any) -> float | None:
        present = [v for v in values if v is not None]
        return float(pick(present)) if present else None

    row.agreement = worst([s.agreement for s in scores.values()], min)
    row.accuracy = worst([s.accuracy for s in scores.values()], min)
    row.drop = worst([s.drop for s in scores.values()], max)
    row.worst_class_drop = worst([s.worst_class_drop for s in scores.values()], max)
    row.relative_error = worst([s.relative_error for s in scores.values()], max)
    return _verdict(row, reasons, refused=refused, limits=limits)
