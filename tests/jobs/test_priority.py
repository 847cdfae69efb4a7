"""A job's priority from its owner's tier, and back (`gateway.jobs.priority`)."""

from __future__ import annotations

from gateway.config import Tier
from gateway.jobs.priority import priority_of_tier, tier_of_priority


def test_higher_tiers_get_higher_priorities_and_each_reads_back_as_its_tier() -> None:
    priorities = [priority_of_tier(tier) for tier in Tier]
    assert priorities == sorted(priorities) and len(set(priorities)) == len(Tier)
    assert [tier_of_priority(p) for p in priorities] == list(Tier)


def test_a_priority_no_tier_has_reads_as_the_lowest_tier() -> None:
    lowest = next(iter(Tier))
    assert tier_of_priority(-1) is lowest
    assert tier_of_priority(len(Tier)) is lowest
