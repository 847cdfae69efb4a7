"""The Redis backend's own promises: Redis time, TTLs, NOSCRIPT recovery, batching that keeps each
request atomic, and the local mirror that keeps floods away from Redis."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from gateway.limiter import Check, Rule
from gateway.limiter import shared as shared_module
from gateway.limiter.checks import LimiterBackendError
from gateway.limiter.shared import RedisBackend
from gateway.testing.certificates import write_certificates
from gateway.testing.postgres import free_port
from tests.fixtures.redis import start_redis

if TYPE_CHECKING:
    from tests.fixtures.redis import RedisProcess
    from tests.limiter.conftest import Clock


def rule(emission_us: int, burst: int) -> Rule:
    return Rule(emission_us, burst, "admission", f"{burst} per {emission_us} us")


@pytest.fixture
async def shared(redis_url: str) -> AsyncIterator[RedisBackend]:
    """The Redis backend on Redis time."""
    backend = RedisBackend(Redis.from_url(redis_url), timeout_s=5.0)
    try:
        yield backend
    finally:
        await backend.aclose()


async def redis_time_us(client: Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1_000_000 + int(micros)


async def test_time_comes_from_redis(
    shared: RedisBackend, redis_client: Redis, key_prefix: str
) -> None:
    check = Check(f"{{{key_prefix}}}:t", rule(250_000, 4))
    before = await redis_time_us(redis_client)
    verdict = await shared.decide([check])
    after = await redis_time_us(redis_client)
    tat = int(await redis_client.get(check.key))
    assert before + 250_000 <= tat <= after + 250_000
    assert verdict.decisions[0].reset_after_us == 250_000


async def test_idle_keys_expire_when_they_stop_mattering(
    shared: RedisBackend, redis_client: Redis, key_prefix: str
) -> None:
    check = Check(f"{{{key_prefix}}}:ttl", rule(1_500_000, 3))
    (decision,) = (await shared.decide([check], 2)).decisions
    pttl = await redis_client.pttl(check.key)
    assert 0 < pttl <= math.ceil(decision.reset_after_us / 1000) == 3000
    # A cost of 0 writes nothing, so a never-charged key does not appear at all.
    unseen = Check(f"{{{key_prefix}}}:unseen", rule(1_500_000, 3))
    await shared.decide([unseen], 0)
    assert await redis_client.exists(unseen.key) == 0


async def test_a_key_decided_under_another_rule_or_cost_is_sent_as_that(
    shared: RedisBackend, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request alone is sent as bytes remembered per (checks, cost), a few at most here.
    monkeypatch.setattr(shared_module, "KNOWN_SINGLES", 2)
    key = f"{{{key_prefix}}}:rules"
    tight = (Check(key, rule(60_000_000, 1)),)  # one a minute
    roomy = (Check(key, rule(10_000_000, 100)),)  # one every 10 s, 100 at once
    assert (await shared.decide(tight)).allowed
    assert not (await shared.decide(tight)).allowed
    # The same key under the roomier rule (a user whose tier changed): its TAT is a minute
    # ahead, so 100 - 6 - 1 requests remain, then 5 fewer at a cost of 5.
    (first,) = (await shared.decide(roomy)).decisions
    assert first.allowed and first.remaining == 93
    (second,) = (await shared.decide(roomy, 5)).decisions
    assert second.allowed and second.remaining == 88
    assert not (await shared.decide(tight)).allowed
    # Both denials of the tight rule came from the local mirror, which each answer taught.
    assert shared.local_denials == 2


async def test_the_script_is_loaded_again_after_noscript(private_redis: RedisProcess) -> None:
    client = Redis.from_url(private_redis.url)
    backend = RedisBackend(Redis.from_url(private_redis.url), timeout_s=5.0)
    try:
        check = Check("{p}:noscript", rule(1_000_000, 2))
        assert (await backend.decide([check])).allowed
        calls = backend.redis_calls
        await client.script_flush()
        verdict = await backend.decide([check])
        assert verdict.allowed and verdict.remaining == 0
        # EVALSHA, NOSCRIPT, SCRIPT LOAD, EVALSHA: two script calls for one decision.
        assert backend.redis_calls == calls + 2
    finally:
        await backend.aclose()
        await client.aclose()


async def test_a_reply_after_the_deadline_is_never_taken_for_a_later_call(
    private_redis: RedisProcess,
) -> None:
    backend = RedisBackend(Redis.from_url(private_redis.url), timeout_s=0.2)
    try:
        late = Check("{p}:late", rule(1_000_000, 2))
        fresh = Check("{p}:fresh", rule(1_000_000, 7))
        assert (await backend.decide([late])).remaining == 1  # the connection is open
        private_redis.pause()
        try:
            with pytest.raises(LimiterBackendError):
                await backend.decide([late])
        finally:
            private_redis.resume()
        # The paused server ran the timed-out call once resumed and answered it; that answer
        # belongs to `late` (remaining 0), not to this decision.
        verdict = await backend.decide([fresh])
        assert verdict.allowed and verdict.remaining == 6
        assert (await backend.decide([late])).remaining == 0  # the late call did count
    finally:
        await backend.aclose()


async def test_concurrent_decisions_share_round_trips_and_stay_exact(
    shared: RedisBackend, key_prefix: str
) -> None:
    hot = Check(f"{{{key_prefix}}}:hot", rule(60_000_000, 10))
    verdicts = await asyncio.gather(*(shared.decide([hot]) for _ in range(64)))
    assert sum(v.allowed for v in verdicts) == 10
    assert shared.redis_calls < 8, "64 decisions arriving together must share round trips"

    users = [Check(f"{{{key_prefix}:u{i}}}:a", rule(60_000_000, 1)) for i in range(64)]
    calls = shared.redis_calls
    verdicts = await asyncio.gather(*(shared.decide([user]) for user in users))
    assert all(v.allowed for v in verdicts)
    assert shared.redis_calls - calls < 8


async def test_each_request_in_a_batch_is_all_or_nothing(
    shared: RedisBackend, key_prefix: str
) -> None:
    wide = Check(f"{{{key_prefix}}}:wide", rule(60_000_000, 3))
    narrow = Check(f"{{{key_prefix}}}:narrow", rule(60_000_000, 1))
    blocker = Check(f"{{{key_prefix}}}:blocker", rule(60_000_000, 1))
    # While the blocker's call is in flight, the next five decisions queue and then share one
    # script call, evaluated in arrival order.
    in_flight = asyncio.ensure_future(shared.decide([blocker]))
    batch = [
        asyncio.ensure_future(shared.decide(checks))
        for checks in ([narrow], [wide, narrow], [wide], [wide], [wide])
    ]
    assert (await in_flight).allowed
    results = await asyncio.gather(*batch)
    assert shared.redis_calls == 2
    assert [v.allowed for v in results] == [True, False, True, True, True]
    # The second request was denied by narrow and charged nothing to wide: three fit after it.
    assert [c.key for c, _ in results[1].denials()] == [narrow.key]
    assert results[1].decisions[0].remaining == 3
    assert results[4].remaining == 0


async def test_a_flood_on_an_exhausted_key_costs_one_redis_call(
    shared: RedisBackend, key_prefix: str
) -> None:
    check = Check(f"{{{key_prefix}}}:flood", rule(10_000_000, 1))
    assert (await shared.decide([check])).allowed
    assert shared.redis_calls == 1
    verdicts = [await shared.decide([check]) for _ in range(500)]
    verdicts += await asyncio.gather(*(shared.decide([check]) for _ in range(500)))
    assert not any(v.allowed for v in verdicts)
    assert all(0 < v.retry_after_us <= 10_000_000 for v in verdicts)
    assert shared.redis_calls == 1, "the mirror knows the key is exhausted until its TAT"
    assert shared.local_denials == 1000


async def test_the_mirror_never_denies_what_redis_would_allow(
    redis_url: str, key_prefix: str, clock: Clock
) -> None:
    # Two replicas on one Redis: what one learns never makes the other deny wrongly, and a
    # replica's mirror lets requests through again exactly when the key's TAT allows.
    replicas = [RedisBackend(Redis.from_url(redis_url), timeout_s=5.0, clock=clock) for _ in "ab"]
    check = Check(f"{{{key_prefix}}}:two", rule(1_000_000, 2))
    try:
        a, b = replicas
        assert (await a.decide([check])).allowed
        assert (await b.decide([check])).allowed
        denied = await a.decide([check])
        assert not denied.allowed and denied.retry_after_us == 1_000_000
        clock.advance(1_000_000_000)
        assert (await a.decide([check])).allowed
        # b's mirror is stale (it last saw one request) but only ever lower: Redis decides.
        assert not (await b.decide([check])).allowed
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_decisions_log_in_and_select_the_database_the_url_names(
    private_redis: RedisProcess,
) -> None:
    admin = Redis.from_url(private_redis.url)
    await admin.execute_command("ACL", "SETUSER", "limiter", "on", ">s3cret", "~*", "+@all")
    await admin.execute_command("ACL", "SETUSER", "default", "off")  # nobody else gets in
    await admin.aclose()
    at = f"redis://limiter:s3cret@127.0.0.1:{private_redis.port}"
    backend = RedisBackend(Redis.from_url(f"{at}/3"), timeout_s=5.0)
    try:
        assert (await backend.decide([Check("{p}:auth", rule(1_000_000, 3))])).remaining == 2
    finally:
        await backend.aclose()
    check = Redis.from_url(f"{at}/3")
    try:
        assert await check.exists("{p}:auth") == 1, "the key is in the database the URL names"
    finally:
        await check.aclose()
    refused = RedisBackend(
        Redis.from_url(f"redis://limiter:wrong@127.0.0.1:{private_redis.port}/3"), timeout_s=5.0
    )
    try:
        with pytest.raises(LimiterBackendError, match=r"AuthenticationError|ResponseError"):
            await refused.decide([Check("{p}:auth", rule(1_000_000, 3))])
    finally:
        await refused.aclose()


async def test_decisions_reach_redis_over_a_unix_socket_and_over_tls(tmp_path: Path) -> None:
    files = write_certificates(tmp_path / "tls")
    socket_path = tmp_path / "redis.sock"
    tls_port = free_port()
    server = start_redis(
        tmp_path / "redis",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(files.server_cert),
        "--tls-key-file",
        str(files.server_key),
        "--tls-ca-cert-file",
        str(files.ca),
        "--tls-auth-clients",
        "no",
    )
    try:
        urls = {
            "unix": f"unix://{socket_path}?db=2",
            "tls": f"rediss://127.0.0.1:{tls_port}/2?ssl_ca_certs={files.ca}",
        }
        for burst, url in enumerate(urls.values(), start=3):
            backend = RedisBackend(Redis.from_url(url), timeout_s=5.0)
            try:
                check = Check(f"{{p}}:{burst}", rule(1_000_000, burst))
                assert (await backend.decide([check])).remaining == burst - 1
            finally:
                await backend.aclose()
        plain = Redis.from_url(f"redis://127.0.0.1:{server.port}/2")
        try:
            assert await plain.exists("{p}:3", "{p}:4") == 2, "both decisions reached database 2"
        finally:
            await plain.aclose()
    finally:
        server.stop()
