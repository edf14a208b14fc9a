"""The disk budget for a bundle: refused before any download when it would not fit.

A bundle is an uncompressed tar whose members are listed with their lengths, so its
unpacked size is at most its signed length: an install needs ``length`` in ``staging``
(the download) and ``length`` more in the use it unpacks into (``slots`` for a model,
``shadow`` for a shadowed candidate, ``agent_versions`` for the agent's own release),
less the directory it replaces, which is emptied before the unpack
(``edgefleet.agent.storage.budget`` holds the rule and words the refusal).
"""

from __future__ import annotations

from pathlib import Path

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.storage.budget import DiskBudget, tree_size

UNPACK_FACTOR = {"slots": 1, "shadow": 1, "agent_versions": 3}
"""Bytes unpacked per byte of bundle: an agent release also unpacks its wheels."""


def check_disk_budget(config: AgentConfig, length: int, replaced: Path, *, use: str) -> None:
    """Refuse a bundle of ``length`` bytes that would not fit (download + unpacked).

    Args:
        config: the agent's configuration (data dir and ``[disk]``).
        length: the bundle's signed length, in bytes.
        replaced: the directory the bundle will replace (freed before the unpack).
        use: where it unpacks: ``slots``, ``shadow`` or ``agent_versions``.

    Raises:
        DiskBudgetError: the reason names the use, its share and the budget.
    """
    budget = DiskBudget(config.data_dir, config.disk)
    budget.check(
        {"staging": length, use: UNPACK_FACTOR.get(use, 1) * length},
        freed={use: tree_size(replaced)},
    )
