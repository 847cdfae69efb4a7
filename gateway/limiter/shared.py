"""The shared limiter: GCRA state in Redis (standalone or Cluster), exact across replicas.

**One script per decision.** `SCRIPT` evaluates every limit a request needs and writes only when
all of them allow it, so a denied request consumes from none; it is atomic because Redis runs a
script alone. Time is Redis's own `TIME` in integer microseconds (an explicit `now` replaces it in
tests), so replica clocks do not matter and nothing drifts through floats. Keys get a TTL equal to
their remaining reset time, so idle keys vanish exactly when they stop carrying information. The
script is sent by SHA (EVALSHA) and loaded again whenever Redis answers NOSCRIPT (restart,
failover, SCRIPT FLUSH).

**Batching.** The Python client, not Redis, is the bottleneck, so decisions that arrive together
share one round trip: a decision made while another call is in flight waits (at most until its
own deadline) and joins the next batch, which is one script call evaluating its requests one
after the other. Each request is still all-or-nothing on its own limits; the batch as a whole is
simply also atomic. A decision with nothing in flight goes out at once, without any queueing.

**Cluster.** A script may only touch keys of one slot, so the key layout (`gateway.limiter.keys`)
puts every key a single decision needs under one hash tag: admission keys under the user's tag,
upstream keys (the user's and the model's fleet-wide one) under the model's tag. In Cluster mode
a batch is split by slot into one script call per slot, sent concurrently; every request stays
within its own slot, so atomicity per request holds exactly as on a single server.

**Local mirror (the exact deny cache).** A TAT never moves backwards. Every answer tells this
replica a lower bound of each key's TAT (the reset-after, counted from when the call was sent,
which is no later than when Redis decided); the native limiter holds those bounds and `peek_all`
answers a request that they already deny without asking Redis. It can only deny what Redis would
deny too, so it is exact, and an abusive flood on one key costs about one Redis call per
retry-after window instead of one per request.

**Timeouts.** Every call runs under a deadline of `timeout_s` of *responsive* loop time from
when its oldest request arrived (`gateway.limiter.lag`): time the event loop spent unable to run
(a burst, a blocking call) is not charged to Redis, since a reply that arrived meanwhile is read
as soon as the loop runs. A missed deadline, a connection error or a Redis error raises
`LimiterBackendError` (the caller applies the failure mode); the circuit breaker hears only of
true failures: errors, and deadlines that passed while the loop was responsive.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway import native
from gateway.limiter.breaker import CircuitBreaker
from gateway.limiter.checks import Check, Decision, LimiterBackendError, Verdict
from gateway.limiter.lag import Expiry, LoopWatch, Mark, lag_aware_timeout, within
from gateway.limiter.local import decision_of
from gateway.limiter.pipe import RedisPipe, checked, open_pipe, pack

log = logging.getLogger("gateway.limiter")

#: GCRA over a batch of requests. KEYS: every key of every request, in order. ARGV[1]: now in
#: microseconds ('-': Redis TIME); ARGV[2]: extra TTL in ms; ARGV[3]: the requests as one string
#: of integers, per request: cost, number of limits n, then n pairs (emission in us, burst).
#: Returns one string of integers, per request: 1 (allowed) or 0, then per limit: remaining,
#: retry-after in us (-1: this limit allows), reset-after in us. One argument and one string each
#: way, because packing and parsing many small values is the Python client's main cost.
#: Lua numbers are doubles: every value stays an integer below 2**53 (see MAX_LIMIT_SPAN_US),
#: and '%d' prints them exactly where tostring would round to 14 digits.
SCRIPT = """
local now
if ARGV[1] == '-' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local slack = tonumber(ARGV[2])
local spec = {}
for v in string.gmatch(ARGV[3], '%d+') do spec[#spec + 1] = tonumber(v) end
local out = {}
local function put(v) out[#out + 1] = string.format('%d', v) end
local function remaining(room, em)
  local q = math.floor(room / em)
  if q * em > room then q = q - 1 end
  return q
end
local a, k = 1, 1
local tats, ems, bursts = {}, {}, {}
while a <= #spec do
  local cost, n = spec[a], spec[a + 1]
  a = a + 2
  local ok = true
  for i = 1, n do
    local em, burst = spec[a], spec[a + 1]
    a = a + 2
    local tat = tonumber(redis.call('GET', KEYS[k + i - 1]))
    if tat == nil or tat < now then tat = now end
    tats[i], ems[i], bursts[i] = tat, em, burst
    if tat + em * cost - em * burst > now then ok = false end
  end
  put(ok and 1 or 0)
  for i = 1, n do
    local tat, em, burst = tats[i], ems[i], bursts[i]
    local new_tat = tat + em * cost
    local allow_at = new_tat - em * burst
    if ok then
      if cost > 0 then
        redis.call('SET', KEYS[k + i - 1], string.format('%d', new_tat),
                   'PX', string.format('%d', math.ceil((new_tat - now) / 1000) + slack))
      end
      put(remaining(now - allow_at, em))
      put(-1)
      put(new_tat - now)
    elseif allow_at <= now then
      put(remaining(now - (tat - em * burst), em))
      put(-1)
      put(tat - now)
    else
      put(0)
      put(allow_at - now)
      put(tat - now)
    end
  end
  k = k + n
end
return table.concat(out, ' ')
"""
SCRIPT_SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()

#: With an explicit `now` (tests), the caller's clock is not Redis's, so keys outlive their reset
#: by this many milliseconds rather than vanish early by Redis's clock.
_EXPLICIT_NOW_TTL_SLACK_MS = 60_000

RedisClient = Redis | RedisCluster

#: Packed single-request calls remembered (`RedisBackend._single`), up to this many; then all
#: are forgotten and packed again as requests come.
KNOWN_SINGLES = 4096


@dataclass(slots=True)
class _Pending:
    """A request waiting for the next batch."""

    checks: Sequence[Check]
    cost: int
    #: When it arrived (its deadline counts from here).
    mark: Mark
    future: asyncio.Future[Verdict] = field(repr=False)


class RedisBackend:
    """Decides on Redis with one script call per batch of concurrent requests.

    `clock` (integer nanoseconds) replaces Redis `TIME` and the mirror's monotonic clock in tests;
    `breaker` hears about every call's outcome.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        timeout_s: float,
        breaker: CircuitBreaker | None = None,
        clock: Callable[[], int] | None = None,
        max_batch: int = 256,
        max_inflight: int = 2,
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._timeout_s = timeout_s
        self._breaker = breaker
        self._explicit_clock = clock
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._mirror = native.GcraLimiter()
        self._watch = LoopWatch()
        self._pending: list[_Pending] = []
        self._inflight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: The pool of a single server's client (None: Cluster): its settings open the pipe
        #: that script calls are sent over (`gateway.limiter.pipe`), opened when first needed.
        self._pool = None if isinstance(client, RedisCluster) else client.connection_pool
        self._pipe: RedisPipe | None = None
        self._connecting: asyncio.Task[RedisPipe] | None = None
        self._singles: dict[tuple[tuple[Check, ...], int], bytes] = {}
        self._closed = False
        #: Script calls sent to Redis (NOSCRIPT retries included).
        self.redis_calls = 0
        #: Requests the local mirror denied without asking Redis.
        self.local_denials = 0

    @property
    def client(self) -> RedisClient:
        """The Redis client decisions go through."""
        return self._client

    # --- deciding -------------------------------------------------------------------------

    async def decide(self, checks: Sequence[Check], cost: int = 1) -> Verdict:
        """Decides one request of `cost` against every check at once; a denial consumes from
        none. Raises `LimiterBackendError` if Redis does not answer within the timeout."""
        if cost < 0:
            raise ValueError("cost must be 0 or more")
        if not checks:
            return Verdict(True, (), ())
        if self._closed:
            raise LimiterBackendError("the shared limiter is closed")
        now = self._now_ns()
        items = [c.native for c in checks]
        peeked = self._mirror.peek_all(items, cost, now)
        if not all([d.allowed for d in peeked]):
            self.local_denials += 1
            # Limits that would allow report what they hold, as Redis does for a denied request.
            reads = self._mirror.peek_all(items, 0, now)
            decisions = [
                decision_of(p if not p.allowed else r) for p, r in zip(peeked, reads, strict=True)
            ]
            return Verdict(False, tuple(checks), tuple(decisions))
        loop = asyncio.get_running_loop()
        watch = self._watch
        # Watched from arrival: a stall while it waits for a batch is not Redis's either.
        arrived = watch.hold()
        try:
            mark = Mark(arrived, watch.stalled(arrived))
            if self._inflight == 0 and not self._pending:
                # Nobody to share a round trip with: go at once, no queueing.
                self._inflight += 1
                try:
                    (verdict,) = await self._call([(checks, cost)], mark, now)
                finally:
                    self._inflight -= 1
                    self._after_call()
                return verdict
            pending = _Pending(checks, cost, mark, loop.create_future())
            self._pending.append(pending)
            self._schedule_flush()
            return await pending.future
        finally:
            watch.release()

    def _now_ns(self) -> int:
        if self._explicit_clock is None:
            return native.monotonic_ns()
        # Whole microseconds, as Redis gets them, so the mirror's bounds are exact.
        return self._explicit_clock() // 1000 * 1000

    def _schedule_flush(self) -> None:
        # Flushing on the next loop iteration lets every request arriving in this one (e.g. all
        # the callers a finished batch just woke) join the same batch.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _after_call(self) -> None:
        if self._pending:
            self._schedule_flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._pending and self._inflight < self._max_inflight:
            batch = [p for p in self._pending[: self._max_batch] if not p.future.done()]
            del self._pending[: self._max_batch]
            if batch:
                self._inflight += 1
                task = asyncio.get_running_loop().create_task(self._run_batch(batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        try:
            oldest = min((p.mark for p in batch), key=lambda m: m.at)
            verdicts = await self._call([(p.checks, p.cost) for p in batch], oldest)
        except BaseException as exc:
            # Whatever happened, no caller may be left waiting.
            message = str(exc) if isinstance(exc, LimiterBackendError) else "limiter closed"
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(LimiterBackendError(message))
            if not isinstance(exc, LimiterBackendError):
                raise
        else:
            for p, verdict in zip(batch, verdicts, strict=True):
                if not p.future.done():
                    p.future.set_result(verdict)
        finally:
            self._inflight -= 1
            self._after_call()

    async def _call(
        self,
        requests: Sequence[tuple[Sequence[Check], int]],
        mark: Mark,
        sent_at: int | None = None,
    ) -> list[Verdict]:
        """One round trip (one per slot in Cluster mode) deciding `requests` in order, within
        `timeout_s` of responsive loop time from `mark`.

        `sent_at` (this replica's clock, no later than the call) dates the mirror's bounds."""
        if sent_at is None:
            sent_at = self._now_ns()
        now_arg = "-" if self._explicit_clock is None else str(sent_at // 1000)
        expiry = Expiry()
        try:
            if self._cluster:
                async with lag_aware_timeout(self._watch, mark, self._timeout_s, expiry):
                    reply = await self._call_by_slot(requests, now_arg)
            else:
                reply = await self._eval_piped(requests, now_arg, mark, expiry)
            verdicts = self._verdicts(requests, reply, sent_at)
        except Exception as exc:
            # A deadline the loop's own stalls ran out says nothing about Redis: the failure
            # mode decides these requests, but the breaker does not count it.
            stalled_out = expiry.fired and not expiry.responsive
            if self._breaker is not None and not stalled_out:
                self._breaker.record_failure()
            if not isinstance(exc, RedisError | OSError | TimeoutError):
                # A client bug or a malformed reply: the failure mode answers, loudly.
                log.warning("rate limiter: unexpected error from the Redis client", exc_info=True)
            timed_out = isinstance(exc, TimeoutError | RedisTimeoutError)
            reason = "timed out" if timed_out else type(exc).__name__
            if stalled_out:
                reason = "the event loop stalled past the grace"
            # Once per call, not per request: the failure mode decides this call's requests.
            log.info("rate limiter: Redis did not decide %d requests: %s", len(requests), reason)
            raise LimiterBackendError(f"Redis did not decide: {reason}") from exc
        if self._breaker is not None:
            self._breaker.record_success()
        return verdicts

    async def _call_by_slot(
        self, requests: Sequence[tuple[Sequence[Check], int]], now_arg: str
    ) -> list[int]:
        # The slot map must be known before concurrent commands go out: redis-py's cluster client
        # can trip over itself when several commands race its lazy initialization.
        assert isinstance(self._client, RedisCluster)
        await self._client.initialize()
        by_slot: dict[int, list[int]] = {}
        for index, (checks, _) in enumerate(requests):
            by_slot.setdefault(key_slot(checks[0].key.encode()), []).append(index)
        groups = list(by_slot.values())
        replies = await asyncio.gather(
            *(self._eval([requests[i] for i in group], now_arg) for group in groups)
        )
        # Reassemble the per-request answers in the callers' order.
        parts: list[list[int]] = [[] for _ in requests]
        for group, reply in zip(groups, replies, strict=True):
            pos = 0
            for i in group:
                width = 1 + 3 * len(requests[i][0])
                parts[i] = reply[pos : pos + width]
                pos += width
        return [value for part in parts for value in part]

    def _args(
        self, requests: Sequence[tuple[Sequence[Check], int]], now_arg: str
    ) -> tuple[int, list[str | int]]:
        """The script's number of keys and its arguments (keys first) for `requests`."""
        keys: list[str] = []
        spec: list[str] = []
        for checks, cost in requests:
            spec.append(f"{cost} {len(checks)}")
            for check in checks:
                keys.append(check.key)
                spec.append(check.rule.spec)
        slack = 0 if self._explicit_clock is None else _EXPLICIT_NOW_TTL_SLACK_MS
        return len(keys), [*keys, now_arg, slack, " ".join(spec)]

    async def _eval(
        self, requests: Sequence[tuple[Sequence[Check], int]], now_arg: str
    ) -> list[int]:
        """The script's answer to `requests` through the Cluster client (it routes by slot)."""
        numkeys, args = self._args(requests, now_arg)
        self.redis_calls += 1
        try:
            reply = await self._client.evalsha(SCRIPT_SHA, numkeys, *args)
        except NoScriptError:
            await self._client.script_load(SCRIPT)
            self.redis_calls += 1
            reply = await self._client.evalsha(SCRIPT_SHA, numkeys, *args)
        return list(map(int, reply.split()))

    async def _eval_piped(
        self,
        requests: Sequence[tuple[Sequence[Check], int]],
        now_arg: str,
        mark: Mark,
        expiry: Expiry,
    ) -> list[int]:
        """The script's answer to `requests` over the pipe (a single server), within the
        deadline of `mark`."""
        if len(requests) == 1 and now_arg == "-":
            command = self._single(requests[0])
        else:
            numkeys, args = self._args(requests, now_arg)
            command = pack("EVALSHA", SCRIPT_SHA, numkeys, *args)
        self.redis_calls += 1
        try:
            reply = checked(await self._send(command, mark, expiry))
        except NoScriptError:
            checked(await self._send(pack("SCRIPT", "LOAD", SCRIPT), mark, expiry))
            self.redis_calls += 1
            reply = checked(await self._send(command, mark, expiry))
        return list(map(int, reply.split()))

    def _single(self, request: tuple[Sequence[Check], int]) -> bytes:
        """The packed call deciding `request` alone on Redis's clock (how a request goes when
        nothing is in flight), remembered per (checks, cost): the same user on the same route
        sends the same bytes every time."""
        checks, cost = request
        known = (tuple(checks), cost)
        command = self._singles.get(known)
        if command is None:
            numkeys, args = self._args((request,), "-")
            command = pack("EVALSHA", SCRIPT_SHA, numkeys, *args)
            if len(self._singles) >= KNOWN_SINGLES:
                self._singles.clear()
            self._singles[known] = command
        return command

    async def _send(self, command: bytes, mark: Mark, expiry: Expiry) -> Any:
        """One call over the pipe (opened first if it is not), within the deadline of `mark`.
        A deadline that passed while the loop was responsive closes the pipe (the next call
        opens another): Redis is not answering on it."""
        pipe = self._pipe
        if pipe is None or not pipe.usable:
            pipe = await self._connected(mark, expiry)
        try:
            return await within(self._watch, pipe.call(command), mark, self._timeout_s, expiry)
        except TimeoutError:
            if expiry.responsive:
                pipe.close()
            raise

    async def _connected(self, mark: Mark, expiry: Expiry) -> RedisPipe:
        """The pipe, once open: one opening at a time, shared by whoever waits for it."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
            # Retrieved here, so that an opening nobody waits for any more logs nothing.
            self._connecting.add_done_callback(lambda t: t.cancelled() or t.exception())
        opening = self._connecting
        async with lag_aware_timeout(self._watch, mark, self._timeout_s, expiry):
            return await asyncio.shield(opening)

    async def _open(self) -> RedisPipe:
        assert self._pool is not None
        try:
            pipe = await open_pipe(self._pool)
            if self._closed:
                pipe.close()
                raise LimiterBackendError("the shared limiter is closed")
            self._pipe = pipe
            return pipe
        finally:
            self._connecting = None

    def _verdicts(
        self, requests: Sequence[tuple[Sequence[Check], int]], reply: list[int], sent_at: int
    ) -> list[Verdict]:
        verdicts: list[Verdict] = []
        raise_tat = self._mirror.raise_tat
        pos = 0
        for checks, _ in requests:
            allowed = reply[pos] == 1
            pos += 1
            decisions: list[Decision] = []
            for check in checks:
                remaining, retry_after, reset_after = reply[pos], reply[pos + 1], reply[pos + 2]
                pos += 3
                decisions.append(Decision(retry_after < 0, remaining, retry_after, reset_after))
                # The key's TAT, as a lower bound on this replica's clock.
                raise_tat(check.key, sent_at + reset_after * 1000, sent_at)
            verdicts.append(Verdict(allowed, tuple(checks), tuple(decisions)))
        return verdicts

    # --- health ---------------------------------------------------------------------------

    async def ping(self) -> None:
        """One PING within the timeout (of responsive loop time, like decisions, so a stalled
        loop does not pass for an outage); raises `LimiterBackendError` if Redis does not
        answer."""
        loop = asyncio.get_running_loop()
        mark = Mark(loop.time(), self._watch.stalled(loop.time()))
        try:
            async with lag_aware_timeout(self._watch, mark, self._timeout_s, Expiry()):
                await self._client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterBackendError(f"Redis did not answer PING: {type(exc).__name__}") from exc

    async def load_script(self) -> None:
        """Loads the script (on every primary in Cluster mode) within the timeout, so the first
        decisions need no NOSCRIPT round trip, and opens the connections concurrent calls use,
        so that no decision waits for a connection to open; raises `LimiterBackendError` on
        failure."""
        try:
            async with asyncio.timeout(self._timeout_s):
                if self._pool is None:
                    warm = (self._client.ping() for _ in range(self._max_inflight - 1))
                    await asyncio.gather(self._client.script_load(SCRIPT), *warm)
                else:
                    await self._client.script_load(SCRIPT)
                    if self._pipe is None or not self._pipe.usable:
                        loop = asyncio.get_running_loop()
                        mark = Mark(loop.time(), self._watch.stalled(loop.time()))
                        await self._connected(mark, Expiry())
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterBackendError(
                f"Redis did not load the script: {type(exc).__name__}"
            ) from exc

    async def aclose(self) -> None:
        """Fails waiting requests, stops in-flight batches and closes the connections."""
        self._closed = True
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(LimiterBackendError("the shared limiter is closed"))
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connecting is not None:
            self._connecting.cancel()
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        await self._client.aclose()
