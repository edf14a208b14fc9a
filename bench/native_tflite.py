"""Models as users bring them: a native .tflite and a scikit-learn classifier with ZipMap.

* The digits MLP handed over as a .tflite (made here with the ONNX->TFLite lowering, so
  nothing is downloaded): every candidate the LiteRT profiles build from it with
  ai-edge-quantizer, gated against the .tflite itself on the digits holdout.
* openWakeWord's speech embedding (``embedding_model.tflite`` from the pyopen-wakeword
  wheel, when installed): each candidate's size, batch-1 latency and cosine similarity
  to the source's embedding on synthetic log-mel windows (its gate is the embedding
  task's, which the build applies; here the numbers alone).
* LogisticRegression on sklearn's digits exported with skl2onnx's defaults (ZipMap),
  built for the onnxruntime gateway: int8 is skipped with its reason, fp32 ships.

    .venv/bin/python bench/native_tflite.py
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np

from edgefleet.converters.candidate import Candidate
from edgefleet.converters.errors import ConversionError
from edgefleet.converters.gate import CandidateResult
from edgefleet.converters.model_format import read_model
from edgefleet.converters.pipeline import Holdout, build_for_profile
from edgefleet.converters.runner import TfliteRunner
from edgefleet.converters.tflite_build import onnx_to_float_tflite
from edgefleet.converters.tflite_inspect import inspect_tflite
from edgefleet.converters.tflite_source import tflite_source_candidates
from edgefleet.profile import default_profiles_dir, load_profiles
from edgefleet_demo.digits import train_digits_model

PROFILES = load_profiles(default_profiles_dir())
LITERT = ["x86-64-ipc-litert-int8", "rpi-arm64-litert-int8"]


def _table(title: str, rows: list[CandidateResult], seconds: float) -> None:
    print(f"\n{title} (built and gated in {seconds:.1f} s)")
    print(f"  {'candidate':<26}{'verdict':<9}{'bytes':>9}{'ms':>8}{'agree':>7}{'acc':>7}  reason")
    for r in rows:
        ms = f"{r.latency_ms:.3f}" if r.latency_ms is not None else "-"
        agree = f"{r.agreement:.3f}" if r.agreement is not None else "-"
        acc = f"{r.accuracy:.3f}" if r.accuracy is not None else "-"
        mark = "*" if r.chosen else " "
        reason = "; ".join(r.reasons)
        print(
            f" {mark}{r.candidate:<26}{r.verdict:<9}{r.size_bytes:>9}{ms:>8}{agree:>7}{acc:>7}"
            f"  {reason}"
        )


def _digits_tflite() -> None:
    digits = train_digits_model()
    source = onnx_to_float_tflite(digits.onnx_bytes)[0]
    for name in LITERT:
        start = time.perf_counter()
        outcome = build_for_profile(
            source,
            PROFILES[name],
            calibration=digits.samples,
            holdout=Holdout(digits.holdout_x, digits.holdout_y),
        )
        _table(f"digits .tflite / {name}", outcome.table, time.perf_counter() - start)


def _latency_ms(runner: TfliteRunner, x: np.ndarray) -> float:
    for row in x[:5]:
        runner.run(row[None])
    times = []
    for row in x:
        start = time.perf_counter()
        runner.run(row[None])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def _wakeword_embedding() -> None:
    try:
        import pyopen_wakeword
    except ImportError:
        print("\nembedding_model.tflite: pyopen-wakeword not installed (the corpus extra)")
        return
    models = Path(pyopen_wakeword.__file__).parent / "models"
    data = (models / "embedding_model.tflite").read_bytes()
    x = np.random.default_rng(0).uniform(0, 4, size=(64, 76, 32, 1)).astype(np.float32)
    name = "StatefulPartitionedCall:0"
    reference = TfliteRunner(data, {})
    want = np.concatenate([reference.run(row[None])[name].reshape(1, -1) for row in x])
    base = _latency_ms(reference, x)
    start = time.perf_counter()
    items = list(
        tflite_source_candidates(
            data, PROFILES["x86-64-ipc-litert-int8"], inspection=inspect_tflite(data), calibration=x
        )
    )
    took = time.perf_counter() - start
    print(f"\nembedding_model.tflite / x86-64-ipc-litert-int8 (built in {took:.1f} s)")
    print(f"  {'candidate':<26}{'bytes':>9}{'size':>7}{'ms':>8}{'speed':>7}{'min cos':>9}")
    for item in items:
        if isinstance(item, ConversionError):
            print(f"  {item}")
            continue
        assert isinstance(item, Candidate)
        runner = TfliteRunner(item.data, item.io_quantization)
        got = np.concatenate([runner.run(row[None])[name].reshape(1, -1) for row in x])
        cos = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        ms = _latency_ms(runner, x)
        print(
            f"  {item.name:<26}{len(item.data):>9}{len(item.data) / len(data):>7.2f}"
            f"{ms:>8.3f}{base / ms:>7.2f}{float(cos.min()):>9.4f}"
        )


def _zipmap_classifier() -> None:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        x.astype(np.float32), y, test_size=0.4, random_state=0
    )
    classifier = LogisticRegression(max_iter=300).fit(train_x / 16, train_y)
    classifier.coef_ /= 16
    read = read_model(to_onnx(classifier, train_x[:1]).SerializeToString())
    print(f"\nLogisticRegression + ZipMap: labels recorded {read.labels}")
    start = time.perf_counter()
    outcome = build_for_profile(
        read.data,
        PROFILES["x86-64-gateway-onnx"],
        calibration=train_x[:200],
        holdout=Holdout(test_x, test_y),
    )
    _table("LogisticRegression / x86-64-gateway-onnx", outcome.table, time.perf_counter() - start)


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")
    _digits_tflite()
    _wakeword_embedding()
    _zipmap_classifier()


if __name__ == "__main__":
    main()
