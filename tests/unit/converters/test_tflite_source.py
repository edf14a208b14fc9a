"""TFLite profiles build their candidates from a registered .tflite; ONNX profiles refuse it."""

from __future__ import annotations

import numpy as np
import pytest

from edgefleet.converters.candidate import Candidate
from edgefleet.converters.errors import ConversionError, UnsupportedOpError
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.converters.runner import TfliteRunner, measure
from edgefleet.converters.tflite_build import onnx_to_float_tflite
from edgefleet.converters.tflite_inspect import inspect_tflite
from edgefleet.converters.tflite_source import tflite_source_candidates
from edgefleet.profile import default_profiles_dir, load_profiles, parse_profile
from edgefleet_demo.digits import DigitsModel

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
PROFILES = load_profiles(default_profiles_dir())


@pytest.fixture(scope="module")
def digits_tflite(digits: DigitsModel) -> bytes:
    return onnx_to_float_tflite(digits.onnx_bytes)[0]


def _build(data: bytes, profile_name: str, digits: DigitsModel):  # type: ignore[no-untyped-def]
    return build_for_profile(
        data,
        PROFILES[profile_name],
        calibration=digits.samples,
        holdout=Holdout(digits.holdout_x, digits.holdout_y),
    )


@pytest.mark.parametrize("name", ["rpi-arm64-litert-int8", "x86-64-ipc-litert-int8"])
def test_litert_profile_builds_int8_from_a_registered_tflite_and_gates_it(
    digits: DigitsModel, digits_tflite: bytes, name: str
) -> None:
    outcome = _build(digits_tflite, name, digits)
    rows = {r.candidate: r for r in outcome.table}
    static = rows["tflite-int8-static-a8w8"]
    assert static.precision == "int8" and static.size_bytes < len(digits_tflite) / 2
    assert static.latency_ms is not None and static.agreement is not None  # measured, judged
    assert static.verdict in {"passed", "failed", "refused"}
    assert rows["tflite-fp32"].passed and rows["tflite-fp32"].agreement == 1.0
    assert outcome.chosen_row.passed and outcome.chosen.format == "tflite"
    assert outcome.gate_runtime["name"] == "ai-edge-litert"
    assert outcome.gate_runtime["matches_profile"] is True
    assert outcome.inspection.signature == inspect_tflite(digits_tflite).signature


def test_the_gate_judges_a_tflite_int8_candidate_against_the_tflite_source(
    digits: DigitsModel, digits_tflite: bytes
) -> None:
    profile = PROFILES["x86-64-ipc-litert-int8"]
    inspection = inspect_tflite(digits_tflite)
    built = {
        c.name: c
        for c in tflite_source_candidates(
            digits_tflite, profile, inspection=inspection, calibration=digits.samples
        )
        if isinstance(c, Candidate)
    }
    static = built["tflite-int8-static-a8w8"]
    assert static.recipe["source"] == "registered .tflite"
    assert static.recipe["calibration_samples"] == len(digits.samples)
    assert built["tflite-fp32"].data == digits_tflite  # the file as given
    source = measure(TfliteRunner(digits_tflite, {}), digits.holdout_x).predictions
    int8 = measure(TfliteRunner(static.data, static.io_quantization), digits.holdout_x)
    expected = float(np.mean(int8.predictions == source))

    outcome = _build(digits_tflite, "x86-64-ipc-litert-int8", digits)
    row = next(r for r in outcome.table if r.candidate == "tflite-int8-static-a8w8")
    assert row.agreement == pytest.approx(expected)
    assert row.accuracy == pytest.approx(float(np.mean(int8.predictions == digits.holdout_y)))


