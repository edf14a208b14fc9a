"""What the CLI writes: tables, JSON, and errors as one line and exit code 1.

Text from the server or the user (names, reasons, error messages) is printed as it
is: both consoles have rich's markup off, so ``[bold]`` or ``[/]`` in a message shows
as those characters and never styles, hides or breaks the line; long lines are not
re-wrapped either, so an error pastes back whole. Colour comes from ``Text`` with a
style, never from markup in a string.

Every command that calls the API wraps the call in :func:`api_errors`, so an API
error (or a refusal it names) reads the same everywhere: ``error: <reason>`` on
stderr, exit code 1.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgefleet.control_plane.client import ApiError

console = Console(markup=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, soft_wrap=True)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def fail(error: Exception) -> typer.Exit:
    """Print ``error`` as the command's one error line; raise what this returns."""
    err_console.print(Text.assemble(("error:", "red"), " ", str(error)), highlight=False)
    return typer.Exit(1)


@contextmanager
def api_errors(*also: type[Exception]) -> Iterator[None]:
    """Turn an :class:`ApiError`, or one of ``also``, into :func:`fail`'s exit.

    Args:
        also: Further exception types the block may raise for the user to read
            (a file that cannot be read, a value the client refuses).

    Raises:
        typer.Exit: Code 1, after the error line is printed.
    """
    caught: tuple[type[Exception], ...] = (ApiError, *also)
    try:
        yield
    except caught as e:
        raise fail(e) from e


def table(rows: list[dict[str, Any]], columns: list[str], title: str) -> Table:
    """One column per key in ``columns``; a missing or ``None`` value is blank."""
    result = Table(title=title)
    for column in columns:
        result.add_column(column)
    for row in rows:
        result.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return result


def print_rows(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    """The rows as JSON (every field) or as a table of ``columns``."""
    if as_json:
        console.print_json(json.dumps(rows))
    else:
        console.print(table(rows, columns, title))
