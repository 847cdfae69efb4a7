"""The shared limiter on a real Redis Cluster (three local masters): the key layout keeps each
decision in one slot, batches split by slot, and a denial still consumes from no limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.config import RateLimit, Settings, Tier
from gateway.errors import RateLimited
from gateway.limiter import Check, LimiterMode, RateLimiter, Rule, keys
from gateway.limiter.shared import RedisBackend

if TYPE_CHECKING:
    from tests.fixtures.redis import RedisCluster as LocalCluster


HOUR = 3600.0


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_decisions_on_a_cluster(cluster_client: RedisCluster, key_prefix: str) -> None:
    backend = RedisBackend(cluster_client, timeout_s=5.0)
    users = [
        Check(f"{{{key_prefix}:u{i}}}:a", Rule(60_000_000, 2, "admission", "2")) for i in range(40)
    ]
    assert len({key_slot(c.key.encode()) for c in users}) > 20, "users must spread over slots"
    # Three rounds of 40 concurrent decisions, one per user each: exactly two pass per user.
    allowed = [0] * len(users)
    for _ in range(3):
        verdicts = await asyncio.gather(*(backend.decide([user]) for user in users))
        for i, verdict in enumerate(verdicts):
            allowed[i] += verdict.allowed
    assert allowed == [2] * len(users)


async def test_upstream_decisions_are_atomic_across_users_on_a_cluster(
    redis_cluster: LocalCluster,
    key_prefix: str,
    make_settings: Callable[..., Settings],
) -> None:
    upstream = RateLimit(rate=3, period_s=HOUR, burst=3)
    settings = make_settings(
        key_prefix,
        redis_url=redis_cluster.url,
        cluster=True,
        command_timeout_s=5.0,
        upstream=upstream,
        models={"m": RateLimit(rate=4, period_s=HOUR, burst=4)},
    )
    limiter = RateLimiter.from_settings(settings)
    try:
        await limiter.start()
        assert limiter.mode is LimiterMode.SHARED
        # alice takes 3 (her own limit), bob takes the model's last one; bob's next call is
        # denied by the model limit and must not be charged to his own limit.
        for _ in range(3):
            await limiter.check_upstream("analyze_video", "alice", Tier.PRO, "m")
        with pytest.raises(RateLimited, match="Gemini-call limit"):
            await limiter.check_upstream("analyze_video", "alice", Tier.PRO, "m")
        await limiter.check_upstream("analyze_video", "bob", Tier.PRO, "m")
        with pytest.raises(RateLimited, match="fleet-wide limit on calls to m") as denied:
            await limiter.check_upstream("analyze_video", "bob", Tier.PRO, "m")
        assert denied.value.metadata["limit"] == "model"
        # bob's own upstream key still has 2 of its 3: read it with a cost of 0.
        shared = limiter.shared
        assert shared is not None
        route = settings.policy("analyze_video").route_id
        bob = Check(
            keys.upstream_key(key_prefix, "m", "bob", route), Rule.of(upstream, "upstream", "bob")
        )
        assert (await shared.decide([bob], 0)).remaining == 2
    finally:
        await limiter.aclose()


async def test_the_script_is_reloaded_on_every_node(
    redis_cluster: LocalCluster, cluster_client: RedisCluster, key_prefix: str
) -> None:
    backend = RedisBackend(cluster_client, timeout_s=5.0)
    users = [
        Check(f"{{{key_prefix}:r{i}}}:a", Rule(1_000_000, 5, "admission", "5")) for i in range(30)
    ]
    assert all(await asyncio.gather(*(backend.decide([u]) for u in users)))
    for node in redis_cluster.nodes:
        client = Redis.from_url(node.url)
        try:
            await client.script_flush()
        finally:
            await client.aclose()
    verdicts = await asyncio.gather(*(backend.decide([u]) for u in users))
    assert all(v.allowed and v.remaining == 3 for v in verdicts)
