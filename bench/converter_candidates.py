"""Size, accuracy, agreement and batch-1 latency of every candidate vs fp32, per runtime.

Two models: the digits MLP (sklearn -> ONNX) and a small CNN on the same digits, built
with onnx.helper from numpy weights (a fixed random conv feature extractor with a
least-squares classifier head, so no training framework is needed). Every candidate
the pipeline builds for each profile is measured on this machine, at batch 1, on the
digits holdout, in the profile's runtime (tflite-runtime 2.14 in its worker environment).

    .venv/bin/python bench/converter_candidates.py
"""

from __future__ import annotations

import logging
import warnings

from edgefleet.converters.errors import ConversionError, GateError
from edgefleet.converters.gate import CandidateResult
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.profile import default_profiles_dir, load_profiles
from edgefleet_demo.digits import build_digits_cnn, train_digits_model

PROFILES = [
    "x86-64-gateway-onnx",
    "jetson-orin-onnx-fp16",
    "rpi-arm64-litert-int8",
    "legacy-armv7-tflite214",
    "coral-edgetpu-int8",
]


def _print(
    model: str,
    profile: str,
    rows: list[CandidateResult],
    fp32: CandidateResult | None,
    note: str = "",
) -> None:
    print(f"\n{model} / {profile} {note}")
    print(
        f"{'candidate':32} {'prec':5} {'size':>8} {'xsize':>6} {'acc':>7} {'agree':>7} "
        f"{'lat ms':>8} {'xlat':>6} {'verdict':8} chosen"
    )
    for r in rows:
        xs = f"{r.size_bytes / fp32.size_bytes:.2f}" if fp32 and r.size_bytes else "-"
        xl = (
            f"{r.latency_ms / fp32.latency_ms:.2f}"
            if fp32 and r.latency_ms and fp32.latency_ms
            else "-"
        )
        acc = "-" if r.accuracy is None else f"{r.accuracy:.4f}"
        agr = "-" if r.agreement is None else f"{r.agreement:.4f}"
        lat = "-" if r.latency_ms is None else f"{r.latency_ms:.4f}"
        print(
            f"{r.candidate:32} {r.precision:5} {r.size_bytes:8d} {xs:>6} {acc:>7} {agr:>7} "
            f"{lat:>8} {xl:>6} {r.verdict:8} {'*' if r.chosen else ''}"
        )


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    warnings.simplefilter("ignore")
    digits = train_digits_model()
    models = {"digits-mlp": digits.onnx_bytes, "digits-cnn": build_digits_cnn()}
    profiles = load_profiles(default_profiles_dir())
    holdout = Holdout(digits.holdout_x, digits.holdout_y)
    for model_name, data in models.items():
        for profile_name in PROFILES:
            profile = profiles[profile_name].model_copy(
                update={"precisions": sorted({*profiles[profile_name].precisions, "fp32"})}
                if not (
                    profiles[profile_name].tflite and profiles[profile_name].tflite.integer_only
                )
                else {}
            )
            try:
                outcome = build_for_profile(
                    data, profile, calibration=digits.samples, holdout=holdout
                )
            except GateError as e:
                print(f"\n{model_name} / {profile_name}: no candidate passed\n{e}")
                continue
            except ConversionError as e:
                print(f"\n{model_name} / {profile_name}: not built: {e}")
                continue
            fp32 = next((r for r in outcome.table if r.precision == "fp32"), None)
            ref = outcome.reference
            note = (
                f"(float accuracy {ref['float_accuracy']:.4f}, gate runtime "
                f"{outcome.gate_runtime['name']} {outcome.gate_runtime['version']})"
            )
            _print(model_name, profile_name, outcome.table, fp32, note)


if __name__ == "__main__":
    main()
