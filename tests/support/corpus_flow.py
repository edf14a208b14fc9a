"""Taking a corpus model through the real control plane and a real agent's OIP endpoint.

Shared by ``tests/e2e/test_model_corpus.py`` and ``bench/model_corpus.py``. ``api`` is
anything with ``post``/``get`` like ``fastapi.testclient.TestClient``.

Registration speaks issue 14's form: ``model`` (.onnx or .tflite), ``samples`` (.npz
keyed by input name), ``holdout`` (.npz keyed by input name, labels under
``HOLDOUT_LABELS``) and ``task``. Until the API has the ``task`` field (read from its
OpenAPI document), a model with one input given as rows is sent the way the API took it
before (``.npy`` samples, holdout ``x``/``y``), so today's pipeline can be measured too.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from edgefleet.tensors import decode_tensor, encode_tensor
from tests.support.model_corpus import Agreement, CorpusModel, compare, run_float
from tests.support.polling import wait_until


@dataclass
class Answer:
    """What the API said: the status, and the body (the JSON, or the text)."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        if isinstance(self.body, dict):
            text = str(self.body.get("detail", self.body.get("error", self.body)))
        else:
            text = str(self.body)
        return " ".join(text.split())


def _answer(response: Any) -> Answer:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Answer(response.status_code, body)


def api_takes_task(api: Any) -> bool:
    """Whether ``POST /api/v1/models`` has issue 14's ``task`` field."""
    schema = api.get("/api/v1/openapi.json").json()
    body = schema["paths"]["/api/v1/models"]["post"]["requestBody"]["content"]
    ref = body["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]
    return "task" in schema["components"]["schemas"][ref]["properties"]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def register(api: Any, model: CorpusModel, *, version: str = "1") -> Answer:
    """POST the model with its samples, holdout, labels and task."""
    filename = f"model.{model.format}"
    if api_takes_task(api) or len(model.samples) != 1:
        data = {"name": model.name, "version": version, "task": model.task_field()}
        files = {
            "model": (filename, model.model),
            "samples": ("samples.npz", model.npz(model.samples)),
            "holdout": ("holdout.npz", model.npz(model.holdout, model.labels)),
        }
    else:  # the form before issue 14: one input, .npy samples, holdout x (and y)
        (samples,) = model.samples.values()
        (x,) = model.holdout.values()
        holdout = {"x": x} if model.labels is None else {"x": x, "y": model.labels}
        buffer = io.BytesIO()
        np.savez(buffer, **holdout)
        data = {"name": model.name, "version": version}
        files = {
            "model": (filename, model.model),
            "samples": ("samples.npy", _npy(samples)),
            "holdout": ("holdout.npz", buffer.getvalue()),
        }
    return _answer(api.post("/api/v1/models", data=data, files=files))


def build(api: Any, model: CorpusModel, profile: str, *, version: str = "1") -> Answer:
    """Build a bundle for ``profile``; a build job (202) is followed until it ends.

    Returns the bundle (201, or the job's result) or the refusal.
    """
    response = api.post(
        "/api/v1/bundles", json={"model": model.name, "version": version, "profile": profile}
    )
    answer = _answer(response)
    if answer.status != 202:
        return answer
    url = response.headers.get("location") or f"/api/v1/builds/{answer.body['id']}"

    def ended() -> Answer | None:
        job = _answer(api.get(url))
        state = job.body.get("state") if isinstance(job.body, dict) else None
        return job if state not in ("queued", "running", "in_progress", None) else None

    job = wait_until(ended, f"build of {model.name} for {profile}", timeout=600)
    assert job is not None
    bundle_id = job.body.get("bundle_id") or (job.body.get("bundle") or {}).get("id")
    if bundle_id is None:
        return Answer(422, job.body)
    return _answer(api.get(f"/api/v1/bundles/{bundle_id}"))


def infer(port: int, model: CorpusModel, call: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One OIP request to the agent with ``call``'s tensors in their own dtypes."""
    body = {"inputs": [encode_tensor(name, np.asarray(a)) for name, a in call.items()]}
    response = httpx.post(
        f"http://127.0.0.1:{port}/v2/models/{model.name}/infer", json=body, timeout=30
    )
    assert response.status_code == 200, response.text
    return dict(decode_tensor(o) for o in response.json()["outputs"])


def scores(value: Any) -> np.ndarray:
    """ZipMap's list of {class: probability} as a [n, classes] array; else the array."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return np.array([[row[k] for k in sorted(row)] for row in value], np.float64)
    return np.asarray(value)


def fixed_batch(model: CorpusModel) -> int | None:
    """The first input's fixed batch dim, when it has one and rows are given by batch."""
    import onnx

    if model.format != "onnx":
        return None
    graph = onnx.load_from_string(model.model).graph
    first = graph.input[0].type.tensor_type.shape.dim
    batched = next(iter(model.holdout.values())).ndim == len(first)
    return first[0].dim_value if batched and first and first[0].dim_value > 1 else None


def served_against_float(port: int, model: CorpusModel) -> list[Agreement]:
    """Every holdout call sent to the agent and run in the float model; per output, the
    task's metric of the served answers against the float ones, with the gate's bound."""
    served: dict[str, list[np.ndarray]] = {}
    reference: dict[str, list[np.ndarray]] = {}
    for call in model.calls(model.holdout, batch=fixed_batch(model)):
        for name, value in infer(port, model, call).items():
            served.setdefault(name, []).append(np.atleast_1d(value))
        for name, value in run_float(model, call).items():
            reference.setdefault(name, []).append(np.atleast_1d(scores(value)))
    return [
        compare(
            model.task_of(name),
            name,
            np.concatenate(served[name]),
            np.concatenate(reference[name]),
        )
        for name in reference
    ]


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 2)
