"""The memory budget: which models a device may host, and whether one more fits.

A device hosts its models side by side under one ``memory_budget_mb``; ``[models]``
names the models it may host and gives each a share of that budget. Before any
download a bundle is refused when its model is not on the list, when it is larger
than its model's share, or when it and the other models' artifacts exceed the whole
budget. The estimate of what a model holds in memory is its artifact's bytes (the
bundle's signed length for one not downloaded yet): a loaded session keeps at least
its weights, and the estimate is known before a byte is fetched. During a switch the
old and the new version of one model are both loaded for as long as the old one's
requests take to drain.
"""

from __future__ import annotations

from collections.abc import Mapping

from edgefleet.agent.config import AgentConfig
from edgefleet.agent.errors import InstallError

MIB = 2**20


def check_model_allowed(config: AgentConfig, name: str) -> None:
    """Refuse a model the ``[models]`` table does not list (an empty table allows all).

    Raises:
        InstallError: naming the models this device may host.
    """
    if config.models and name not in config.models:
        allowed = ", ".join(sorted(config.models))
        raise InstallError(f"model {name!r} is not allowed on this device (allowed: {allowed})")


def check_memory_budget(
    config: AgentConfig, name: str, length: int, others: Mapping[str, int]
) -> None:
    """Refuse a bundle of model ``name``, ``length`` bytes, that would not fit in memory.

    Args:
        config: the device's budget and shares.
        name: the bundle's model.
        length: the bundle's signed length, the estimate of its model in memory.
        others: bytes held by every other model hosted here, by name.

    Raises:
        InstallError: over the model's share or over the whole budget, naming it.
    """
    budget = config.memory_budget_mb * MIB
    share = config.models[name].memory_share if name in config.models else 1.0
    if length > share * budget:
        raise InstallError(
            f"bundle needs ~{length / MIB:.1f} MiB of memory, model {name!r} may use "
            f"{share * budget / MIB:.1f} MiB (memory_share {share:g} of "
            f"memory_budget_mb {config.memory_budget_mb:g})"
        )
    used = sum(size for other, size in others.items() if other != name)
    if used + length > budget:
        raise InstallError(
            f"bundle needs ~{length / MIB:.1f} MiB of memory, the other models hold "
            f"{used / MIB:.1f} MiB of memory_budget_mb {config.memory_budget_mb:g}"
        )
