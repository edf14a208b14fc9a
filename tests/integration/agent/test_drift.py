"""A real agent scores the inputs it serves and reports drift windows to the control plane,
with the accuracy of the labels it was given and field samples for retraining."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.drift.hook_config import RetrainHookSpec
from edgefleet.control_plane.drift.hook_runner import RetrainContext, run_hook
from edgefleet.control_plane.services.field_data import write_field_data
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


def infer_ids(port: int, x: np.ndarray) -> list[str]:
    """Serve ``x`` in requests of 100 rows; the request id of each answer."""
    ids = []
    for start in range(0, len(x), 100):
        body = {"inputs": [encode_tensor("input", x[start : start + 100])]}
        response = httpx.post(
            f"http://127.0.0.1:{port}/v2/models/digits/infer", json=body, timeout=10
        )
        response.raise_for_status()
        ids.append(response.json()["id"])
    return ids


def feedback(port: int, request_id: str, labels: np.ndarray) -> dict[str, Any]:
    response = httpx.post(
        f"http://127.0.0.1:{port}/v2/models/digits/feedback",
        json={"id": request_id, "labels": labels.tolist()},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_labels_and_drifted_windows_reach_the_control_plane_and_the_retraining_hook(
    served: tuple[TestClient, int, DigitsModel], tmp_path: Path
) -> None:
    api, port, model = served
    rows = np.random.default_rng(1).integers(0, len(model.holdout_x), 500)  # one window
    x, y = model.holdout_x[rows], model.holdout_y[rows]
    # Window 1, familiar inputs: the first answer gets its true labels.
    (first, *_) = infer_ids(port, x[:100])
    assert feedback(port, first, y[:100])["correct"] >= 85
    infer_ids(port, x[100:])
    # Window 2, brighter inputs: drifted, and the labels show the model suffers.
    shifted = shift_digits(x, 6.0)
    (second, *_) = infer_ids(port, shifted[:100])
    feedback(port, second, y[:100])
    infer_ids(port, shifted[100:])

    series = wait_until(
        lambda: (s := api.get("/api/v1/drift/series").json()) and len(s) >= 2 and s,
        "two drift windows",
    )
    assert [p["drifted"] for p in series] == [False, True]
    assert [p["labelled"] for p in series] == [100, 100]
    assert series[0]["accuracy"] >= 0.85 > series[1]["accuracy"]

    field = wait_until(
        lambda: (
            (f := api.get("/api/v1/models/digits/field-data").json())
            and f["summary"]["samples"] == 2
            and f
        ),
        "two field samples",
    )
    clean, drifted = sorted(field["samples"], key=lambda s: s["drifted"])
    # A clean window sends only its labelled rows; a drifted one its reservoir too.
    assert (clean["rows"], clean["labelled_rows"]) == (SAMPLE_SIZE, SAMPLE_SIZE)
    assert (drifted["rows"], drifted["labelled_rows"]) == (2 * SAMPLE_SIZE, SAMPLE_SIZE)
    assert drifted["device_id"] == DEVICE and drifted["model_version"] == "1"
    served_rows = {tuple(np.round(r.astype(np.float64), 6)) for r in np.concatenate([x, shifted])}
    assert all(tuple(row) in served_rows for row in drifted["inputs"])

    # The retraining hook gets them as files, and the demo's hook trains on them.
    with Session(api.app.state.engine) as session:  # type: ignore[attr-defined]
        workspace = tmp_path / "hook"
        context = RetrainContext(
            request_id=1,
            model="digits",
            version="1",
            new_version="2",
            output_dir=workspace / "output",
            field_data_dir=workspace / "field-data",
        )
        manifest = write_field_data(
            session=session, model="digits", version="1", directory=workspace / "field-data"
        )
    assert (manifest["rows"], manifest["labelled_rows"]) == (3 * SAMPLE_SIZE, 2 * SAMPLE_SIZE)
    spec = RetrainHookSpec.model_validate(
        {
            "command": [sys.executable, "-m", "edgefleet_demo.retrain_digits"],
            "env": {"PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        }
    )
    result = run_hook(spec, context, workspace=workspace)
    assert f"retrained digits on {2 * SAMPLE_SIZE} labelled field rows" in result.output
    assert result.model_path is not None and result.model_path.is_file()
