"""Rollout health gates: pure arithmetic over install counts and telemetry windows.

No database and no IO here: ``waves.wave_verdict`` gathers the numbers
(``GateInputs``) and this module turns them into gate values against thresholds
and a verdict.

Definitions (per wave, over the soak window):

- ``install_failure_rate`` = (failed + rolled back) / devices of the wave that
  finished installing;
- ``error_rate`` = sum(errors) / sum(count) over ``inference`` events the wave's
  devices sent for the rollout's bundle;
- ``p95_latency_ratio`` = p95 of the wave on the new bundle / p95 of the rollout's
  devices still on another bundle, each p95 read from the merged latency
  histograms (the weighted mean of window p95s when a window has no histogram);
- ``agreement`` = count-weighted mean agreement of ``shadow`` events about the
  rollout's bundle.

A gate with no threshold is not reported. A telemetry gate (error rate, latency,
agreement) never passes without evidence: the wave keeps soaking until

- its devices reported at least ``min_inferences`` inferences on the new bundle
  (at least one whenever a telemetry gate is set; for agreement, at least one
  compared input), and
- one telemetry window has passed since the soak began (the longest ``window_s``
  the devices reported, ``DEFAULT_WINDOW_S`` before any did), unless every device
  of the wave has already reported a window;

and when that is still missing ``evidence_wait_s`` after the soak (and the window),
the verdict says ``expired``: the wave fails with "not enough evidence". The
latency ratio passes uncompared when no device of the rollout reported on another
bundle (there is nothing to compare with; the new bundle's own p95 is still required).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgefleet.control_plane.core.tables import GateValue, RolloutGates

DEFAULT_WINDOW_S = 10.0
"""The agents' default telemetry window, assumed until a device reports its own."""
NOT_ENOUGH_EVIDENCE = "not enough evidence"


@dataclass(frozen=True)
class GateInputs:
    finished: int = 0
    failed: int = 0
    candidate: Sequence[dict[str, Any]] = field(default_factory=tuple)  # inference data
    baseline: Sequence[dict[str, Any]] = field(default_factory=tuple)
    shadow: Sequence[dict[str, Any]] = field(default_factory=tuple)
    members: int = 0  # devices of the wave running the new bundle
    reporting: int = 0  # of those, devices that sent telemetry on it
    soak_elapsed_s: float | None = None  # None: not soaking yet (no time-based waiting)
    soak_s: float = 0.0


@dataclass(frozen=True)
class GateVerdict:
    values: list[GateValue]
    waiting: str | None = None  # not enough evidence yet: keep soaking
    expired: bool = False  # ... and the wave's time for evidence is over: it fails
    lacking: tuple[str, ...] = ()  # gates without their evidence (not breaches)

    @property
    def breached(self) -> list[GateValue]:
        """Gates the evidence shows failing (a gate lacking evidence is not among them)."""
        return [v for v in self.values if not v.ok and v.name not in self.lacking]

    def reason(self) -> str:
        if self.expired and not self.breached:
            return f"{NOT_ENOUGH_EVIDENCE}: {self.waiting}"
        return "; ".join(f"{v.name} {v.detail}" for v in self.breached)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def merged_p95(windows: Sequence[dict[str, Any]]) -> float | None:
    """The p95 latency (ms) over several inference windows; None without data."""
    total = int(sum(_num(w.get("count")) for w in windows))
    if total <= 0:
        return None
    histograms = [w.get("histogram") for w in windows if _num(w.get("count")) > 0]
    bounds = histograms[0].get("bounds_ms") if isinstance(histograms[0], dict) else None
    if bounds and all(
        isinstance(h, dict) and h.get("bounds_ms") == bounds and len(h.get("counts", [])) > 0
        for h in histograms
    ):
        merged = [0.0] * max(len(h["counts"]) for h in histograms if isinstance(h, dict))
        for h in histograms:
            assert isinstance(h, dict)
            for i, n in enumerate(h["counts"]):
                merged[i] += _num(n)
        rank = 0.95 * sum(merged)
        seen = 0.0
        for i, n in enumerate(merged):
            seen += n
            if seen >= rank:
                return float(bounds[i]) if i < len(bounds) else float(bounds[-1]) * 2
    weighted = sum(
        _num(w.get("count")) * _num((w.get("latency_ms") or {}).get("p95")) for w in windows
    )
    return weighted / total


