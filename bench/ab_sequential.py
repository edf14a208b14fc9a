"""The experiments' sequential test under continuous monitoring: false positives and power.

Simulates Bernoulli error rates read after every telemetry batch, as the control
plane's pass reads them, and prints for each case the share of experiments the mSPRT
decided (false positives for A/A, power for A/B), the share a fixed-horizon z-test
read at every look would have called, and the mean observations per arm at decision.

    python bench/ab_sequential.py [--runs 1000] [--looks 100] [--batch 50]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from edgefleet.control_plane.services.experiments.statistics import ArmSummary, msprt

CASES = ((0.05, 0.05), (0.02, 0.02), (0.05, 0.06), (0.05, 0.075), (0.05, 0.10), (0.02, 0.01))


def run(p_a: float, p_b: float, runs: int, looks: int, batch: int, alpha: float, seed: int) -> str:
    rng = np.random.default_rng(seed)
    hits_a = rng.binomial(batch, p_a, (runs, looks)).cumsum(axis=1)
    hits_b = rng.binomial(batch, p_b, (runs, looks)).cumsum(axis=1)
    decided = naive = 0
    stops: list[int] = []
    for e in range(runs):
        stopped = peeked = False
        for look in range(looks):
            n = batch * (look + 1)
            a = ArmSummary.from_proportion(n, hits_a[e, look])
            b = ArmSummary.from_proportion(n, hits_b[e, look])
            if not stopped and msprt(a, b, alpha=alpha, pooled=True).significant:
                stopped = True
                stops.append(n)
            pooled = (a.mean + b.mean) / 2
            se = math.sqrt(pooled * (1 - pooled) * 2 / n) if 0 < pooled < 1 else 0.0
            peeked = peeked or bool(se and abs(b.mean - a.mean) / se > 1.96)
        decided += stopped
        naive += peeked
    mean_n = f"{np.mean(stops):8.0f}" if stops else "       -"
    return f"{p_a:6.3f} {p_b:6.3f}  {decided / runs:8.3f}  {naive / runs:13.3f}  {mean_n}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--looks", type=int, default=100)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.05)
    args = parser.parse_args()
    print(
        f"{args.runs} experiments per case, read after each of {args.looks} batches of "
        f"{args.batch} per arm, alpha {args.alpha}"
    )
    print("   p_A    p_B   decided  naive z-test  mean n/arm at decision")
    for i, (p_a, p_b) in enumerate(CASES):
        print(run(p_a, p_b, args.runs, args.looks, args.batch, args.alpha, seed=i))


if __name__ == "__main__":
    main()
