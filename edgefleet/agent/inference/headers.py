"""Request headers read without the ``email`` package.

Why: ``http.server`` parses every request's headers with ``email.parser`` (a feed
parser built for MIME messages); on the local endpoint that was a quarter of the
agent's own cost per request. Headers here are read line by line with the same
bounds ``http.client`` applies (65,536 bytes a line, 100 lines), names compared without
regard to case, the first of repeated names kept (as ``email.message.Message.get``).
"""

from __future__ import annotations

from typing import Protocol

MAX_LINE = 65536
MAX_HEADERS = 100


class LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class HeaderError(ValueError):
    """Headers refused: a line too long, too many lines, or a line that is no header."""


class Headers(dict[str, str]):
    """Header values by lower-cased name; ``get`` and ``in`` take any case."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())


def read_headers(stream: LineReader) -> Headers:
    """The header block at ``stream``'s position, up to and including its blank line
    (or the end of the stream)."""
    headers = Headers()
    last: str | None = None
    for _ in range(MAX_HEADERS + 1):
        line = stream.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeaderError("Line too long")
        if line in (b"\r\n", b"\n", b""):
            return headers
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):  # obsolete line folding: continues the last value
            if last is None:
                raise HeaderError("header block starts with a continuation line")
            headers[last] = f"{dict.__getitem__(headers, last)} {text.strip()}"
            continue
        name, colon, value = text.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise HeaderError(f"malformed header line {text[:80]!r}")
        if name not in headers:
            dict.__setitem__(headers, name, value.strip())
            last = name
        else:
            last = None  # a repeated name: its first value stands
    raise HeaderError("Too many headers")
