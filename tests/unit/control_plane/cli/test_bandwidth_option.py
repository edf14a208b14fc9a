"""``rollout create --bandwidth``: rates as people write them, bits refused rather than guessed."""

from __future__ import annotations

import pytest
import typer

from edgefleet.control_plane.cli.rollouts import parse_bandwidth


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50MB/s", 50_000_000),
        ("1.5GB/s", 1_500_000_000),
        ("200KiB/s", 204_800),
        ("10 MB/s", 10_000_000),
        ("1000000", 1_000_000),
        ("64k", 64_000),
    ],
)
def test_bandwidth_rates_read_as_bytes_per_second(text: str, expected: int) -> None:
    assert parse_bandwidth(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [("5Mb/s", "not bits"), ("fast", "not a rate"), ("0.1", "below one byte")],
)
def test_bandwidth_that_is_not_a_byte_rate_is_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(typer.BadParameter, match=why):
        parse_bandwidth(text)
