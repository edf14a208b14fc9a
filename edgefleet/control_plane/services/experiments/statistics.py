"""The sequential test that decides an experiment, and the Thompson sampler of bandit mode.

Pure arithmetic over per-arm summaries (count, mean, variance): no database, no IO.

Why mSPRT (the mixture sequential probability ratio test of Johari, Pekelis and
Walsh, "Always Valid Inference", 2017): an experiment's numbers are looked at on
every scheduler pass, for as long as it runs. A fixed-horizon test (a z-test each
pass) then finds a "significant" difference in a large share of A/A experiments;
the mixture likelihood ratio is a nonnegative martingale under the null hypothesis,
so by Ville's inequality the chance it ever crosses ``1 / alpha`` is at most
``alpha``, however often it is read and whenever the experiment stops. Its normal
mixture has a closed form, so it needs nothing beyond the standard library; the
packages that implement it (``savvi``, ``msprt``) are young single-author releases,
and spotify-confidence's sequential test is group-sequential (a planned maximum
sample size), which does not fit an experiment that runs until it is decided.
``tests/unit/control_plane/services/experiments/test_statistics.py`` simulates A/A
and A/B experiments read after every batch to show both properties.

The mixing distribution is ``N(0, tau^2)`` on the difference of means, with ``tau``
given in units of the metric's pooled standard deviation (``mixture_sd``), so one
default suits an error rate and a latency alike: it is the effect size the test is
most sensitive to, not a threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ArmSummary:
    """One arm's observations of one metric: how many, their mean and variance."""

    n: float
    mean: float
    variance: float

    @classmethod
    def from_sums(cls, n: float, total: float, total_sq: float) -> ArmSummary:
        """From a count, a sum and a sum of squares (what telemetry windows add up to)."""
        if n <= 0:
            return cls(0.0, 0.0, 0.0)
        mean = total / n
        return cls(n, mean, max(total_sq / n - mean * mean, 0.0))

    @classmethod
    def from_proportion(cls, n: float, hits: float) -> ArmSummary:
        """A Bernoulli metric (an error rate, an accuracy): ``hits`` of ``n``."""
        if n <= 0:
            return cls(0.0, 0.0, 0.0)
        p = min(max(hits / n, 0.0), 1.0)
        return cls(n, p, p * (1.0 - p))


@dataclass(frozen=True)
class SequentialResult:
    """The test's verdict on ``B - A`` after the observations so far.

    ``likelihood_ratio`` is the mixture likelihood ratio; ``p_value`` is ``1 / ratio``
    capped at 1 (always valid: the caller keeps the running minimum over passes).
    ``significant`` once ``ratio >= 1 / alpha``, with at least ``min_samples`` per arm.
    """

    n_a: float
    n_b: float
    mean_a: float
    mean_b: float
    difference: float
    likelihood_ratio: float
    p_value: float
    alpha: float
    significant: bool

    def as_dict(self) -> dict[str, float | bool]:
        return {
            "n_a": self.n_a,
            "n_b": self.n_b,
            "mean_a": self.mean_a,
            "mean_b": self.mean_b,
            "difference": self.difference,
            "likelihood_ratio": self.likelihood_ratio,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "significant": self.significant,
        }


def msprt(
    a: ArmSummary,
    b: ArmSummary,
    *,
    alpha: float = 0.05,
    mixture_sd: float = 0.1,
    min_samples: float = 100,
    pooled: bool = False,
) -> SequentialResult:
    """The normal-mixture SPRT of ``mean_b - mean_a = 0`` on the observations so far.

    Args:
        a: arm A's summary of the metric.
        b: arm B's summary of the metric.
        alpha: the false-positive rate the test controls under continuous monitoring.
        mixture_sd: the mixture's standard deviation in units of the pooled
            standard deviation of the metric (the effect size it is tuned to).
        min_samples: observations each arm needs before the test may decide (the
            variance estimate behind the normal approximation needs them).
        pooled: estimate one variance from both arms (a proportion under the null
            hypothesis: both arms share one rate) instead of one per arm.

    Returns:
        The verdict; not significant while an arm has fewer than ``min_samples``
        observations or the metric does not vary at all.
    """
    difference = b.mean - a.mean
    ratio = 1.0
    if a.n >= max(min_samples, 2) and b.n >= max(min_samples, 2):
        if pooled:
            mean = (a.n * a.mean + b.n * b.mean) / (a.n + b.n)
            var_a = var_b = mean * (1.0 - mean)
        else:
            var_a, var_b = a.variance, b.variance
        v = var_a / a.n + var_b / b.n  # the variance of the difference of means
        tau2 = mixture_sd**2 * (var_a + var_b) / 2.0
        if v > 0 and tau2 > 0:
            log_ratio = 0.5 * math.log(v / (v + tau2)) + (
                difference**2 * tau2 / (2.0 * v * (v + tau2))
            )
            ratio = math.exp(min(log_ratio, 700.0))
    return SequentialResult(
        n_a=a.n,
        n_b=b.n,
        mean_a=a.mean,
        mean_b=b.mean,
        difference=difference,
        likelihood_ratio=ratio,
        p_value=min(1.0, 1.0 / ratio),
        alpha=alpha,
        significant=ratio >= 1.0 / alpha,
    )


def probability_b_better(
    a: ArmSummary,
    b: ArmSummary,
    *,
    higher_is_better: bool,
    proportion: bool,
    draws: int = 4000,
    seed: int = 0,
) -> float:
    """Thompson sampling's share for arm B: the posterior probability that B is better.

    A proportion draws from Beta(1 + hits, 1 + misses) per arm; any other metric from
    the normal approximation ``N(mean, variance / n)`` (a flat prior). An arm with no
    observations draws from its prior, so an arm no device has reported on yet gets
    an even chance rather than none. ``seed`` makes a pass reproducible (the caller
    passes the experiment id and its pass number).
    """
    rng = np.random.default_rng(seed)

    def sample(arm: ArmSummary) -> np.ndarray:
        if proportion:
            hits = arm.mean * arm.n
            return rng.beta(1.0 + hits, 1.0 + arm.n - hits, draws)
        if arm.n < 2:
            return rng.normal(0.0, 1.0, draws)
        return rng.normal(arm.mean, math.sqrt(arm.variance / arm.n) or 1e-12, draws)

    sa, sb = sample(a), sample(b)
    if a.n < 2 and b.n < 2:
        return 0.5
    better = sb > sa if higher_is_better else sb < sa
    return float(better.mean())
