"""Which device runs which arm: ranked by a hash of the experiment id and the device id.

Each device's key is ``sha256("<experiment id>:<device id>")``; the devices are sorted
by key and the first ``round(share_b * n)`` run arm B, the rest arm A. So the split is
exact (half and half by default), the same for the same cohort on every replica and
every pass, independent of the order devices were found in, and anyone can recompute
it from the audit log. A different experiment shuffles the same cohort differently.
When bandit mode moves the share, only the devices at the boundary of the ranking
change arm; everyone else stays where they were.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

ARMS = ("A", "B")


def device_key(experiment_id: int, device_id: str) -> str:
    """The hex SHA-256 a device is ranked by within one experiment."""
    return hashlib.sha256(f"{experiment_id}:{device_id}".encode()).hexdigest()


def assign_arms(experiment_id: int, device_ids: Iterable[str], share_b: float) -> dict[str, str]:
    """Each device's arm, ``"A"`` or ``"B"``, with ``round(share_b * n)`` devices on B.

    Raises:
        ValueError: ``share_b`` outside [0, 1].
    """
    if not 0.0 <= share_b <= 1.0:
        raise ValueError(f"share of arm B must be within [0, 1], not {share_b}")
    ranked = sorted(set(device_ids), key=lambda d: (device_key(experiment_id, d), d))
    on_b = round(share_b * len(ranked))
    return {d: ("B" if i < on_b else "A") for i, d in enumerate(ranked)}
