"""The gate judges each output by what it means (the task declared at registration),
and refuses to pretend when a metric cannot discriminate."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.converters.errors import UnjudgeableError
from edgefleet.converters.gate import (
    MIN_CLASS_ROWS,
    CandidateResult,
    GateLimits,
    OutputTask,
    check_judgeable,
    judge_outputs,
    parse_task,
    resolve_tasks,
)
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.profile import default_profiles_dir, load_profiles
from tests.support.signature_models import binary_detector

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LIMITS = GateLimits(max_accuracy_drop=0.02, max_model_bytes=10_000, latency_budget_ms=5.0)
ONNX_PROFILE = load_profiles(default_profiles_dir())["x86-64-gateway-onnx"]


def _row(name: str = "int8") -> CandidateResult:
    return CandidateResult(
        candidate=name, precision="int8", format="onnx", size_bytes=100, latency_ms=1.0
    )


def test_binary_detector_whose_int8_candidates_flip_decisions_is_refused() -> None:
    # Argmax over the one sigmoid column is always 0: today's gate saw "agreement 1.000"
    # for every int8 candidate here and passed them all, while they flip ~23 % of the
    # decisions at 0.5. Judged as binary, they are refused and the fp32 model ships.
    model = binary_detector()
    outcome = build_for_profile(
        model.onnx_bytes,
        ONNX_PROFILE,
        calibration=model.samples,
        holdout=Holdout(model.holdout_x, model.holdout_y),
        task="binary:0.5",
    )
    int8 = [r for r in outcome.table if r.precision == "int8"]
    assert int8, "the profile builds int8 candidates"
    for row in int8:
        assert row.verdict == "refused", row
        assert row.agreement is not None and row.agreement < 0.9
        assert any("decision agreement at 0.5" in reason for reason in row.reasons)
    assert outcome.chosen.name == "fp32"
    assert outcome.tasks == {"speech": "binary:0.5"} and outcome.verified


def test_argmax_over_one_column_declared_as_classification_is_refused_with_a_reason() -> None:
    model = binary_detector()
    with pytest.raises(UnjudgeableError, match=r"argmax over 1 column.*binary:THRESHOLD"):
        build_for_profile(
            model.onnx_bytes,
            ONNX_PROFILE,
            calibration=model.samples,
            holdout=Holdout(model.holdout_x, model.holdout_y),
            task="classification",
        )


def test_a_class_with_three_rows_does_not_veto_a_candidate_that_agrees_on_99_percent() -> None:
    labels = np.concatenate([np.repeat(np.arange(4), 100), np.full(3, 4)])
    reference = np.eye(5, dtype=np.float32)[labels] * 5.0
    candidate = reference.copy()
    candidate[-3:-1] = np.eye(5, dtype=np.float32)[0] * 5.0  # two of class 4's three rows lost
    tasks = {"scores": OutputTask("classification")}
    check_judgeable({"scores": reference}, tasks, labels=labels, limits=LIMITS)
    row = judge_outputs(
        _row(),
        outputs={"scores": candidate},
        reference={"scores": reference},
        tasks=tasks,
        labels=labels,
        limits=LIMITS,
    )
    assert row.agreement is not None and row.agreement > 0.99
    assert row.verdict == "passed", row.reasons
    assert row.not_judged and "class 4 (3 rows)" in row.not_judged[0]
    assert f"fewer than {MIN_CLASS_ROWS}" in row.not_judged[0]


def test_a_class_with_enough_rows_still_vetoes_a_candidate_that_trades_it_away() -> None:
    labels = np.repeat(np.arange(5), MIN_CLASS_ROWS * 2)
    reference = np.eye(5, dtype=np.float32)[labels]
    candidate = reference.copy()
    lost = np.flatnonzero(labels == 4)[:4]  # class 4 loses 10 %, the whole set 2 %
    candidate[lost] = np.eye(5, dtype=np.float32)[0]
    tasks = {"scores": OutputTask("classification")}
    row = judge_outputs(
        _row(),
        outputs={"scores": candidate},
        reference={"scores": reference},
        tasks=tasks,
        labels=labels,
        limits=GateLimits(max_accuracy_drop=0.05, max_model_bytes=10_000, latency_budget_ms=5.0),
    )
    assert row.verdict == "failed" and any("class 4 lost" in r for r in row.reasons)


def test_a_constant_float_output_cannot_be_judged() -> None:
    reference = {"value": np.full((100, 1), 3.0, np.float32)}
    with pytest.raises(UnjudgeableError, match="'value' is constant on the holdout"):
        check_judgeable(reference, {"value": OutputTask("regression")}, labels=None, limits=LIMITS)


def test_a_holdout_too_small_for_agreement_cannot_be_judged() -> None:
    labels = np.arange(10) % 2
    reference = {"scores": np.eye(2, dtype=np.float32)[labels]}
    with pytest.raises(UnjudgeableError, match="10 holdout rows cannot resolve agreement"):
        check_judgeable(
            reference, {"scores": OutputTask("classification")}, labels=labels, limits=LIMITS
        )


def test_every_output_of_a_multi_output_model_is_gated_by_its_own_task() -> None:
    rng = np.random.default_rng(0)
    reference = {
        "embedding": rng.normal(size=(200, 16)).astype(np.float32),
        "age": rng.normal(40, 10, size=(200, 1)).astype(np.float32),
    }
    candidate = {
        "embedding": reference["embedding"]
        + rng.normal(0, 0.01, size=(200, 16)).astype(np.float32),
        "age": reference["age"] + 3.0,  # 0.3 of the spread: a broken regression head
    }
    tasks = resolve_tasks("embedding,age=regression", list(reference), labels=None)
    row = judge_outputs(
        _row(), outputs=candidate, reference=reference, tasks=tasks, labels=None, limits=LIMITS
    )
    assert row.verdict == "failed"
    assert [r.split(":")[0] for r in row.reasons] == ["age"]
    assert row.outputs["embedding"]["cosine"] > 0.99


def test_generic_is_the_default_without_labels_and_classification_with_them() -> None:
    assert resolve_tasks(None, ["y"], labels=None) == {"y": OutputTask("generic")}
    assert resolve_tasks(None, ["y"], labels=np.arange(3)) == {"y": OutputTask("classification")}
    assert parse_task("binary:0.3") == (OutputTask("binary", 0.3), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("detector", "unknown task 'detector'"),
        ("binary:high", "binary threshold must be a number"),
        ("regression:2", "task regression takes no argument"),
    ],
)
def test_malformed_tasks_are_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_task(text)


def test_a_task_naming_an_output_the_model_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="task names output 'boxes'"):
        resolve_tasks("boxes=regression", ["scores"], labels=None)
