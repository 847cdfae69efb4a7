"""The JWKS key cache (gateway.jwks): the unknown-kid refresh gate, and the fetcher against a
real JWKS server on loopback that rotates keys, fails, sends too much or hangs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gateway.jwks import RefreshGate, RemoteJwks
from tests.fixtures.jwks import JwksServer, jwks_server

#: Clock origins the gate must not care about: boot-time-like and years of uptime.
ORIGINS = [0.0, 1e3, 4e8]


@pytest.mark.parametrize("origin", ORIGINS)
def test_gate_lets_one_fetch_through_per_interval(origin: float) -> None:
    gate = RefreshGate(min_interval_s=30)

    decisions = [gate.try_pass(origin + t) for t in (0, 0.5, 29.9, 30, 45, 59.9, 60)]

    assert decisions == [True, False, False, True, False, False, True]


@pytest.mark.parametrize("origin", ORIGINS)
def test_gate_says_when_to_come_back(origin: float) -> None:
    gate = RefreshGate(min_interval_s=30)
    assert gate.retry_after(origin) == 0
    gate.try_pass(origin + 10)
    assert gate.retry_after(origin + 20) == pytest.approx(20)
    assert gate.retry_after(origin + 40) == 0
    # A refused attempt does not move the window.
    assert not gate.try_pass(origin + 39)
    assert gate.try_pass(origin + 40)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[JwksServer]:
    async with jwks_server("key-a") as started:
        yield started


def remote(url: str, *, min_refresh_interval_s: float = 3600, **kwargs: float) -> RemoteJwks:
    options = {"timeout_s": 0.5, "max_bytes": 64 * 1024, "refresh_interval_s": 3600.0}
    options.update(kwargs)
    return RemoteJwks(
        url,
        timeout_s=options["timeout_s"],
        max_bytes=int(options["max_bytes"]),
        refresh_interval_s=options["refresh_interval_s"],
        min_refresh_interval_s=min_refresh_interval_s,
    )


@pytest_asyncio.fixture
async def loaded(server: JwksServer) -> AsyncIterator[RemoteJwks]:
    """A fetcher that has loaded `key-a` from `server`."""
    keys = remote(server.url)
    await keys.start()
    try:
        assert await keys.wait_first()
        yield keys
    finally:
        await keys.aclose()


async def test_first_fetch_loads_the_published_keys(server: JwksServer, loaded: RemoteJwks) -> None:
    assert sorted(loaded.keys) == ["key-a"]
    assert loaded.keys["key-a"].algorithm_name == "ES256"
    assert server.hits == 1


async def test_a_refresh_picks_up_a_rotation(server: JwksServer, loaded: RemoteJwks) -> None:
    server.publish("key-a", "key-b")
    assert await loaded.refresh()
    assert sorted(loaded.keys) == ["key-a", "key-b"]
    server.publish("key-b")
    assert await loaded.refresh()
    assert sorted(loaded.keys) == ["key-b"]


async def test_unknown_kid_refreshes_are_rate_limited(
    server: JwksServer, loaded: RemoteJwks
) -> None:
    server.publish("key-a", "key-b")

    first = await loaded.refresh_for_unknown_kid()
    again = [await loaded.refresh_for_unknown_kid() for _ in range(5)]

    assert first and "key-b" in loaded.keys
    assert again == [False] * 5
    assert server.hits == 2  # the start-up fetch and the first unknown kid's
    assert loaded.retry_after() > 0


async def test_concurrent_unknown_kids_share_one_fetch(
    server: JwksServer, loaded: RemoteJwks
) -> None:
    server.publish("key-b")

    results = await asyncio.gather(*(loaded.refresh_for_unknown_kid() for _ in range(10)))

    assert results == [True] * 10
    assert server.hits == 2
    assert sorted(loaded.keys) == ["key-b"]


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ("error", "answered HTTP 500"),
        ("oversized", "larger than 65536 bytes"),
        ("oversized_declared", "larger than 65536 bytes"),
        ("redirect", "answered HTTP 302"),
        ("hang", "did not answer within 0.5 s"),
    ],
)
async def test_a_failed_fetch_keeps_the_last_good_set_and_is_logged(
    server: JwksServer,
    loaded: RemoteJwks,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    says: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="gateway.auth")
    server.publish("key-b")
    server.mode = mode  # type: ignore[assignment]

    ok = await loaded.refresh()

    assert not ok
    assert sorted(loaded.keys) == ["key-a"]
    assert loaded.last_error is not None and says in loaded.last_error
    (record,) = [r for r in caplog.records if r.getMessage().startswith("JWKS fetch failed")]
    assert record.jwks_url == server.url  # type: ignore[attr-defined]
    assert says in record.error  # type: ignore[attr-defined]
    server.mode = "ok"
    assert await loaded.refresh()
    assert sorted(loaded.keys) == ["key-b"]
    assert loaded.last_error is None


@pytest.mark.parametrize(
    ("document", "says"),
    [
        (b"not json", "not valid JSON"),
        (json.dumps({"keys": []}).encode(), "no RS256 or ES256"),
        (
            json.dumps({"keys": [{"kty": "EC", "kid": "p", "crv": "P-256", "d": "AA"}]}).encode(),
            "secret key material",
        ),
    ],
)
async def test_a_bad_document_is_not_trusted(
    server: JwksServer, loaded: RemoteJwks, document: bytes, says: str
) -> None:
    server.raw = document

    assert not await loaded.refresh()

    assert sorted(loaded.keys) == ["key-a"]
    assert loaded.last_error is not None and says in loaded.last_error


async def test_an_unreachable_url_ends_the_first_fetch_within_the_timeout() -> None:
    async with jwks_server("key-a") as server:
        server.mode = "hang"
        keys = remote(server.url, timeout_s=0.3)
        await keys.start()
        try:
            loaded = await keys.wait_first()
        finally:
            await keys.aclose()

    assert not loaded and keys.keys == {}
    assert keys.last_error is not None and "did not answer" in keys.last_error
