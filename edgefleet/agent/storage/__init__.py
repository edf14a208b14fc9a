"""One disk budget for the data dir, a share per use, and garbage collection of stale files."""

from edgefleet.agent.storage.budget import USES, DiskBudget, DiskUsage, UseUsage
from edgefleet.agent.storage.gc import Collected, collect_garbage
from edgefleet.agent.storage.worker import DiskWorker, spool_cap

__all__ = [
    "USES",
    "Collected",
    "DiskBudget",
    "DiskUsage",
    "DiskWorker",
    "UseUsage",
    "collect_garbage",
    "spool_cap",
]
