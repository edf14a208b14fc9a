"""Over HTTP: a .tflite registers whatever its file is called, and an ONNX profile's build
of it is a 422 naming the format mismatch, not a 500."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edgefleet.converters.tflite_build import onnx_to_float_tflite
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import ControlPlane
from tests.support.polling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture
def client(control_plane: ControlPlane) -> TestClient:
    test_client = control_plane(client_id="cp-formats")
    wait_until(lambda: test_client.get("/api/v1/health").json()["broker_connected"])
    return test_client


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_tflite_named_onnx_registers_as_tflite_and_onnx_profiles_refuse_it_with_422(
    client: TestClient, digits: DigitsModel
) -> None:
    tflite = onnx_to_float_tflite(digits.onnx_bytes)[0]
    registered = client.post(
        "/api/v1/models",
        data={"name": "digits-tfl", "version": "1"},
        files={"model": ("digits.onnx", tflite), "samples": ("s.npy", npy(digits.samples))},
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["format"] == "tflite"
    assert client.get("/api/v1/models").json()[0]["format"] == "tflite"

    refused = client.post(
        "/api/v1/bundles",
        json={"model": "digits-tfl", "version": "1", "profile": "x86-64-gateway-onnx"},
    )
    assert refused.status_code == 422
    assert "format mismatch: the model is TFLite" in refused.json()["detail"]

    built = client.post(
        "/api/v1/bundles",
        json={"model": "digits-tfl", "version": "1", "profile": "rpi-arm64-litert-int8"},
    )
    assert built.status_code == 201, built.text
    assert built.json()["manifest"]["format"] == "tflite"
