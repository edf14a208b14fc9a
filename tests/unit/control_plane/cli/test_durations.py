"""`edgefleet token create --expires-in` reads durations the way people write them."""

from __future__ import annotations

import pytest
import typer

from edgefleet.control_plane.cli.options import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86_400), ("12h", 43_200), ("90m", 5_400), ("3600s", 3_600), ("2w", 1_209_600),
     ("600", 600), ("1.5h", 5_400), (" 7D ", 7 * 86_400)],
)  # fmt: skip
def test_durations_become_seconds(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "30 days", "soon", "12x"])
def test_nonsense_durations_are_refused(text: str) -> None:
    with pytest.raises(typer.BadParameter, match="not a duration"):
        parse_duration(text)
