"""One disk budget for the data dir, a share of it per use, checked before each write.

Everything the agent writes lives under its data dir, and each path belongs to one use::

    slots           models/           both slots, journal and active record of every model
    staging         downloads/        downloaded bundles and their resumable .part files
    shadow          shadow/           a shadowed candidate, unpacked
    metadata        tuf/              TUF metadata and its root history
    spool           spool.sqlite*     the telemetry spool (database, WAL, shared memory)
    logs            logs/             the log ring
    agent_versions  agent-versions/   the agent's own releases (the launcher's handover)
    other           anything else     status and held-config files, the lock table, ...

A use may take ``shares.<use> * budget_mb``; all of them together ``budget_mb``; and no
write may leave the filesystem with less than ``reserve_mb`` free. The shares are caps,
not a partition (they may add up to more than 1), because a device rarely fills every
use at once: a bundle may take most of the disk while the spool is nearly empty.

Why a check before the write rather than a failure during it: a write that fails half
way leaves a torn slot or a ``.part`` the next start must clean up, and a device that
downloads a bundle it cannot unpack has spent its link for nothing. A refusal names the
use, its share and the budget, so the operator reads from the rollout's report which
setting to change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from edgefleet.agent.config import DiskConfig
from edgefleet.agent.errors import DiskBudgetError

MIB: Final = 2**20

USES: Final = (
    "slots",
    "staging",
    "shadow",
    "metadata",
    "spool",
    "logs",
    "agent_versions",
)
"""The uses with a share of the budget, in the order ``status`` lists them."""

_USE_OF_ENTRY: Final = {
    "models": "slots",
    "downloads": "staging",
    "shadow": "shadow",
    "tuf": "metadata",
    "logs": "logs",
    "agent-versions": "agent_versions",
}
SPOOL_PREFIX: Final = "spool.sqlite"


def use_of(entry: str) -> str:
    """The use a top-level entry of the data dir belongs to (``other`` when none)."""
    if entry.startswith(SPOOL_PREFIX):
        return "spool"
    return _USE_OF_ENTRY.get(entry, "other")


def tree_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (0 when absent), symlinks not followed.

    Counts allocated blocks where the filesystem reports them, so a sparse or partly
    written file counts what it really takes; a file removed while walking counts 0.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):
        return _file_bytes(info)
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += _file_bytes(os.lstat(os.path.join(root, name)))
    return total


def _file_bytes(info: os.stat_result) -> int:
    return max(info.st_size, info.st_blocks * 512) if info.st_blocks else info.st_size


@dataclass(frozen=True)
class UseUsage:
    """One use: bytes used and its cap."""

    use: str
    used: int
    share: int


@dataclass(frozen=True)
class DiskUsage:
    """What ``edgefleet-agent status`` shows: every use against its share, the whole
    data dir against the budget, and the filesystem's free space."""

    uses: tuple[UseUsage, ...]
    used: int
    budget: int
    free: int
    reserve: int

    def of(self, use: str) -> int:
        """Bytes used by ``use``."""
        return next((u.used for u in self.uses if u.use == use), 0)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON for the status file."""
        return {
            "budget_bytes": self.budget,
            "used_bytes": self.used,
            "free_bytes": self.free,
            "reserve_bytes": self.reserve,
            "uses": {u.use: {"used_bytes": u.used, "share_bytes": u.share} for u in self.uses},
        }


class DiskBudget:
    """The budget of one data dir; every writer asks it before a large write."""

    def __init__(self, data_dir: Path, config: DiskConfig) -> None:
        self.data_dir = Path(data_dir)
        self.config = config
        self.budget = int(config.budget_mb * MIB)
        self.reserve = int(config.reserve_mb * MIB)

    def share(self, use: str) -> int:
        """Bytes ``use`` may take (its share of the budget)."""
        if use not in USES:
            return self.budget
        return int(getattr(self.config.shares, use) * self.budget)

    def free(self) -> int:
        """Free bytes on the data dir's filesystem (0 when it cannot be read)."""
        try:
            return shutil.disk_usage(self.data_dir).free
        except OSError:
            return 0

    def usage(self) -> DiskUsage:
        """Every use's bytes, measured now (a walk of the data dir)."""
        per_use = dict.fromkeys((*USES, "other"), 0)
        try:
            entries = list(os.scandir(self.data_dir))
        except OSError:
            entries = []
        for entry in entries:
            per_use[use_of(entry.name)] += tree_size(Path(entry.path))
        uses = tuple(UseUsage(use, per_use[use], self.share(use)) for use in USES)
        others = UseUsage("other", per_use["other"], self.budget)
        return DiskUsage(
            uses=(*uses, others),
            used=sum(per_use.values()),
            budget=self.budget,
            free=self.free(),
            reserve=self.reserve,
        )

    def check(self, needs: dict[str, int], *, freed: dict[str, int] | None = None) -> None:
        """Refuse a write that adds ``needs[use]`` bytes to each use, while removing
        ``freed[use]`` bytes (a slot it replaces, say) once it is under way.

        The filesystem must hold the larger of the first write alone and all of it less
        what is freed, and keep ``reserve_mb`` free after.

        Raises:
            DiskBudgetError: a use over its share, the whole over the budget, or the
                filesystem short of room; the reason names which, in MiB.
        """
        freed = freed or {}
        usage = self.usage()
        for use, need in needs.items():
            used = usage.of(use) - freed.get(use, 0)
            share = self.share(use)
            if used + need > share:
                raise DiskBudgetError(
                    f"needs {_mib(need)} of {use}: its share is {_mib(share)} of the "
                    f"{self.config.budget_mb:g} MiB disk budget and {_mib(max(used, 0))} "
                    f"is in use ([disk] budget_mb, shares.{use})",
                    use=use,
                    need=need,
                    room=max(0, share - used),
                )
        total = sum(needs.values())
        released = sum(freed.values())
        if usage.used - released + total > self.budget:
            room = max(0, self.budget - usage.used + released)
            raise DiskBudgetError(
                f"needs {_mib(total)}: the {self.config.budget_mb:g} MiB disk budget has "
                f"{_mib(room)} left ([disk] budget_mb)",
                use="budget",
                need=total,
                room=room,
            )
        peak = max(max(needs.values(), default=0), total - released)
        if peak + self.reserve > usage.free:
            room = max(0, usage.free - self.reserve)
            raise DiskBudgetError(
                f"needs {_mib(peak)} on disk: the filesystem has {_mib(usage.free)} free "
                f"and {_mib(self.reserve)} stays free ([disk] reserve_mb)",
                use="disk",
                need=peak,
                room=room,
            )


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"
