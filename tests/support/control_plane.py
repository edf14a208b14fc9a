"""The control plane in-process, as tests start it: ``create_app`` in a ``TestClient``.

Entering the client runs the app's lifespan (the signed repository, the fleet MQTT
link and its workers, the loops), and leaving it stops them, so a test sees the
control plane a deployment runs, minus uvicorn. The ``control_plane`` fixture in
``tests/conftest.py`` builds on ``serve``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

from edgefleet.control_plane.app import create_app
from edgefleet.control_plane.core.settings import Settings

SUBSCRIBE_TIMEOUT_S = 10.0

ControlPlane = Callable[..., TestClient]
"""What the ``control_plane`` fixture gives a test: call it with ``Settings`` fields to
start one and get its client."""


@contextmanager
def serve(settings: Settings) -> Iterator[TestClient]:
    """Run the control plane built from ``settings`` until the block ends.

    Args:
        settings: What the app is built from; the broker it names must be up.

    Returns:
        The client; ``client.app`` is the app (its ``state`` holds the engine, link and
        repository).

    Raises:
        AssertionError: The fleet link did not subscribe within ``SUBSCRIBE_TIMEOUT_S``.
    """
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.link.wait_subscribed(SUBSCRIBE_TIMEOUT_S), "control plane not subscribed"
        yield client


def signed_versions(api: TestClient) -> dict[str, dict[str, Any]]:
    """The served repository's signed metadata versions, by role."""
    return dict(api.app.state.repository.versions())  # type: ignore[attr-defined]
