"""What many tests need and must do the same way: waiting on real processes, registering
the digits model with a control plane. Importable as ``harness`` (``tests/`` is on
``sys.path`` because ``tests/conftest.py`` lives there)."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np

POLL_S = 0.05


def wait_for(predicate: Callable[[], Any], what: str = "a condition", timeout: float = 60.0) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; fail naming
    ``what`` after ``timeout`` seconds. Every wait on a real process is bounded by this."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_S)


def register_model(
    api: Any, model: bytes, samples: np.ndarray, *, version: str, name: str = "digits"
) -> dict[str, Any]:
    """POST a model version with its representative samples (``/api/v1/models``)."""
    buffer = io.BytesIO()
    np.save(buffer, samples, allow_pickle=False)
    response = api.post(
        "/api/v1/models",
        data={"name": name, "version": version},
        files={"model": ("m.onnx", model), "samples": ("s.npy", buffer.getvalue())},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())
