"""The probation period of a freshly switched model, and its verdict.

The new model serves while the previous one stays in the other slot. Requests
answered since the switch are judged against ``[probation]``'s health rule: a breach
rolls back, and ``seconds`` (or ``max_requests``) without one commits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from edgefleet.agent.config import ProbationConfig
from edgefleet.agent.telemetry.counters import InferenceStats, LatencyWindow, probation_breach

Verdict = tuple[Literal["breach"], str] | tuple[Literal["passed"], LatencyWindow] | None


class Probation:
    """When the model on probation was switched in, and what its requests say so far."""

    def __init__(
        self,
        stats: InferenceStats,
        rule: ProbationConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats
        self.rule = rule
        self.clock = clock
        self._started: float | None = None
        self._bundle_id: str | None = None

    @property
    def running(self) -> bool:
        """A model is on probation: started and neither committed nor rolled back."""
        return self._started is not None

    def start(self, bundle_id: str) -> None:
        """Start counting ``bundle_id``'s requests from now."""
        if self._bundle_id is not None:
            self.stats.end_probation(self._bundle_id)
        self.stats.start_probation(bundle_id)
        self._bundle_id = bundle_id
        self._started = self.clock()

    def stop(self) -> None:
        """End the probation (committed or rolled back); requests are no longer judged."""
        self._started = None
        if self._bundle_id is not None:
            self.stats.end_probation(self._bundle_id)
        self._bundle_id = None

    def verdict(self) -> Verdict:
        """``("breach", reason)``, ``("passed", window)``, or None to keep watching."""
        if self._started is None:
            return None
        window = self.stats.probation_window(self._bundle_id)
        reason = probation_breach(window, self.rule)
        if reason is not None:
            return ("breach", reason)
        elapsed = self.clock() - self._started
        if elapsed >= self.rule.seconds or (
            self.rule.max_requests and window.count >= self.rule.max_requests
        ):
            return ("passed", window)
        return None