def test_an_already_quantized_tflite_is_not_quantized_again(digits: DigitsModel) -> None:
    # A full-integer .tflite, as teams export for accelerators: made here from the digits model.
    float_tflite = onnx_to_float_tflite(digits.onnx_bytes)[0]
    coral = PROFILES["coral-edgetpu-int8"]
    (int8_source,) = [
        c
        for c in tflite_source_candidates(
            float_tflite,
            coral,
            inspection=inspect_tflite(float_tflite),
            calibration=digits.samples,
        )
        if isinstance(c, Candidate)
    ]
    outcome = _build(int8_source.data, "coral-edgetpu-int8", digits)
    rows = {r.candidate: r for r in outcome.table}
    assert rows["tflite-int8-static-a8w8"].verdict == "skipped"
    assert rows["tflite-int8-static-a8w8"].reasons == [
        "the registered .tflite is already quantized"
    ]
    assert outcome.chosen.name == "tflite-int8" and outcome.chosen.data == int8_source.data
    # Kept exactly as registered: an INT8 input stays INT8, no conversion at the boundary.
    assert outcome.inspection.signature.inputs[0].datatype == "INT8"
    assert outcome.chosen.io_quantization == {}
    assert outcome.chosen.recipe["boundary_quantization"]["input"] == (
        int8_source.io_quantization["input"].as_dict()
    )


def test_onnx_profile_refuses_a_tflite_model_naming_the_format_mismatch(
    digits: DigitsModel, digits_tflite: bytes
) -> None:
    with pytest.raises(ConversionError, match="format mismatch: the model is TFLite") as refused:
        _build(digits_tflite, "x86-64-gateway-onnx", digits)
    assert "x86-64-gateway-onnx" in str(refused.value)


def test_tflite_ops_outside_the_profile_are_refused_before_any_candidate(
    digits: DigitsModel, digits_tflite: bytes
) -> None:
    text = (default_profiles_dir() / "x86-64-ipc-litert-int8.toml").read_text()
    no_softmax = parse_profile(text.replace('"SOFTMAX", ', ""))
    with pytest.raises(UnsupportedOpError) as refused:
        build_for_profile(
            digits_tflite,
            no_softmax,
            calibration=digits.samples,
            holdout=Holdout(digits.holdout_x, digits.holdout_y),
        )
    assert refused.value.ops == ["SOFTMAX"]


def test_int8_candidates_of_a_model_past_256_kib_of_weights_load_and_run(
    digits: DigitsModel,
) -> None:
    # ai-edge-quantizer writes weights past 256 KiB after the flatbuffer, addressed by
    # offset; the boundary rewrite must keep them, or LiteRT refuses the model.
    from edgefleet_demo.digits import train_digits_model

    wide = train_digits_model(hidden=(512, 512), max_iter=5)
    source = onnx_to_float_tflite(wide.onnx_bytes)[0]
    assert len(source) > 4 * 256 * 1024
    profile = PROFILES["x86-64-ipc-litert-int8"]
    candidates = [
        c
        for c in tflite_source_candidates(
            source, profile, inspection=inspect_tflite(source), calibration=digits.samples[:32]
        )
    ]
    errors = [str(c) for c in candidates if isinstance(c, ConversionError)]
    assert errors == []
    for candidate in candidates:
        assert isinstance(candidate, Candidate)
        runner = TfliteRunner(candidate.data, candidate.io_quantization)
        scores = runner.run(digits.holdout_x[:1])["probabilities"]
        assert scores.shape == (1, 10) and abs(float(scores.sum()) - 1.0) < 0.05


def test_a_pretrained_tflite_with_control_flow_gets_weight_int8_and_skips_static() -> None:
    # openWakeWord's "hey jarvis" head, as its wheel ships it: an IF op whose branches
    # reuse tensor names (arg0...), which ai-edge-quantizer refuses as they are.
    wakeword = pytest.importorskip("pyopen_wakeword")
    from pathlib import Path

    from edgefleet.converters.tflite_source import unique_tensor_names

    data = (Path(wakeword.__file__).parent / "models" / "hey_jarvis.tflite").read_bytes()
    inspection = inspect_tflite(data)
    renamed, count = unique_tensor_names(data)
    assert count > 0 and inspect_tflite(renamed).signature == inspection.signature

    text = (default_profiles_dir() / "x86-64-ipc-litert-int8.toml").read_text()
    extra = '"GREATER_EQUAL", "IF", "RSQRT", "SUB", '
    profile = parse_profile(text.replace('"ADD", ', f'"ADD", {extra}', 1))
    x = np.random.default_rng(0).normal(size=(8, 16, 96)).astype(np.float32)
    items = list(tflite_source_candidates(data, profile, inspection=inspection, calibration=x))
    skipped = [i for i in items if isinstance(i, ConversionError)]
    assert [str(i) for i in skipped] == [
        "tflite-int8-static-a8w8: skipped: static calibration does not reach the subgraphs of IF"
    ]
    source = TfliteRunner(data, {}).run(x[:1])["PartitionedCall:0"]
    built = {c.name: c for c in items if isinstance(c, Candidate)}
    assert set(built) == {
        "tflite-int8-dynamic",
        "tflite-int8-weight-only",
        "tflite-fp16-weights",
        "tflite-fp32",
    }
    for candidate in built.values():
        assert candidate.recipe.get("renamed_subgraph_tensors", count) == count
        got = TfliteRunner(candidate.data, candidate.io_quantization).run(x[:1])
        assert abs(float(got["PartitionedCall:0"][0, 0]) - float(source[0, 0])) < 0.05


