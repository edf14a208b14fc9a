"""Errors of the converters.

::

    ConversionError     a model could not be read, checked or converted
    └── UnsupportedOpError  the target runtime cannot run some of the model's ops
"""

from __future__ import annotations


class ConversionError(Exception):
    """A model could not be inspected or converted; the message says why."""


class UnsupportedOpError(ConversionError):
    def __init__(self, ops: list[str], *, runtime: str) -> None:
        super().__init__(f"{runtime} cannot run these ops: {', '.join(sorted(ops))}")
        self.ops = ops
        self.runtime = runtime
