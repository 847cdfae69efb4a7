"""Redis trouble never hangs a request: timeouts, the circuit breaker, the three failure modes,
the live mode (property, listeners, logs) and automatic recovery.

Every decision below runs under `asyncio.timeout(HANG)`, far above the configured timeouts: a
request that waited on a silent Redis instead of answering by the failure mode fails the test.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

import pytest

from gateway.config import FailureMode, RateLimit, Settings, Tier
from gateway.errors import RateLimited, Unavailable
from gateway.limiter import LimiterMode, RateLimiter
from gateway.limiter.checks import Verdict

if TYPE_CHECKING:
    from tests.fixtures.redis import RedisProcess

#: Far longer than any configured timeout below; reaching it means a request hung.
HANG = 5.0
FOUR_PER_HOUR = RateLimit(rate=4, period_s=3600, burst=4)


@pytest.fixture
async def silent_redis() -> AsyncIterator[str]:
    """A TCP listener that accepts connections and never answers: a hung Redis."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()
        for writer in connections:
            writer.close()
        await server.wait_closed()


def _settings(
    make_settings: Callable[..., Settings], prefix: str, url: str, mode: FailureMode
) -> Settings:
    return make_settings(
        prefix,
        admission=FOUR_PER_HOUR,
        redis_url=url,
        failure_mode=mode,
        replicas=2,
        connect_timeout_s=0.05,
        command_timeout_s=0.1,
        breaker_failures=2,
        probe_interval_s=0.05,
    )


async def admit(limiter: RateLimiter, user: str = "u1") -> Verdict | None:
    async with asyncio.timeout(HANG):
        return await limiter.admit("analyze_video", user, Tier.PRO)


async def test_a_silent_redis_falls_back_to_the_local_share(
    silent_redis: str, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    changes: list[LimiterMode] = []
    limiter = RateLimiter.from_settings(
        _settings(make_settings, key_prefix, silent_redis, FailureMode.LOCAL)
    )
    limiter.add_listener(changes.append)
    try:
        assert limiter.mode is LimiterMode.SHARED
        # Two requests each wait out the timeout, then the breaker opens; the local share of a
        # burst of 4 over 2 replicas is 2.
        assert await admit(limiter) is not None
        assert await admit(limiter) is not None
        assert limiter.mode is LimiterMode.LOCAL_FALLBACK
        assert changes == [LimiterMode.LOCAL_FALLBACK]
        with pytest.raises(RateLimited):
            await admit(limiter)
        assert await admit(limiter, "u2") is not None
    finally:
        await limiter.aclose()


async def test_failure_mode_open_allows_everything(
    silent_redis: str, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    limiter = RateLimiter.from_settings(
        _settings(make_settings, key_prefix, silent_redis, FailureMode.OPEN)
    )
    try:
        await limiter.start()
        assert limiter.mode is LimiterMode.OPEN_FALLBACK
        for _ in range(10):
            await admit(limiter)
    finally:
        await limiter.aclose()


async def test_failure_mode_closed_refuses_with_unavailable(
    silent_redis: str, make_settings: Callable[..., Settings], key_prefix: str
) -> None:
    limiter = RateLimiter.from_settings(
        _settings(make_settings, key_prefix, silent_redis, FailureMode.CLOSED)
    )
    try:
        for _ in range(3):
            with pytest.raises(Unavailable, match="failure_mode is 'closed'") as refused:
                await admit(limiter)
        assert refused.value.retry_after_s == pytest.approx(0.05)
        assert limiter.mode is LimiterMode.CLOSED_FALLBACK
    finally:
        await limiter.aclose()


async def test_a_redis_down_at_startup_starts_in_the_failure_mode(
    private_redis: RedisProcess,
    make_settings: Callable[..., Settings],
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = private_redis.url
    private_redis.stop()
    limiter = RateLimiter.from_settings(
        _settings(make_settings, key_prefix, url, FailureMode.LOCAL)
    )
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.limiter"):
            async with asyncio.timeout(HANG):
                await limiter.start()
        assert limiter.mode is LimiterMode.LOCAL_FALLBACK
        assert "Redis is unreachable" in caplog.text
        assert await admit(limiter) is not None
    finally:
        await limiter.aclose()


async def test_a_paused_redis_is_survived_and_recovery_is_automatic(
    private_redis: RedisProcess,
    make_settings: Callable[..., Settings],
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    changed = asyncio.Event()
    changes: list[LimiterMode] = []

    def listen(mode: LimiterMode) -> None:
        changes.append(mode)
        changed.set()

    limiter = RateLimiter.from_settings(
        _settings(make_settings, key_prefix, private_redis.url, FailureMode.LOCAL)
    )
    limiter.add_listener(listen)
    shared = limiter.shared
    assert shared is not None
    caplog.set_level(logging.WARNING, logger="gateway.limiter")
    try:
        await limiter.start()
        assert limiter.mode is LimiterMode.SHARED
        await admit(limiter)
        calls = shared.redis_calls

        private_redis.pause()
        try:
            await admit(limiter)
            await admit(limiter)
            assert limiter.mode is LimiterMode.LOCAL_FALLBACK
            # With the circuit open, requests no longer touch Redis.
            calls_while_open = shared.redis_calls
            await admit(limiter, "u2")
            assert shared.redis_calls == calls_while_open > calls
        finally:
            private_redis.resume()

        changed.clear()
        async with asyncio.timeout(HANG):
            while limiter.mode is not LimiterMode.SHARED:
                await changed.wait()
                changed.clear()
        assert changes == [LimiterMode.LOCAL_FALLBACK, LimiterMode.SHARED]
        assert "Redis answers again" in caplog.text
        # Back on Redis: the shared state counts again. It holds the request made before the
        # pause, and may hold those that timed out too: their commands sat in the paused
        # server's socket buffer and ran once it resumed (a timeout can over-count, never under).
        verdict = await admit(limiter, "u3")
        assert verdict is not None and shared.redis_calls > calls_while_open
        verdict = await admit(limiter)
        assert verdict is not None and verdict.remaining <= 2
    finally:
        await limiter.aclose()
