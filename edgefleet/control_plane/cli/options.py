"""Options several commands share, and parsers for values typer cannot type itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_API = "http://127.0.0.1:8080"
ApiOption = Annotated[
    str, typer.Option("--api", envvar="EDGEFLEET_API", help="control-plane base URL")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DataDirOption = Annotated[Path, typer.Option(envvar="EDGEFLEET_DATA_DIR")]
DatabaseOption = Annotated[str | None, typer.Option(envvar="EDGEFLEET_DATABASE_URL")]


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` or plain seconds, as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration like 30d, 12h or 90m") from None


def parse_labels(pairs: list[str] | None) -> dict[str, str]:
    """``key=value`` arguments as a dict; the last of a repeated key wins."""
    labels: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"label {pair!r} is not key=value")
        labels[key] = value
    return labels
