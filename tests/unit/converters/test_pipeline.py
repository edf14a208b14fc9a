"""Every shipped profile builds from the float digits model; the gate refuses when it must."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.converters import pipeline
from edgefleet.converters.candidate import Candidate
from edgefleet.converters.errors import ConversionError, GateError, UnsupportedOpError
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.converters.runner import measure_in_worker
from edgefleet.converters.tflite_build import dense_graph_from_onnx
from edgefleet.converters.worker_envs import ENV_VAR, spec_for, worker_python
from edgefleet.profile import default_profiles_dir, load_profiles, parse_profile

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning", "ignore::UserWarning"
)
PROFILES = load_profiles(default_profiles_dir())


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_shipped_profile_builds_from_the_float_model(digits, name: str) -> None:  # type: ignore[no-untyped-def]
    profile = PROFILES[name]
    outcome = build_for_profile(
        digits.onnx_bytes,
        profile,
        calibration=digits.samples,
        holdout=Holdout(digits.holdout_x, digits.holdout_y),
    )
    chosen = outcome.chosen_row
    assert chosen.passed and outcome.verified
    assert outcome.chosen.precision in profile.precisions
    assert chosen.drop is not None and chosen.drop <= profile.max_accuracy_drop
    assert sum(r.chosen for r in outcome.table) == 1
    if profile.tflite and profile.tflite.integer_only:
        assert outcome.chosen.io_quantization  # integer boundary recorded for the agent


def build_legacy(digits):  # type: ignore[no-untyped-def]
    return build_for_profile(
        digits.onnx_bytes,
        PROFILES["legacy-armv7-tflite214"],
        calibration=digits.samples,
        holdout=Holdout(digits.holdout_x, digits.holdout_y),
    )


def test_legacy_profile_is_gated_in_its_own_runtime_where_litert_would_pass_a_broken_model(  # type: ignore[no-untyped-def]
    digits,
) -> None:
    spec = spec_for(PROFILES["legacy-armv7-tflite214"])
    assert spec is not None and worker_python(spec).exists(), (
        "the tflite-runtime 2.14 worker environment is missing: run `make setup`"
    )
    outcome = build_legacy(digits)
    assert outcome.gate_runtime["name"] == "tflite-runtime"
    assert outcome.gate_runtime["version"] == "2.14.0"
    assert outcome.gate_runtime["numpy"].startswith("1.")
    assert outcome.gate_runtime["matches_profile"] is True
    # ai-edge-quantizer's dynamic-int8 model runs correctly in ai-edge-litert but not
    # in tflite-runtime 2.14: measured where the device runs it, the gate refuses it.
    rows = {r.candidate: r for r in outcome.table}
    assert rows["tflite-int8-dynamic"].verdict == "refused"
    assert rows["tflite-int8-dynamic"].agreement < 0.5
    assert outcome.chosen.name != "tflite-int8-dynamic"


def test_without_the_worker_environment_the_gate_falls_back_to_litert_and_says_so(  # type: ignore[no-untyped-def]
    digits, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "no-worker-envs"))
    outcome = build_legacy(digits)
    assert outcome.gate_runtime["name"] == "ai-edge-litert"
    assert outcome.gate_runtime["matches_profile"] is False
    rows = {r.candidate: r for r in outcome.table}
    assert rows["tflite-int8-dynamic"].passed  # the fallback cannot see the device's failure


def test_a_candidate_the_worker_runtime_cannot_load_fails_with_the_reason() -> None:
    spec = spec_for(PROFILES["legacy-armv7-tflite214"])
    assert spec is not None
    garbage = Candidate("bad", "tflite", "fp32", b"not a flatbuffer", recipe={})
    with pytest.raises(ConversionError, match=r"worker runtime .* failed"):
        measure_in_worker(worker_python(spec), garbage, np.zeros((2, 64), np.float32))


def test_broken_calibration_set_makes_the_integer_only_build_fail_with_every_number(digits) -> None:  # type: ignore[no-untyped-def]
    broken = np.full_like(digits.samples, 0.01)  # ranges collapse to nearly zero
    with pytest.raises(GateError) as caught:
        build_for_profile(
            digits.onnx_bytes,
            PROFILES["coral-edgetpu-int8"],
            calibration=broken,
            holdout=Holdout(digits.holdout_x, digits.holdout_y),
        )
    rows = caught.value.candidates
    assert rows and all(r["verdict"] in ("refused", "failed") for r in rows)
    assert all(r["agreement"] is not None for r in rows)


def test_broken_calibration_falls_back_to_fp32_where_the_profile_allows_it(digits) -> None:  # type: ignore[no-untyped-def]
    broken = np.full_like(digits.samples, 0.01)
    outcome = build_for_profile(
        digits.onnx_bytes,
        PROFILES["x86-64-gateway-onnx"],
        calibration=broken,
        holdout=Holdout(digits.holdout_x, digits.holdout_y),
    )
    static = [r for r in outcome.table if r.candidate.startswith("int8-qdq")]
    assert static and not any(r.passed for r in static)
    assert outcome.chosen.name in ("fp32", "int8-dynamic-matmul")


def test_without_labels_the_gate_judges_agreement_and_marks_unverified(digits) -> None:  # type: ignore[no-untyped-def]
    outcome = build_for_profile(
        digits.onnx_bytes,
        PROFILES["x86-64-gateway-onnx"],
        calibration=digits.samples,
        holdout=Holdout(digits.holdout_x, None),
    )
    assert outcome.verified is False and outcome.chosen_row.accuracy is None


def _layernorm_model() -> bytes:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [4], [1.0] * 4)
    node = helper.make_node("LayerNormalization", ["input", "scale"], ["out"])
    graph = helper.make_graph([node], "ln", [x], [y], [scale])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def test_op_the_runtime_version_cannot_run_is_refused_before_conversion(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    text = (default_profiles_dir() / "x86-64-gateway-onnx.toml").read_text()
    old_runtime = parse_profile(text.replace("opset_max = 20", "opset_max = 16"))

    def must_not_convert(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("conversion started for a model the runtime cannot run")

    monkeypatch.setattr(pipeline, "onnx_candidates", must_not_convert)
    samples = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    with pytest.raises(UnsupportedOpError) as caught:
        build_for_profile(
            _layernorm_model(), old_runtime, calibration=samples, holdout=Holdout(samples)
        )
    assert caught.value.ops == ["LayerNormalization"]
    assert "LayerNormalization" in str(caught.value)


def test_onnx_op_without_a_tflite_lowering_is_refused_naming_it() -> None:
    with pytest.raises(UnsupportedOpError, match="LayerNormalization"):
        dense_graph_from_onnx(_layernorm_model())


def test_tflite_op_outside_the_profile_op_set_is_refused_naming_it(digits, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    text = (default_profiles_dir() / "rpi-arm64-litert-int8.toml").read_text()
    no_argmax = parse_profile(text.replace('"ARG_MAX", ', ""))
    with pytest.raises(UnsupportedOpError) as caught:
        build_for_profile(
            digits.onnx_bytes,
            no_argmax,
            calibration=digits.samples,
            holdout=Holdout(digits.holdout_x, digits.holdout_y),
        )
    assert caught.value.ops == ["ARG_MAX"]


def test_fp16_candidate_keeps_float32_inputs_and_outputs(digits) -> None:  # type: ignore[no-untyped-def]
    outcome = build_for_profile(
        digits.onnx_bytes,
        PROFILES["jetson-orin-onnx-fp16"],
        calibration=digits.samples,
        holdout=Holdout(digits.holdout_x, digits.holdout_y),
    )
    fp16 = next(r for r in outcome.table if r.candidate == "fp16")
    assert fp16.passed
    model = onnx.load_from_string(outcome.chosen.data)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


def test_cnn_lowers_to_tflite_computing_what_onnxruntime_computes(digits) -> None:  # type: ignore[no-untyped-def]
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    from edgefleet.converters.tflite_build import build_float_tflite
    from edgefleet_demo.digits import build_digits_cnn

    cnn = build_digits_cnn()
    graph = dense_graph_from_onnx(cnn)
    assert graph.tflite_ops() == {"RESHAPE", "CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"}
    session = ort.InferenceSession(cnn, providers=["CPUExecutionProvider"])
    expected = session.run(["probabilities"], {"input": digits.holdout_x})[0]
    interpreter = Interpreter(model_content=build_float_tflite(graph))
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    (scores,) = [d for d in interpreter.get_output_details() if d["name"] == "probabilities"]
    got = []
    for row in digits.holdout_x.astype(np.float32):
        interpreter.set_tensor(source["index"], row[None])
        interpreter.invoke()
        got.append(np.array(interpreter.get_tensor(scores["index"]))[0])
    np.testing.assert_allclose(np.array(got), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["rpi-arm64-litert-int8", "legacy-armv7-tflite214"])
def test_cnn_builds_for_tflite_profiles_through_the_gate(name: str) -> None:
    from edgefleet_demo.digits import build_digits_cnn, load_split

    _train_x, _train_y, samples, holdout_x, holdout_y = load_split(0)
    outcome = build_for_profile(
        build_digits_cnn(),
        PROFILES[name],
        calibration=samples,
        holdout=Holdout(holdout_x, holdout_y),
    )
    assert outcome.chosen_row.passed and outcome.chosen.format == "tflite"
    assert outcome.gate_runtime["matches_profile"] is True


def test_conv_forms_the_lowering_cannot_express_are_refused_naming_why() -> None:
    weight = numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["image"]),
        helper.make_node("Conv", ["image", "w"], ["conv"], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "strided",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("conv", TensorProto.FLOAT, None)],
        [weight, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ConversionError, match="only stride 1"):
        dense_graph_from_onnx(model.SerializeToString())
