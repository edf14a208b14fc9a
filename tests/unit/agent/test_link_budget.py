"""The agent's link budget for metered connections: pace, daily cap, and what it charges.

The clock and the pacing sleep are the budget's own parameters, so the arithmetic is
checked without waiting; the transport below yields fixed chunks the way the MQTT and
mirror fetchers do (replaying a ``.part`` file first).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.errors import TransferError
from edgefleet.agent.verification.budget import OVER_BUDGET, BudgetedTransport, LinkBudget

DAY = 86_400.0
NOON = 1_796_700_000.0 - 1_796_700_000.0 % DAY + DAY / 2


class Clock:
    def __init__(self) -> None:
        self.now = NOON
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Chunks:
    """A transport serving ``data`` in ``chunk``-byte pieces, the ``.part`` bytes first."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk = data, chunk

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        for start in range(0, len(self.data), self.chunk):
            yield self.data[start : start + self.chunk]


def _budget(tmp_path: Path, clock: Clock, **limits: int) -> LinkBudget:
    return LinkBudget(tmp_path, clock=clock, sleep=clock.sleep, **limits)


def test_downloads_are_paced_to_the_link_budget(tmp_path: Path) -> None:
    clock = Clock()
    transport = BudgetedTransport(
        Chunks(b"x" * 10_000, 1000), _budget(tmp_path, clock, bytes_per_s=1000), None
    )
    assert len(b"".join(transport.stream("targets/a.tar", 1 << 20))) == 10_000
    # One second's worth goes at once; the other 9,000 bytes take 9 s.
    assert sum(clock.slept) == pytest.approx(9.0)


def test_the_daily_cap_stops_a_download_says_why_and_a_new_day_resumes_it(
    tmp_path: Path,
) -> None:
    clock = Clock()
    data = b"y" * 5000
    parts = tmp_path / "parts"
    parts.mkdir()
    transport = BudgetedTransport(
        Chunks(data, 1000), _budget(tmp_path, clock, bytes_per_day=3000), parts
    )

    got = b""
    with pytest.raises(TransferError) as caught:
        for chunk in transport.stream("targets/a.tar", 1 << 20):
            got += chunk
    assert caught.value.status == OVER_BUDGET and "per day is spent" in caught.value.reason
    assert len(got) == 3000
    # The spending survives a restart of the agent, and refuses at once the same day.
    again = BudgetedTransport(
        Chunks(data, 1000), _budget(tmp_path, clock, bytes_per_day=3000), parts
    )
    with pytest.raises(TransferError):
        again.stream("targets/a.tar", 1 << 20)

    clock.now += DAY  # the next UTC day; 3,000 bytes are on disk from yesterday
    (parts / "a.tar.part").write_bytes(got)
    budget = _budget(tmp_path, clock, bytes_per_day=3000)
    resumed = BudgetedTransport(Chunks(data, 1000), budget, parts)
    assert b"".join(resumed.stream("targets/a.tar", 1 << 20)) == data
    assert budget.used_today() == 2000  # the replayed .part bytes were free
