"""The public keys user JWTs are verified with: a JWKS document, from a file or a URL.

Supabase publishes a project's signing keys at
`https://<project>.supabase.co/auth/v1/.well-known/jwks.json` and rotates them there. Three
parts, the first two pure:

- `parse_jwks`: the RS256/ES256 keys of a JWKS document, by `kid`, refusing documents the
  gateway must not trust (private key material, duplicated `kid`s, no usable key).
- `RefreshGate`: when a token with an unknown `kid` may make the gateway fetch the document
  again (at most once per `min_interval_s`), with time passed in.
- `RemoteJwks`: the document at a URL, fetched with a timeout and a size cap, off the request
  path: once at start-up, then every `refresh_interval_s` in the background, and when a token
  names a `kid` the cached set lacks (rate-limited by the gate). A fetch that fails (unreachable,
  an HTTP error, too big, not a JWKS) is logged and changes nothing: the last good set stays.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final, TypeAlias

if TYPE_CHECKING:
    # Imported where used: a gateway without a JWKS URL or user JWTs never loads them.
    import aiohttp
    import jwt

log = logging.getLogger("gateway.auth")

#: How each JWKS key type is used; the algorithm is pinned by the key, never chosen by the token.
JWKS_ALGORITHMS: Final = {"RSA": "RS256", "EC": "ES256"}

Keys: TypeAlias = "Mapping[str, jwt.PyJWK]"


def parse_jwks(document: object, source: str) -> dict[str, jwt.PyJWK]:
    """The RS256/ES256 public keys of a JWKS document, by `kid`.

    Raises `ValueError`, naming `source` (where the document came from), for a document the
    gateway must not run with: not a JWKS, a key without `kid`, a duplicated `kid`, private or
    symmetric key material (a JWKS is meant to be public), or no usable key at all. Keys of
    other types and encryption keys are skipped.
    """
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError(f"{source} must be a JWKS: an object with a 'keys' list")
    import jwt

    keys: dict[str, jwt.PyJWK] = {}
    for index, entry in enumerate(entries):
        where = f"{source}, key {index}"
        if not isinstance(entry, dict):
            raise ValueError(f"{where} is not a JSON object")
        kty = entry.get("kty")
        if kty == "oct" or "d" in entry:
            raise ValueError(f"{where} holds secret key material; publish only public keys")
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where} has no kid; tokens pick their key by kid")
        algorithm = JWKS_ALGORITHMS.get(kty) if isinstance(kty, str) else None
        if (
            algorithm is None
            or entry.get("use", "sig") != "sig"
            or (kty == "EC" and entry.get("crv") != "P-256")
        ):
            continue
        declared = entry.get("alg")
        if declared is not None and declared != algorithm:
            raise ValueError(f"{where} ({kid}) declares alg {declared!r}; use {algorithm}")
        if kid in keys:
            raise ValueError(f"{where} repeats kid {kid!r}")
        try:
            keys[kid] = jwt.PyJWK(entry, algorithm)
        except jwt.PyJWTError as exc:
            raise ValueError(f"{where} ({kid}) is not a valid {kty} key: {exc}") from None
    if not keys:
        raise ValueError(f"{source} has no RS256 or ES256 (P-256) signing key")
    return keys


class RefreshGate:
    """Whether a token with an unknown `kid` may trigger a fetch of the key set now.

    At most one such fetch per `min_interval_s`, the first always allowed: a flood of tokens
    with made-up `kid`s costs the key server one request per interval, not one per token. The
    background refresh does not count. Times are seconds on any monotonic clock.
    """

    __slots__ = ("_last", "min_interval_s")

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._last: float | None = None

    def try_pass(self, now: float) -> bool:
        """Whether a fetch may start at `now`; if so, it is counted from `now`."""
        last = self._last
        if last is not None and now - last < self.min_interval_s:
            return False
        self._last = now
        return True

    def retry_after(self, now: float) -> float:
        """Seconds from `now` until `try_pass` would pass (0: it would now)."""
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.min_interval_s - now)


class FetchError(Exception):
    """A fetch of the key set failed; the message says why (never a key)."""


class RemoteJwks:
    """The key set published at `url`: the last good one, refreshed off the request path.

    `start` launches the background refresh (the first fetch at once); `wait_first` awaits
    that first fetch; `refresh_for_unknown_kid` fetches again when a token names a `kid` the
    set lacks, at most once per `min_refresh_interval_s`, and joins a fetch already under way.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float,
        max_bytes: int,
        refresh_interval_s: float,
        min_refresh_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._refresh_interval_s = refresh_interval_s
        self._gate = RefreshGate(min_refresh_interval_s)
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        #: Why the last fetch failed (None: it succeeded, or none ended yet).
        self.last_error: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fetching: asyncio.Task[bool] | None = None
        self._first = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def keys(self) -> Keys:
        """The last good key set (empty until one was fetched)."""
        return self._keys

    @property
    def loaded(self) -> bool:
        """Whether a key set was ever fetched."""
        return bool(self._keys)

    @property
    def min_refresh_interval_s(self) -> float:
        """The least time between two fetches triggered by unknown kids."""
        return self._gate.min_interval_s

    def retry_after(self) -> float:
        """Seconds until a token with an unknown `kid` may trigger a fetch again."""
        return self._gate.retry_after(self._clock())

    async def start(self) -> None:
        """Starts the background refresh, its first fetch at once (not awaited)."""
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            headers={"accept": "application/json"},
        )
        self._loop_task = asyncio.create_task(self._refresh_forever(), name="viewbait-jwks")

    async def wait_first(self) -> bool:
        """Waits for the first fetch to end (it ends within the fetch timeout); whether a key
        set is loaded."""
        await self._first.wait()
        return self.loaded

    async def aclose(self) -> None:
        """Stops the background refresh and closes the HTTP session."""
        tasks = [t for t in (self._loop_task, self._fetching) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._loop_task = self._fetching = self._session = None

    async def refresh_for_unknown_kid(self) -> bool:
        """Fetches the key set again for a token whose `kid` it lacks: joins a fetch under
        way, else starts one if the gate lets it. Whether a fetch ended with a new set."""
        fetching = self._fetching
        if fetching is None:
            if not self._gate.try_pass(self._clock()):
                return False
            fetching = self._fetch_shared()
        # Shielded: a caller that gives up (its RPC cancelled) does not cancel the fetch that
        # others may be waiting on.
        return await asyncio.shield(fetching)

    async def refresh(self) -> bool:
        """Fetches the key set now (or joins the fetch under way); whether it succeeded."""
        fetching = self._fetching or self._fetch_shared()
        return await asyncio.shield(fetching)

    def _fetch_shared(self) -> asyncio.Task[bool]:
        task = self._fetching = asyncio.create_task(self._fetch_and_keep())
        task.add_done_callback(self._fetch_done)
        return task

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._fetching is task:
            self._fetching = None

    async def _refresh_forever(self) -> None:
        while True:
            try:
                ok = await self.refresh()
            finally:
                self._first.set()  # start-up never waits past the first attempt
            # After a failure, try again sooner (but no more often than unknown kids may).
            delay = self._refresh_interval_s
            if not ok:
                delay = min(delay, max(self._gate.min_interval_s, 1.0))
            await asyncio.sleep(delay)

    async def _fetch_and_keep(self) -> bool:
        """One fetch; the new set replaces the old only if it is good."""
        try:
            keys = parse_jwks(await self._fetch_document(), f"the JWKS at {self.url}")
        except Exception as exc:
            # Whatever went wrong, the refresher lives on and the last good set stays.
            known = isinstance(exc, FetchError | ValueError)
            self.last_error = str(exc) if known else f"{type(exc).__name__}: {exc}"
            log.error(
                "JWKS fetch failed; keeping the last good key set",
                extra={
                    "jwks_url": self.url,
                    "error": self.last_error,
                    "kids": sorted(self._keys),
                },
            )
            return False
        if set(keys) != set(self._keys):
            log.info(
                "JWKS key set loaded",
                extra={"jwks_url": self.url, "kids": sorted(keys), "before": sorted(self._keys)},
            )
        self._keys = keys
        self.last_error = None
        return True

    async def _fetch_document(self) -> object:
        session = self._session
        if session is None:
            raise FetchError("the JWKS fetcher is not started")
        import aiohttp

        try:
            # The session's total timeout bounds the whole exchange, a slow body included;
            # asyncio.timeout backs it should a step not honour it.
            async with asyncio.timeout(self._timeout_s + 1):
                async with session.get(self.url, allow_redirects=False) as response:
                    if response.status != 200:
                        raise FetchError(f"{self.url} answered HTTP {response.status}")
                    declared = response.content_length
                    if declared is not None and declared > self._max_bytes:
                        raise FetchError(self._too_big())
                    body = bytearray()
                    async for chunk in response.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise FetchError(self._too_big())
        except TimeoutError:
            raise FetchError(f"{self.url} did not answer within {self._timeout_s:g} s") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"cannot fetch {self.url}: {type(exc).__name__}: {exc}") from None
        try:
            return json.loads(body)
        except ValueError as exc:
            raise FetchError(f"the JWKS at {self.url} is not valid JSON: {exc}") from None

    def _too_big(self) -> str:
        return (
            f"the JWKS at {self.url} is larger than {self._max_bytes} bytes (auth.jwks_max_bytes)"
        )
