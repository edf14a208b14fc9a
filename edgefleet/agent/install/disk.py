"""The disk budget: a bundle is refused before any download when it would not fit.

A download and its unpacked slot both sit in the data dir for a while, so a bundle
needs twice its signed length: within ``disk_budget_mb`` (what the agent may use in
all) and below the filesystem's free space less a fixed margin.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from edgefleet.agent.errors import InstallError

DISK_MARGIN_BYTES = 32 * 1024 * 1024
"""Free space always left on the data dir's filesystem after a download and unpack."""


def _tree_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (0 when absent)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_disk_budget(data_dir: Path, budget_mb: float, length: int, replaced: Path) -> None:
    """Refuse a bundle of ``length`` bytes that would not fit (download + unpacked).

    Args:
        data_dir: the agent's data dir; everything under it counts against the budget.
        budget_mb: the configured ``disk_budget_mb``.
        length: the bundle's signed length, in bytes.
        replaced: the directory the bundle will replace (not counted as used).

    Raises:
        InstallError: over the budget, or too little free space on the filesystem.
    """
    data_dir = Path(data_dir)
    need = 2 * length
    used = _tree_size(data_dir) - _tree_size(replaced)
    budget = int(budget_mb * 2**20)
    if used + need > budget:
        raise InstallError(
            f"bundle needs {need / 2**20:.1f} MiB, disk budget leaves "
            f"{max(0, budget - used) / 2**20:.1f} MiB of {budget_mb:g} MiB"
        )
    free = shutil.disk_usage(data_dir).free
    if need + DISK_MARGIN_BYTES > free:
        raise InstallError(
            f"bundle needs {need / 2**20:.1f} MiB, only {free / 2**20:.1f} MiB free "
            f"(keeping {DISK_MARGIN_BYTES // 2**20} MiB spare)"
        )
