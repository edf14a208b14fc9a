"""A real conv net reaches the TFLite profiles through onnx2tf; missing ops are named first."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.converters import onnx2tflite
from edgefleet.converters.errors import ConversionError, UnsupportedOpError
from edgefleet.converters.onnx2tflite import (
    convert_onnx_to_tflite,
    precheck,
    required_builtins,
    tflite_builtin_ops,
)
from edgefleet.converters.onnx_inspect import inspect_onnx
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.converters.tflite_candidates import (
    DENSE_LOWERING,
    ONNX2TF,
    check_loads_in_worker,
    float_tflite_from_onnx,
)
from edgefleet.converters.worker_envs import converter_python, installed_python
from edgefleet.profile import default_profiles_dir, load_profiles, parse_profile
from tests.support.conv_net import INPUT, OUTPUTS, build_conv_net, conv_net_inputs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROFILES = load_profiles(default_profiles_dir())
TFLITE_PROFILES = sorted(name for name, p in PROFILES.items() if p.tflite is not None)


@pytest.fixture(scope="module")
def conv_net() -> bytes:
    return build_conv_net()


@pytest.fixture(scope="module")
def conv_tflite(conv_net: bytes) -> bytes:
    assert converter_python() is not None, (
        "the onnx2tf worker environment is missing: run `make setup`"
    )
    return convert_onnx_to_tflite(conv_net, input_shapes={INPUT: [1, 3, 32, 32]})


def _run_tflite(data: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=data, num_threads=1)
    interpreter.allocate_tensors()
    (source,) = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    got: dict[str, list[np.ndarray]] = {o["name"]: [] for o in outputs}
    for row in x:
        interpreter.set_tensor(source["index"], row[None])
        interpreter.invoke()
        for o in outputs:
            got[o["name"]].append(np.array(interpreter.get_tensor(o["index"]))[0])
    return {name: np.stack(rows) for name, rows in got.items()}


@pytest.mark.slow
def test_conv_net_converts_to_a_float_tflite_computing_what_onnxruntime_computes(
    conv_net: bytes, conv_tflite: bytes
) -> None:
    assert {"DEPTHWISE_CONV_2D", "SPLIT", "CONV_2D", "MEAN", "FULLY_CONNECTED"} <= (
        tflite_builtin_ops(conv_tflite)
    )
    x = conv_net_inputs(32)
    session = ort.InferenceSession(conv_net, providers=["CPUExecutionProvider"])
    expected = dict(zip(OUTPUTS, session.run(list(OUTPUTS), {INPUT: x}), strict=True))
    got = _run_tflite(conv_tflite, x)
    assert list(got) == list(OUTPUTS)  # ONNX names, in ONNX order
    for name in OUTPUTS:
        spread = float(np.abs(expected[name]).max())
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=1e-5 * spread)


def test_the_boundary_keeps_the_onnx_input_layout(conv_tflite: bytes) -> None:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=conv_tflite)
    (source,) = interpreter.get_input_details()
    assert source["name"] == INPUT and list(source["shape"]) == [1, 3, 32, 32]  # NCHW


def test_the_precheck_maps_each_conv_form_to_its_builtins(conv_net: bytes) -> None:
    needed, unknown = required_builtins(onnx.load_from_string(conv_net))
    assert not unknown
    assert needed["Conv"] == {"CONV_2D", "DEPTHWISE_CONV_2D", "SPLIT", "CONCATENATION", "PAD"}
    assert needed["BatchNormalization"] == {"MUL", "ADD"}
    assert needed["GlobalAveragePool"] == {"MEAN"}
    assert needed["(NCHW input)"] == {"TRANSPOSE"}


def test_ops_a_profile_cannot_run_are_named_before_anything_is_converted(
    conv_net: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (default_profiles_dir() / "legacy-armv7-tflite214.toml").read_text()
    old_board = parse_profile(re.sub(r'"(DEPTHWISE_CONV_2D|MEAN)",\s*', "", text))

    def must_not_convert(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("conversion started for a model the profile cannot run")

    monkeypatch.setattr(onnx2tflite, "convert_onnx_to_tflite", must_not_convert)
    x = conv_net_inputs(16)  # enough rows for the gate to judge: the ops are what fails
    with pytest.raises(UnsupportedOpError) as caught:
        build_for_profile(conv_net, old_board, calibration=x, holdout=Holdout(x))
    assert caught.value.ops == [
        "Conv (needs DEPTHWISE_CONV_2D)",
        "GlobalAveragePool (needs MEAN)",
    ]
    assert "tflite-runtime ==2.14.*" in str(caught.value)


def test_an_op_outside_the_standard_domains_is_refused_naming_it() -> None:
    node = helper.make_node("Gelu", ["x"], ["y"], domain="com.microsoft")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    with pytest.raises(UnsupportedOpError, match=r"com\.microsoft\.Gelu"):
        precheck(model, PROFILES["x86-64-ipc-litert-int8"])


@pytest.mark.slow
def test_an_op_onnx2tf_cannot_convert_is_named(digits) -> None:  # type: ignore[no-untyped-def]
    # The digits MLP's label lookup (ai.onnx.ml ArrayFeatureExtractor), given straight
    # to the converter: the dense lowering is what handles that model.
    with pytest.raises(UnsupportedOpError) as caught:
        convert_onnx_to_tflite(digits.onnx_bytes, input_shapes={"input": [1, 64]})
    assert caught.value.ops == ["ArrayFeatureExtractor"]


def test_a_dynamic_input_dim_is_refused_naming_the_input(conv_net: bytes) -> None:
    with pytest.raises(ConversionError, match=r"image.*-1"):
        convert_onnx_to_tflite(conv_net, input_shapes={INPUT: [-1, 3, 32, 32]})


def test_the_digits_mlp_keeps_the_dense_lowering(digits) -> None:  # type: ignore[no-untyped-def]
    model = digits.onnx_bytes
    _data, tool = float_tflite_from_onnx(
        model, PROFILES["x86-64-ipc-litert-int8"], signature=inspect_onnx(model).signature
    )
    assert tool == DENSE_LOWERING


@pytest.mark.slow
def test_a_graph_the_dense_lowering_cannot_read_goes_to_onnx2tf(conv_net: bytes) -> None:
    data, tool = float_tflite_from_onnx(
        conv_net, PROFILES["x86-64-ipc-litert-int8"], signature=inspect_onnx(conv_net).signature
    )
    assert tool == ONNX2TF
    assert "DEPTHWISE_CONV_2D" in tflite_builtin_ops(data)


# What the conv net's outputs mean: its untrained logits are numbers to match (it predicts
# one class on random images, so top-1 cannot judge it); the pooled features an embedding.
CONV_NET_TASK = "generic,embedding=embedding"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["x86-64-ipc-litert-int8", "rpi-arm64-litert-int8", "legacy-armv7-tflite214"]
)
def test_conv_net_builds_for_each_tflite_profile_through_the_gate(
    conv_net: bytes, name: str
) -> None:
    profile = PROFILES[name]
    outcome = build_for_profile(
        conv_net,
        profile,
        calibration=conv_net_inputs(128, seed=2),
        holdout=Holdout(conv_net_inputs(200, seed=3)),
        task=CONV_NET_TASK,
    )
    assert outcome.chosen_row.passed and outcome.chosen.format == "tflite"
    assert outcome.gate_runtime["matches_profile"] is True
    fp32 = next(r for r in outcome.table if r.candidate == "tflite-fp32")
    assert fp32.relative_error is not None and fp32.relative_error < 1e-4
    static = next(r for r in outcome.table if r.candidate == "tflite-int8-static-a8w8")
    assert static.passed, static.reasons


@pytest.mark.slow
def test_conv_net_reaches_the_integer_only_profile_with_an_integer_boundary(
    conv_net: bytes,
) -> None:
    outcome = build_for_profile(
        conv_net,
        PROFILES["coral-edgetpu-int8"],
        calibration=conv_net_inputs(128, seed=2),
        holdout=Holdout(conv_net_inputs(200, seed=3)),
        task=CONV_NET_TASK,
    )
    assert outcome.chosen_row.passed
    assert outcome.chosen.name == "tflite-int8-static-a8w8"
    assert set(outcome.chosen.io_quantization) == {INPUT, *OUTPUTS}
    assert {q.dtype for q in outcome.chosen.io_quantization.values()} == {"int8"}


def _with_op_version(data: bytes, op: str, version: int) -> bytes:
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    model = s.ModelT.InitFromObj(s.Model.GetRootAs(data, 0))
    for code in model.operatorCodes:
        if code.builtinCode == getattr(s.BuiltinOperator, op):
            code.version = version
    builder = flatbuffers.Builder(len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.slow
def test_an_op_version_the_legacy_runtime_lacks_is_named_before_candidates(
    conv_tflite: bytes,
) -> None:
    profile = PROFILES["legacy-armv7-tflite214"]
    python = installed_python(profile)
    assert python is not None, "the tflite-runtime 2.14 worker environment is missing"
    check_loads_in_worker(python, conv_tflite, profile, input_shape=[1, 3, 32, 32])  # loads
    too_new = _with_op_version(conv_tflite, "FULLY_CONNECTED", 99)
    with pytest.raises(UnsupportedOpError) as caught:
        check_loads_in_worker(python, too_new, profile, input_shape=[1, 3, 32, 32])
    assert caught.value.ops == ["FULLY_CONNECTED v99"]


def _conv_clip(
    *, pads: list[int], strides: list[int], clip: tuple[float, float]
) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    low = numpy_helper.from_array(np.array(clip[0], np.float32), "low")
    high = numpy_helper.from_array(np.array(clip[1], np.float32), "high")
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["x"], pads=pads, strides=strides),
        helper.make_node("Clip", ["x", "low", "high"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_clip",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [weight, low, high],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize(
    ("pads", "strides", "clip", "conv", "activation"),
    [
        ([1, 1, 1, 1], [1, 1], (0.0, 6.0), {"CONV_2D"}, {"RELU6"}),
        ([1, 1, 1, 1], [2, 2], (0.0, 6.0), {"CONV_2D", "PAD"}, {"RELU6"}),
        ([0, 0, 1, 1], [1, 1], (-1.0, 1.0), {"CONV_2D", "PAD"}, {"RELU_N1_TO_1"}),
        ([0, 0, 0, 0], [1, 1], (-2.0, 3.0), {"CONV_2D"}, {"MINIMUM", "MAXIMUM"}),
    ],
)
def test_the_precheck_follows_padding_and_clip_bounds(
    pads: list[int],
    strides: list[int],
    clip: tuple[float, float],
    conv: set[str],
    activation: set[str],
) -> None:
    needed, _ = required_builtins(_conv_clip(pads=pads, strides=strides, clip=clip))
    assert needed["Conv"] == conv
    assert needed["Clip"] == activation