@pytest.mark.parametrize("name", ["rpi-arm64-litert-int8", "x86-64-ipc-litert-int8"])
def test_a_pretrained_tflite_conv_net_gets_every_litert_candidate(name: str) -> None:
    # openWakeWord's speech embedding, as its wheel ships it: PAD, CONV_2D, LEAKY_RELU,
    # MAXIMUM, MAX_POOL_2D, 1.3 MB of weights (quantized ones land after the flatbuffer).
    wakeword = pytest.importorskip("pyopen_wakeword")
    from pathlib import Path

    data = (Path(wakeword.__file__).parent / "models" / "embedding_model.tflite").read_bytes()
    inspection = inspect_tflite(data)
    x = np.random.default_rng(0).uniform(0, 4, size=(16, 76, 32, 1)).astype(np.float32)
    items = list(
        tflite_source_candidates(data, PROFILES[name], inspection=inspection, calibration=x)
    )
    assert [str(i) for i in items if isinstance(i, ConversionError)] == []
    source = TfliteRunner(data, {}).run(x[:1])["StatefulPartitionedCall:0"]
    for candidate in items:
        assert isinstance(candidate, Candidate)
        got = TfliteRunner(candidate.data, candidate.io_quantization).run(x[:1])
        embedding = got["StatefulPartitionedCall:0"]
        cosine = float(np.sum(embedding * source))
        cosine /= float(np.linalg.norm(embedding) * np.linalg.norm(source))
        assert embedding.shape == (1, 1, 1, 96) and cosine > 0.9, candidate.name


def test_legacy_profile_gates_candidates_of_a_registered_tflite_in_tflite_runtime_214(
    digits: DigitsModel, digits_tflite: bytes
) -> None:
    from edgefleet.converters.worker_envs import spec_for, worker_python

    spec = spec_for(PROFILES["legacy-armv7-tflite214"])
    assert spec is not None and worker_python(spec).exists(), (
        "the tflite-runtime 2.14 worker environment is missing: run `make setup`"
    )
    outcome = _build(digits_tflite, "legacy-armv7-tflite214", digits)
    assert outcome.gate_runtime["name"] == "tflite-runtime"
    assert outcome.gate_runtime["matches_profile"] is True
    rows = {r.candidate: r for r in outcome.table}
    # As for a lowered ONNX model: dynamic int8 runs right in LiteRT, wrong in 2.14.
    assert rows["tflite-int8-dynamic"].verdict == "refused"
    assert outcome.chosen_row.passed and outcome.chosen.name != "tflite-int8-dynamic"


def test_static_int8_takes_samples_per_input_name_and_skips_naming_a_missing_input(
    digits: DigitsModel, digits_tflite: bytes
) -> None:
    from edgefleet.converters.calibration import calibration_hash

    profile = PROFILES["x86-64-ipc-litert-int8"]
    inspection = inspect_tflite(digits_tflite)

    def static(calibration: object) -> Candidate | ConversionError:
        return next(
            c
            for c in tflite_source_candidates(
                digits_tflite,
                profile,
                inspection=inspection,
                calibration=calibration,  # type: ignore[arg-type]
            )
            if str(c.name if isinstance(c, Candidate) else c).startswith("tflite-int8-static")
        )

    by_name, plain = static({"input": digits.samples}), static(digits.samples)
    assert isinstance(by_name, Candidate) and isinstance(plain, Candidate)
    assert by_name.data == plain.data
    assert by_name.recipe["calibration_sha256"] == calibration_hash(digits.samples)
    missing = static({"pixels": digits.samples})
    assert str(missing) == "tflite-int8-static-a8w8: skipped: no calibration samples for ['input']"
