"""A model with three inputs (float audio, float state, an int64 scalar) from the real
control plane to a real agent process: registered with `.npz` samples keyed by input
name, built, rolled out, and answered over the agent's OIP endpoint with the signature
it was registered with; a request with another datatype is a 400 naming the input."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.tensors import decode_tensor, encode_tensor
from tests.support.control_plane import serve
from tests.support.harness import build_bundle, provision_agent, roll_out, start_agent
from tests.support.polling import wait_until
from tests.support.signature_models import three_input_model, three_input_samples

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]
PROFILE = "x86-64-gateway-onnx"
DEVICE = "dev-signature01"


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs: kwargs
    return buffer.getvalue()


@pytest.fixture
def agent_port(tmp_path: Path, broker: MosquittoBroker) -> Iterator[tuple[object, int]]:
    settings = Settings(data_dir=tmp_path / "cp", broker_url=broker.url)
    with serve(settings) as api:
        registered = api.post(
            "/api/v1/models",
            data={"name": "vad", "version": "1", "task": "score=regression,state_out=regression"},
            files={
                "model": ("vad.onnx", three_input_model()),
                "samples": ("s.npz", npz(three_input_samples(200))),
                "holdout": ("h.npz", npz(three_input_samples(300, seed=5))),
            },
        )
        assert registered.status_code == 201, registered.text
        config, port = provision_agent(
            tmp_path, api, broker=broker.url, device_id=DEVICE, profile=PROFILE
        )
        agent = start_agent(config, tmp_path / "agent.log")
        try:
            wait_until(
                lambda: (
                    api.get(f"/api/v1/devices/{DEVICE}").status_code == 200
                    and api.get(f"/api/v1/devices/{DEVICE}").json()["online"]
                ),
                "the agent to come online",
            )
            yield api, port
        finally:
            agent.terminate()
            agent.wait(15)


def test_three_input_model_is_served_with_its_registered_signature(
    agent_port: tuple[object, int],
) -> None:
    api, port = agent_port
    bundle = build_bundle(api, "1", PROFILE, model="vad")
    assert roll_out(api, bundle["id"], DEVICE)["state"] == "complete"

    base = f"http://127.0.0.1:{port}/v2/models/vad"
    metadata = httpx.get(base, timeout=10).json()
    assert [(i["name"], i["datatype"], i["shape"]) for i in metadata["inputs"]] == [
        ("audio", "FP32", [-1, 16]),
        ("state", "FP32", [-1, 8]),
        ("sr", "INT64", []),
    ]
    rows = three_input_samples(5, seed=9)
    feed = {"audio": rows["audio"], "state": rows["state"], "sr": np.asarray(16000, np.int64)}
    answer = httpx.post(
        f"{base}/infer",
        json={"inputs": [encode_tensor(name, value) for name, value in feed.items()]},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    outputs = dict(decode_tensor(o) for o in answer.json()["outputs"])
    expected = ort.InferenceSession(three_input_model()).run(None, feed)
    # Whichever candidate the gate chose, it answers within the gate's own bound.
    for name, want in zip(["score", "state_out"], expected, strict=True):
        error = np.sqrt(np.mean((outputs[name] - want) ** 2)) / np.std(want)
        assert error < 0.05, (name, error)

    wrong = {**feed, "sr": np.asarray(16000, np.int32)}
    refused = httpx.post(
        f"{base}/infer",
        json={"inputs": [encode_tensor(name, value) for name, value in wrong.items()]},
        timeout=10,
    )
    assert refused.status_code == 400
    assert refused.json()["error"] == "input 'sr': datatype \"INT32\" != expected INT64"
