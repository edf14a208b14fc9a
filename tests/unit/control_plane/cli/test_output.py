"""What the CLI prints from the server shows as it is: rich markup characters included."""

from __future__ import annotations

import pytest

from edgefleet.control_plane.cli.builds import candidate_line
from edgefleet.control_plane.cli.output import console, fail, print_rows
from edgefleet.control_plane.client import ApiError

MARKUP = "model [bold]x[/] refused: input [red]scores[/red] [/] [link=http://e]y[/link]"


def test_error_messages_print_markup_characters_literally(
    capsys: pytest.CaptureFixture[str],
) -> None:
    exit_ = fail(ApiError(422, MARKUP))

    assert exit_.exit_code == 1
    assert capsys.readouterr().err == f"error: HTTP 422: {MARKUP}\n"


def test_table_cells_and_candidate_lines_print_markup_characters_literally(
    capsys: pytest.CaptureFixture[str],
) -> None:
    print_rows([{"name": "[bold]x[/] [/]"}], ["name"], "rows", as_json=False)
    console.print(
        candidate_line({"candidate": "[bold]c[/]", "verdict": "error", "reasons": [MARKUP]})
    )

    out = capsys.readouterr().out
    assert "[bold]x[/] [/]" in out
    assert "[bold]c[/]" in out
    assert MARKUP in out