def evaluate_gates(*, gates: RolloutGates, inputs: GateInputs) -> GateVerdict:
    """Gate values for one wave against ``gates``."""
    values: list[GateValue] = []
    inferences = int(sum(_num(w.get("count")) for w in inputs.candidate))
    errors = int(sum(_num(w.get("errors")) for w in inputs.candidate))

    if gates.max_install_failure_rate is not None:
        rate = inputs.failed / inputs.finished if inputs.finished else 0.0
        limit = gates.max_install_failure_rate
        ok = rate <= limit
        values.append(
            GateValue(
                name="install_failure_rate",
                value=rate,
                threshold=limit,
                ok=ok,
                detail=f"{rate:.3f} {'<=' if ok else '>'} {limit:.3f} "
                f"({inputs.failed} of {inputs.finished} devices failed)",
            )
        )
    telemetry_gates = (gates.max_error_rate, gates.max_p95_latency_ratio, gates.min_agreement)
    uses_telemetry = any(g is not None for g in telemetry_gates)
    inference_gates = gates.max_error_rate is not None or gates.max_p95_latency_ratio is not None
    needed = max(gates.min_inferences, 1 if inference_gates else 0)
    lacking: list[str] = []

    def no_evidence(name: str, limit: float, what: str) -> None:
        lacking.append(name)
        values.append(
            GateValue(
                name=name,
                value=None,
                threshold=limit,
                ok=False,
                detail=f"{NOT_ENOUGH_EVIDENCE} yet: {what}",
            )
        )

    if gates.max_error_rate is not None:
        limit = gates.max_error_rate
        if inferences < needed:
            no_evidence("error_rate", limit, f"{inferences} of {needed} inferences")
        else:
            rate = errors / inferences
            ok = rate <= limit
            detail = (
                f"{rate:.3f} {'<=' if ok else '>'} {limit:.3f} "
                f"({errors} errors / {inferences} inferences)"
            )
            values.append(
                GateValue(name="error_rate", value=rate, threshold=limit, ok=ok, detail=detail)
            )
    if gates.max_p95_latency_ratio is not None:
        limit = gates.max_p95_latency_ratio
        new_p95 = merged_p95(inputs.candidate)
        old_p95 = merged_p95(inputs.baseline)
        if new_p95 is None or inferences < needed:
            no_evidence("p95_latency_ratio", limit, f"{inferences} of {needed} inferences")
        elif old_p95 is None or old_p95 <= 0:
            values.append(
                GateValue(
                    name="p95_latency_ratio",
                    value=None,
                    threshold=limit,
                    ok=True,
                    detail=f"not compared (new p95 {new_p95}, previous p95 {old_p95})",
                )
            )
        else:
            ratio = new_p95 / old_p95
            ok = ratio <= limit
            values.append(
                GateValue(
                    name="p95_latency_ratio",
                    value=ratio,
                    threshold=limit,
                    ok=ok,
                    detail=f"{ratio:.2f} {'<=' if ok else '>'} {limit:.2f} "
                    f"(p95 {new_p95:.1f} ms new vs {old_p95:.1f} ms previous)",
                )
            )
    if gates.min_agreement is not None:
        limit = gates.min_agreement
        compared = sum(_num(s.get("count")) for s in inputs.shadow)
        if compared <= 0:
            no_evidence("agreement", limit, "no shadow comparisons")
        else:
            agreement = (
                sum(_num(s.get("count")) * _num(s.get("agreement")) for s in inputs.shadow)
                / compared
            )
            ok = agreement >= limit
            values.append(
                GateValue(
                    name="agreement",
                    value=agreement,
                    threshold=limit,
                    ok=ok,
                    detail=f"{agreement:.3f} {'>=' if ok else '<'} {limit:.3f} "
                    f"({int(compared)} compared inputs)",
                )
            )
    waits: list[str] = []
    if inferences < gates.min_inferences and "error_rate" not in lacking:
        waits.append(f"{inferences} of {gates.min_inferences} inferences")
    waits += [f"{v.name}: {v.detail.removeprefix(NOT_ENOUGH_EVIDENCE + ' yet: ')}"
              for v in values if v.name in lacking]  # fmt: skip
    reported = [_num(w.get("window_s")) for w in inputs.candidate if w.get("window_s")]
    window = max(reported) if reported else DEFAULT_WINDOW_S
    elapsed = inputs.soak_elapsed_s
    if (
        (uses_telemetry or gates.min_inferences > 0)
        and elapsed is not None
        and elapsed < window
        and inputs.reporting < inputs.members
    ):
        waits.append(
            f"{inputs.reporting} of {inputs.members} devices reported within the first "
            f"telemetry window ({window:g} s)"
        )
    waiting = "; ".join(waits) or None
    expired = (
        waiting is not None
        and elapsed is not None
        and elapsed >= max(inputs.soak_s, window) + gates.evidence_wait_s
    )
    return GateVerdict(values=values, waiting=waiting, expired=expired, lacking=tuple(lacking))
