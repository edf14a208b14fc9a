"""Classic-ML ONNX from skl2onnx's defaults: ZipMap becomes a scores tensor with its labels,
and candidates that cannot apply to ONNX-ML ops are skipped with the reason."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import load_breast_cancer, load_digits, load_iris
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from edgefleet.converters.errors import ConversionError, UnsupportedOpError
from edgefleet.converters.model_format import read_model
from edgefleet.converters.onnx_inspect import inspect_onnx
from edgefleet.converters.onnx_ml import ml_estimator_ops, onnx_ml_ops, strip_zipmap
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.profile import default_profiles_dir, load_profiles
from edgefleet.tensors import TensorSpec

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
PROFILES = load_profiles(default_profiles_dir())


def _split(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(train_test_split(x.astype(np.float32), y, test_size=0.4, random_state=0))


@pytest.fixture(scope="module")
def logistic() -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """LogisticRegression on sklearn's digits, exported with skl2onnx's defaults (ZipMap)."""
    train_x, test_x, train_y, test_y = _split(*load_digits(return_X_y=True))
    model = LogisticRegression(max_iter=300).fit(train_x / 16, train_y)
    model.coef_ /= 16
    return to_onnx(model, train_x[:1]).SerializeToString(), train_x, test_x, test_y


@pytest.fixture(scope="module")
def boosted() -> tuple[bytes, np.ndarray, np.ndarray, np.ndarray]:
    """GradientBoosting on breast_cancer: TreeEnsembleClassifier + ZipMap."""
    train_x, test_x, train_y, test_y = _split(*load_breast_cancer(return_X_y=True))
    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(train_x, train_y)
    return to_onnx(model, train_x[:1]).SerializeToString(), train_x, test_x, test_y


def test_zipmap_becomes_a_float_scores_tensor_with_its_integer_labels(logistic) -> None:  # type: ignore[no-untyped-def]
    data, _train_x, test_x, _test_y = logistic
    rewrite = strip_zipmap(data)
    assert rewrite.labels == {"output_probability": list(range(10))}
    signature = inspect_onnx(rewrite.data).signature
    assert signature.outputs == [
        TensorSpec(name="output_label", datatype="INT64", shape=[-1]),
        TensorSpec(name="output_probability", datatype="FP32", shape=[-1, 10]),
    ]
    before = ort.InferenceSession(data).run(None, {"X": test_x[:20]})
    label, scores = ort.InferenceSession(rewrite.data).run(None, {"X": test_x[:20]})
    np.testing.assert_array_equal(label, before[0])
    expected = np.array([[row[c] for c in range(10)] for row in before[1]], np.float32)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)


def test_string_class_labels_are_recorded_and_the_string_label_output_dropped() -> None:
    x, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, names)
    read = read_model(to_onnx(forest, x[:1].astype(np.float32)).SerializeToString())
    assert read.format == "onnx"
    assert read.labels == {"output_probability": ["setosa", "versicolor", "virginica"]}
    (scores,) = read.inspection.signature.outputs
    assert scores.name == "output_probability" and scores.datatype == "FP32"
    (got,) = ort.InferenceSession(read.data).run(None, {"X": x.astype(np.float32)})
    labels = read.labels["output_probability"]
    np.testing.assert_array_equal(np.array(labels)[got.argmax(axis=1)], forest.predict(x))


def test_a_zipmap_that_feeds_other_nodes_is_refused_naming_zipmap() -> None:
    nodes = [
        helper.make_node(
            "ZipMap", ["x"], ["mapped"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
        ),
        helper.make_node("Identity", ["mapped"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "zipmap-inside",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    )
    with pytest.raises(ConversionError, match=r"ZipMap .* is not the last op"):
        strip_zipmap(model.SerializeToString())


def test_a_model_without_zipmap_is_returned_byte_for_byte(digits) -> None:  # type: ignore[no-untyped-def]
    rewrite = strip_zipmap(digits.onnx_bytes)
    assert rewrite.data is digits.onnx_bytes and not rewrite.changed


@pytest.mark.parametrize("model", ["logistic", "boosted"])
def test_classic_ml_builds_for_the_onnx_gateway_with_int8_skipped_for_a_reason(
    model: str, request: pytest.FixtureRequest
) -> None:
    data, train_x, test_x, test_y = request.getfixturevalue(model)
    read = read_model(data)
    outcome = build_for_profile(
        read.data,
        PROFILES["x86-64-gateway-onnx"],
        calibration=train_x[:200],
        holdout=Holdout(test_x, test_y),
    )
    rows = {r.candidate: r for r in outcome.table}
    assert rows["int8"].verdict == "skipped"
    (reason,) = rows["int8"].reasons
    assert "does not apply to ONNX-ML ops" in reason
    ml_op = "LinearClassifier" if model == "logistic" else "TreeEnsembleClassifier"
    assert ml_op in reason
    assert not [r for r in outcome.table if r.verdict == "error"]
    assert outcome.chosen.name == "fp32" and outcome.chosen_row.passed and outcome.verified


def test_classic_ml_is_refused_for_a_tflite_profile_naming_the_onnx_ml_ops(logistic) -> None:  # type: ignore[no-untyped-def]
    data, train_x, test_x, test_y = logistic
    with pytest.raises(UnsupportedOpError) as refused:
        build_for_profile(
            read_model(data).data,
            PROFILES["x86-64-ipc-litert-int8"],
            calibration=train_x[:200],
            holdout=Holdout(test_x, test_y),
        )
    assert refused.value.ops == ["ai.onnx.ml.LinearClassifier", "ai.onnx.ml.Normalizer"]
    assert "onnxruntime profiles" in str(refused.value)


def test_an_mlp_whose_only_onnx_ml_op_is_the_label_lookup_still_gets_int8(digits) -> None:  # type: ignore[no-untyped-def]
    model = onnx.load_from_string(digits.onnx_bytes)
    assert onnx_ml_ops(model) == ["ArrayFeatureExtractor"] and ml_estimator_ops(model) == []
    outcome = build_for_profile(
        digits.onnx_bytes,
        PROFILES["x86-64-gateway-onnx"],
        calibration=digits.samples,
        holdout=Holdout(digits.holdout_x, digits.holdout_y),
    )
    verdicts = {r.candidate: r.verdict for r in outcome.table}
    assert "skipped" not in verdicts.values()
    assert verdicts["int8-qdq-core-minmax"] in {"passed", "failed"}
