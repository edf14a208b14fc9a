"""Shared fixtures: a real Mosquitto per test on a free port, and a trained digits model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker


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
