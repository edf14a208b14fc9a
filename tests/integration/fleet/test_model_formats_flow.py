"""A native .tflite and a ZipMap classifier from registration to a real agent's OIP answers.

Each test runs a private Mosquitto, the control-plane app and one ``edgefleet-agent`` OS
process on the profile the model is built for.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.converters.runner import TfliteRunner
from edgefleet.converters.tflite_build import onnx_to_float_tflite
from edgefleet.tensors import decode_tensor, encode_tensor
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.harness import (
    build_bundle,
    provision_agent,
    register_model,
    roll_out,
    start_agent,
)
from tests.support.polling import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings(
        "ignore::sklearn.exceptions.ConvergenceWarning", "ignore::UserWarning"
    ),
]

DEVICE = "dev-formats01"


@dataclass
class Rig:
    """A control plane and, once ``deploy`` ran, one agent on the profile built for."""

    api: TestClient
    broker: MosquittoBroker
    tmp: Path
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def deploy(self, model: str, profile: str) -> tuple[dict[str, Any], int]:
        """Build version 1 of ``model`` for ``profile``, start an agent on that profile and
        roll the bundle out to it; (the bundle, the agent's endpoint port)."""
        bundle = build_bundle(self.api, "1", profile, model=model)
        config, port = provision_agent(
            self.tmp, self.api, broker=self.broker.url, device_id=DEVICE, profile=profile
        )
        self.agents.append(start_agent(config, self.tmp / "agent.log"))

        def online() -> bool:
            response = self.api.get(f"/api/v1/devices/{DEVICE}")
            return response.status_code == 200 and bool(response.json()["online"])

        wait_until(online, "the agent to come online")
        rollout = roll_out(self.api, bundle["id"], DEVICE)
        assert rollout["state"] == "complete", rollout
        return bundle, port


@pytest.fixture
def rig(tmp_path: Path, broker: MosquittoBroker) -> Iterator[Rig]:
    with serve(Settings(data_dir=tmp_path / "cp", broker_url=broker.url)) as api:
        running = Rig(api=api, broker=broker, tmp=tmp_path)
        try:
            yield running
        finally:
            for agent in running.agents:
                agent.terminate()
                agent.wait(15)


def infer(port: int, model: str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    body = {"inputs": [encode_tensor(name, x.astype(np.float32))]}
    response = httpx.post(f"http://127.0.0.1:{port}/v2/models/{model}/infer", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return dict(decode_tensor(o) for o in response.json()["outputs"])


def test_native_tflite_reaches_a_litert_agent_and_answers_like_the_source(
    rig: Rig, digits: DigitsModel
) -> None:
    tflite = onnx_to_float_tflite(digits.onnx_bytes)[0]
    register_model(rig.api, tflite, digits.samples, version="1", name="digits")
    bundle, port = rig.deploy("digits", "x86-64-ipc-litert-int8")
    manifest = bundle["manifest"]
    assert manifest["format"] == "tflite"
    assert manifest["lineage"]["recipe"].get("source", "").startswith("registered .tflite")

    rows = digits.holdout_x[:64]
    source = TfliteRunner(tflite, {})
    expected = np.concatenate([source.run(row[None])["label"] for row in rows])
    got = np.concatenate([infer(port, "digits", "input", row[None])["label"] for row in rows])
    # The gate's own bound: the shipped candidate agreed this well with the source.
    assert np.mean(got == expected) >= manifest["metrics"]["agreement"] - 2 / len(rows)


def test_zipmap_classifier_reaches_an_onnx_agent_serving_float_scores(rig: Rig) -> None:
    x, y = load_digits(return_X_y=True)
    train_x, test_x, train_y, _ = train_test_split(
        x.astype(np.float32), y, test_size=0.4, random_state=0
    )
    classifier = LogisticRegression(max_iter=300).fit(train_x / 16, train_y)
    classifier.coef_ /= 16
    register_model(
        rig.api,
        to_onnx(classifier, train_x[:1]).SerializeToString(),
        train_x[:200],
        version="1",
        name="logistic",
    )
    bundle, port = rig.deploy("logistic", "x86-64-gateway-onnx")
    assert bundle["manifest"]["labels"] == {"output_probability": list(range(10))}

    outputs = infer(port, "logistic", "X", test_x[:8])
    scores = outputs["output_probability"]
    assert scores.dtype == np.float32 and scores.shape == (8, 10)
    np.testing.assert_allclose(scores, classifier.predict_proba(test_x[:8]), atol=1e-4)
    np.testing.assert_array_equal(outputs["output_label"], classifier.predict(test_x[:8]))
