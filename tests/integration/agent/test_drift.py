"""A real agent scores the inputs it serves and reports drift windows to the control plane."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.tensors import encode_tensor
from edgefleet_demo.digits import DigitsModel
from edgefleet_demo.retrain_digits import shift_digits
from tests.support.control_plane import serve
from tests.support.harness import provision_agent, start_agent
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration
PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-driftdev01"
SAMPLE_SIZE = 40


@pytest.fixture
def served(
    tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel
) -> Iterator[tuple[TestClient, int, DigitsModel]]:
    model = digits
    with serve(Settings(data_dir=tmp_path / "cp", broker_url=broker.url)) as api:
        samples = io.BytesIO()
        np.save(samples, model.samples, allow_pickle=False)
        api.post(
            "/api/v1/models",
            data={"name": "digits", "version": "1"},
            files={"model": ("m.onnx", model.onnx_bytes), "samples": ("s.npy", samples.getvalue())},
        ).raise_for_status()
        bundle = api.post(
            "/api/v1/bundles", json={"model": "digits", "version": "1", "profile": PROFILE}
        ).json()
        config, port = provision_agent(
            tmp_path,
            api,
            broker=broker.url,
            device_id=DEVICE,
            profile=PROFILE,
            extra=f"[drift]\nsample_size = {SAMPLE_SIZE}\n",
        )
        agent = start_agent(config, tmp_path / "agent.log")
        try:
            wait_until(
                lambda: api.get(f"/api/v1/devices/{DEVICE}").status_code == 200,
                "the agent online",
            )
            rollout = api.post(
                "/api/v1/rollouts", json={"bundle_id": bundle["id"], "device_ids": [DEVICE]}
            ).json()
            wait_until(
                lambda: api.get(f"/api/v1/rollouts/{rollout['id']}").json()["state"] == "complete",
                "the install",
            )
            yield api, port, model
        finally:
            agent.terminate()
            agent.wait(15)


def infer(port: int, x: np.ndarray) -> None:
    for start in range(0, len(x), 100):
        body = {"inputs": [encode_tensor("input", x[start : start + 100])]}
        response = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/digits/infer", json=body, timeout=10
        )
        response.raise_for_status()


def test_agent_reports_clean_windows_for_familiar_inputs_and_drift_for_shifted_ones(
    served: tuple[TestClient, int, DigitsModel],
) -> None:
    api, port, model = served
    rng = np.random.default_rng(0)
    familiar = model.holdout_x[rng.integers(0, len(model.holdout_x), 1000)]
    infer(port, familiar)
    series = wait_until(
        lambda: (s := api.get("/api/v1/drift/series").json()) and len(s) >= 2 and s,
        "two drift windows",
    )
    assert [p["drifted"] for p in series] == [False, False]
    assert all(p["device_id"] == DEVICE and p["model_version"] == "1" for p in series)

    infer(port, shift_digits(familiar, 6.0))
    series = wait_until(
        lambda: (s := api.get("/api/v1/drift/series").json()) and len(s) >= 4 and s,
        "two more drift windows",
    )
    assert [p["drifted"] for p in series] == [False, False, True, True]
    assert series[-1]["share_drifted"] > 0.5
    assert len(series[-1]["psi"]) == 64


def test_reservoir_sample_of_inputs_and_answers_comes_back_with_each_window(
    served: tuple[TestClient, int, DigitsModel],
) -> None:
    api, port, model = served
    infer(port, model.holdout_x[:300])
    infer(port, model.holdout_x[:300])  # 600 rows: one full window of 500
    samples = wait_until(
        lambda: api.get("/api/v1/events", params={"kind": "sample"}).json(), "a sample event"
    )
    (sample,) = samples
    data = sample["data"]
    assert sample["device_id"] == DEVICE and data["model_version"] == "1"
    assert data["drawn_from"] >= 500
    assert len(data["inputs"]) == len(data["outputs"]) == SAMPLE_SIZE
    # Every sampled row is one the device served, with the answer the model gave it.
    served_rows = {tuple(np.round(row.astype(np.float64), 6)) for row in model.holdout_x[:300]}
    assert all(tuple(row) in served_rows for row in data["inputs"])
    labels = {
        tuple(np.round(r.astype(np.float64), 6)): y
        for r, y in zip(model.holdout_x[:300], model.holdout_y[:300], strict=True)
    }
    correct = [
        labels[tuple(row)] == out for row, out in zip(data["inputs"], data["outputs"], strict=True)
    ]
    assert np.mean(correct) >= 0.85  # the model's answers, so mostly the true labels
