"""Fixtures every kind of test shares: a real Mosquitto per test on a free port, the
trained digits model (once per session), and the control plane in-process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.settings import Settings
from edgefleet_demo.digits import DigitsModel, train_digits_model
from tests.support.control_plane import ControlPlane, serve


@pytest.fixture(autouse=True)
def _api_auth_off_unless_a_test_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests about other behaviour call the API without tokens; auth tests set it on."""
    monkeypatch.setenv("EDGEFLEET_API_AUTH", "false")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A private Mosquitto on a free loopback port, stopped after the test."""
    instance = MosquittoBroker(tmp_path / "broker")
    instance.start()
    try:
        yield instance
    finally:
        instance.kill()


@pytest.fixture(scope="session")
def digits() -> DigitsModel:
    """The digits model as the demo trains it (deterministic: seed 0). Training takes
    seconds, so the whole session shares one; tests read it and never change it."""
    return train_digits_model()


@pytest.fixture
def control_plane(tmp_path: Path, broker: MosquittoBroker) -> Iterator[ControlPlane]:
    """Start the control plane in-process: ``control_plane(**settings)`` serves
    ``Settings(data_dir=tmp_path / "cp", broker_url=broker.url, **settings)`` (see
    ``tests.support.control_plane.serve``) and returns its client once the fleet link
    has subscribed. It may be called again (a restart on the same data, or a second
    replica); everything it started stops after the test, newest first."""
    with ExitStack() as started:

        def start(**settings: Any) -> TestClient:
            values = {"data_dir": tmp_path / "cp", "broker_url": broker.url, **settings}
            return started.enter_context(serve(Settings(**values)))

        yield start
