"""A job's priority is its owner's tier: higher tiers are claimed first when jobs queue.

A job row keeps the priority (the tier's rank), not the tier; the worker reads the tier back
from it to run the job at its owner's limits and to apply the per-tier running caps.
"""

from __future__ import annotations

from gateway.config import Tier

_PRIORITY = {tier: rank for rank, tier in enumerate(Tier)}


def priority_of_tier(tier: Tier) -> int:
    """The priority a job of a `tier` caller is queued with."""
    return _PRIORITY[tier]


def tier_of_priority(priority: int) -> Tier:
    """The tier whose jobs get `priority` (the lowest tier for a value no tier has)."""
    tiers = list(Tier)
    return tiers[priority] if 0 <= priority < len(tiers) else tiers[0]
