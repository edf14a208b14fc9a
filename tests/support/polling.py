"""The one way a test waits: poll a predicate, bounded, and say what never happened.

Tests run against real processes (Mosquitto, agents, the control plane's worker
threads), so most outcomes arrive a little later than the call that caused them.
Every such wait goes through ``wait_until`` so that each is bounded and a timeout
names what the test was waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.05


def wait_until(predicate: Callable[[], T], what: str = "a condition", timeout: float = 60.0) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Args:
        predicate: Called every ``POLL_S`` seconds; its first truthy result ends the wait.
        what: What the test waits for, as the timeout's message puts it.
        timeout: Seconds before giving up.

    Returns:
        The predicate's first truthy result.

    Raises:
        AssertionError: ``predicate`` stayed falsy for ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(POLL_S)
