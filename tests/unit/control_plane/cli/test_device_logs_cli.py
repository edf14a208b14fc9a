"""`edgefleet device logs`: durations read as seconds, lines printed literally, what was
left out said on stderr, an API refusal as one error line."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from edgefleet.control_plane.cli import devices
from edgefleet.control_plane.cli.main import app as cli
from edgefleet.control_plane.client import ApiError

LINE = {
    "ts": "2026-12-07T22:00:00.123000Z", "level": "WARNING", "logger": "edgefleet.agent.daemon",
    "message": "value [bold]not markup[/bold] and [red]neither[/]",
}  # fmt: skip


class FakeClient:
    calls: list[dict[str, Any]] = []
    answer: dict[str, Any] = {}
    error: ApiError | None = None

    def __init__(self, _api: str, **_kw: Any) -> None:
        pass

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def device_logs(self, device_id: str, **params: Any) -> dict[str, Any]:
        FakeClient.calls.append({"device_id": device_id, **params})
        if FakeClient.error is not None:
            raise FakeClient.error
        return FakeClient.answer


@pytest.fixture(autouse=True)
def fake_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "ApiClient", FakeClient)
    FakeClient.calls = []
    FakeClient.error = None
    FakeClient.answer = {"truncated": False, "omitted": 0, "lines": [LINE]}


def test_lines_are_printed_as_the_device_wrote_them() -> None:
    result = CliRunner().invoke(cli, ["device", "logs", "dev-abcdefgh", "--since", "90m"])
    assert result.exit_code == 0, result.output
    assert FakeClient.calls[0]["since_s"] == 5400
    assert FakeClient.calls[0]["max_bytes"] is None  # the server's default
    assert result.stdout == (
        "2026-12-07T22:00:00.123000Z WARNING edgefleet.agent.daemon "
        "value [bold]not markup[/bold] and [red]neither[/]\n"
    )


def test_truncation_is_said_on_stderr() -> None:
    FakeClient.answer = {"truncated": True, "omitted": 42, "lines": [LINE]}
    args = ["device", "logs", "dev-abcdefgh", "--max-bytes", "1000"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert FakeClient.calls[0]["max_bytes"] == 1000
    assert "42 older lines left out" in result.stderr
    assert "left out" not in result.stdout


def test_an_offline_device_is_one_error_line() -> None:
    FakeClient.error = ApiError(504, "device dev-abcdefgh is offline (last seen never)")
    result = CliRunner().invoke(cli, ["device", "logs", "dev-abcdefgh"])
    assert result.exit_code == 1
    assert "HTTP 504: device dev-abcdefgh is offline" in result.stderr
