"""Drift windows from devices reach the control plane, feed the fleet rule and the plot."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet import topics
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.drift.plot import plot_drift
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import MqttLink
from edgefleet_demo.digits import DigitsModel
from tests.support.control_plane import serve
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration


def drift_event(bundle: dict[str, object], drifted: bool, t: float) -> TelemetryEvent:
    psi = [0.5 if drifted else 0.01] * 8 + [0.0] * 56
    return TelemetryEvent(
        kind="drift",
        bundle_id=str(bundle["id"]),
        release=int(bundle["release"]),  # type: ignore[call-overload]
        ts=t,
        data={
            "window": 500,
            "drifted": drifted,
            "share_drifted": 0.6 if drifted else 0.0,
            "psi": psi,
        },
    )


def test_fleet_rule_fires_when_enough_devices_drift_and_plot_shows_it(
    tmp_path: Path, broker: MosquittoBroker, digits: DigitsModel
) -> None:
    model = digits
    with serve(Settings(data_dir=tmp_path / "cp", broker_url=broker.url)) as api:
        samples = io.BytesIO()
        np.save(samples, model.samples, allow_pickle=False)
        assert (
            api.post(
                "/api/v1/models",
                data={"name": "digits", "version": "1"},
                files={
                    "model": ("m.onnx", model.onnx_bytes),
                    "samples": ("s.npy", samples.getvalue()),
                },
            ).status_code
            == 201
        )
        bundle = api.post(
            "/api/v1/bundles",
            json={"model": "digits", "version": "1", "profile": "x86-64-gateway-onnx"},
        ).json()

        start = time.time() - 600
        histories = {
            "dev-drift0001": [False, True, True, True],
            "dev-drift0002": [True, True, True, True],
            "dev-drift0003": [False, False, False, False],
            "dev-drift0004": [True, False, True, False],  # noisy, never 3 in a row
        }
        for device_id, windows in histories.items():
            link = MqttLink(client_id=device_id, broker=broker.address, clean_start=True)
            link.start()
            assert link.wait_connected(10)
            for i, drifted in enumerate(windows):
                event = drift_event(bundle, drifted, start + 60 * i)
                link.publish(topics.up(device_id, topics.Up.TELEMETRY), event.to_bytes(), wait=10)
            link.stop()

        def all_windows() -> list[dict[str, Any]] | None:
            series = api.get("/api/v1/drift/series", params={"model": "digits"}).json()
            return list(series) if len(series) == 16 else None

        series = wait_until(all_windows, "16 drift windows in the series", timeout=20)
        assert {p["cohort"] for p in series} == {"x86-64-gateway-onnx"}
        assert [p["ts"] for p in series] == sorted(p["ts"] for p in series)

        (verdict,) = api.get("/api/v1/drift/status").json()
        assert verdict["devices_drifted"] == ["dev-drift0001", "dev-drift0002"]
        assert verdict["devices_reporting"] == 4
        assert verdict["fires"] is True
        (strict,) = api.get("/api/v1/drift/status", params={"min_devices": 3}).json()
        assert strict["fires"] is False

        png = plot_drift(series, tmp_path / "drift.png")
        import matplotlib.image

        image = matplotlib.image.imread(png)
        assert image.shape[0] > 400 and image.shape[1] > 600
        # The plot is not blank: the drawn lines give it many distinct colours.
        assert len(np.unique(image.reshape(-1, image.shape[2]), axis=0)) > 50
