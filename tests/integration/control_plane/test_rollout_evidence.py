"""Gates need evidence: a wave whose devices send no inference telemetry never passes a
telemetry gate; it soaks until its evidence deadline and then fails (simulated devices
over a real Mosquitto, the control plane's orchestrator as it runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from tests.support.control_plane import serve
from tests.support.polling import wait_until
from tests.support.rollout_fleet import Behaviour, SimDevice, add_bundle

pytestmark = pytest.mark.integration

OLD, NEW = "digits-1-x86", "digits-2-x86"


def test_wave_without_inference_telemetry_fails_for_want_of_evidence_instead_of_passing(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    settings = Settings(
        data_dir=tmp_path / "cp", broker_url=broker.url, client_id="cp-evidence",
        rollout_tick_s=0.1,
    )  # fmt: skip
    devices: list[SimDevice] = []
    with serve(settings) as api:
        app = api.app
        add_bundle(app.state.engine, OLD, 1)
        add_bundle(app.state.engine, NEW, 2)
        # Installed and idle: their telemetry windows carry no inferences.
        for i in range(2):
            device = SimDevice(broker, f"dev-idle{i:05d}", {NEW: Behaviour(inferences=0)})
            device.bundle_id = OLD
            device.connect()
            devices.append(device)
        try:
            wait_until(lambda: len(api.get("/api/v1/devices").json()) == 2, "devices known")
            response = api.post(
                "/api/v1/rollouts",
                json={
                    "bundle_id": NEW,
                    "waves": [1, "100%"],
                    "soak_seconds": 0.2,
                    "gates": {"max_error_rate": 0.05, "evidence_wait_s": 1},
                },
            )
            assert response.status_code == 201, response.text
            url = f"/api/v1/rollouts/{response.json()['id']}"
            soaking = wait_until(
                lambda: (r := api.get(url).json())["phase"] == "soaking" and r, "the canary soaks"
            )
            (gate,) = soaking["wave_status"][0]["gates"]
            assert (gate["ok"], gate["detail"]) == (
                False, "not enough evidence yet: 0 of 1 inferences",
            )  # fmt: skip

            ended = wait_until(
                lambda: (r := api.get(url).json())["state"] != "in_progress" and r,
                "the wave to fail",
            )
            assert ended["state"] == "aborted", ended
            assert ended["reason"] == (
                "wave 1 gate breached: not enough evidence: error_rate: 0 of 1 inferences"
            )
            assert ended["wave_status"][0]["state"] == "breached"
            assert [w["state"] for w in ended["wave_status"]][1:] == ["cancelled"]
            canary = next(d for d in devices if d.offers)
            wait_until(lambda: canary.commands == ["rollback"], "the canary rolled back")
            assert sum(len(d.offers) for d in devices) == 1  # the fleet never got it
        finally:
            for device in devices:
                device.stop()
