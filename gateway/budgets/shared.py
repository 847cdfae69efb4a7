"""The shared budget backend: spend in Redis (standalone or Cluster), exact across replicas.

**One script.** `SCRIPT` does all three operations of the contract (`gateway.budgets.backend`):
reserve (every key checked, then all written or none), adjust (settlements and refunds, never
below zero) and read. Redis runs a script alone, so a reservation is atomic however many
replicas ask at once: two attempts can never both take the last dollar. Amounts are integer
nano-USD, printed with '%d' so Lua's doubles stay exact (every amount is below 2**53). Time is
not read at all: each write sets a relative expiry the caller computed from its period.

**Cluster.** A script may only touch keys of one slot. The key layout (`gateway.budgets.keys`)
puts a user's day and month budgets under one hash tag, so a user's reservation is one call;
a model's cap has its own tag and is reserved in a call of its own (the enforcement orders the
two steps and refunds the first when the second refuses). Reads and adjustments that span slots
are split by slot here and sent concurrently.

**Trouble.** Every call runs under the limiter's timeout of responsive loop time
(`gateway.limiter.lag`); a missed deadline, a connection error or a Redis error raises
`BudgetBackendError`, and the limiter's circuit breaker, shared with the limiter, hears of it,
so one view of Redis's health decides both (see `gateway.budgets.enforcement` for the failure
modes). A call that timed out may still have run in Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from gateway.budgets.backend import Answer, BudgetBackendError, Change, Hold
from gateway.limiter.breaker import CircuitBreaker
from gateway.limiter.lag import Expiry, LoopWatch, Mark, lag_aware_timeout
from gateway.limiter.shared import RedisClient

log = logging.getLogger("gateway.budgets")

#: KEYS: the budget keys, all of one slot. ARGV[1]: the operation, 'r' (reserve), 'a' (adjust)
#: or 'g' (read). ARGV[2]: its integers as one string: per key `amount limit ttl_ms` for a
#: reservation, `delta ttl_ms` for an adjustment. Returns one string of integers: for a
#: reservation 1 (allowed) or 0, then each key's spend; for a read each key's spend.
SCRIPT = """
local op = ARGV[1]
local n = {}
for v in string.gmatch(ARGV[2] or '', '%-?%d+') do n[#n + 1] = tonumber(v) end
local out = {}
local function fmt(v) return string.format('%d', v) end
if op == 'r' then
  local spent, ok = {}, true
  for i = 1, #KEYS do
    local s = tonumber(redis.call('GET', KEYS[i]) or '0')
    local amount, limit = n[3 * i - 2], n[3 * i - 1]
    spent[i] = s
    if s >= limit or s + amount > limit then ok = false end
  end
  out[1] = ok and '1' or '0'
  for i = 1, #KEYS do
    local s, amount = spent[i], n[3 * i - 2]
    if ok and amount > 0 then
      s = s + amount
      redis.call('SET', KEYS[i], fmt(s), 'PX', fmt(n[3 * i]))
    end
    out[#out + 1] = fmt(s)
  end
elseif op == 'a' then
  for i = 1, #KEYS do
    local delta, ttl = n[2 * i - 1], n[2 * i]
    local current = redis.call('GET', KEYS[i])
    if current or delta > 0 then
      local s = math.max(0, tonumber(current or '0') + delta)
      redis.call('SET', KEYS[i], fmt(s), 'PX', fmt(ttl))
    end
  end
  out[1] = '1'
else
  for i = 1, #KEYS do out[i] = redis.call('GET', KEYS[i]) or '0' end
end
return table.concat(out, ' ')
"""

T = TypeVar("T")


class RedisBudgetBackend:
    """Budget spend in Redis with one script (module docstring). `breaker` is the limiter's
    circuit breaker (it hears of every call's outcome); `timeout_s` bounds each call."""

    def __init__(
        self,
        client: RedisClient,
        *,
        timeout_s: float,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._timeout_s = timeout_s
        self._breaker = breaker
        self._script = client.register_script(SCRIPT)
        self._watch = LoopWatch()
        #: Script calls sent (for benchmarks and tests).
        self.redis_calls = 0

    async def reserve(self, holds: Sequence[Hold]) -> Answer:
        """See `gateway.budgets.backend.BudgetBackend.reserve`; the keys share one slot."""
        spec = " ".join(f"{h.amount} {h.limit} {h.ttl_ms}" for h in holds)
        reply = await self._guarded(lambda: self._run("r", [h.key for h in holds], spec))
        return Answer(reply[0] == 1, tuple(reply[1:]))

    async def adjust(self, changes: Sequence[Change]) -> None:
        """See `gateway.budgets.backend.BudgetBackend.adjust`."""
        groups = self._by_slot([c.key for c in changes])

        async def one(indexes: list[int]) -> list[int]:
            part = [changes[i] for i in indexes]
            spec = " ".join(f"{c.delta} {c.ttl_ms}" for c in part)
            return await self._run("a", [c.key for c in part], spec)

        await self._guarded(lambda: asyncio.gather(*(one(g) for g in groups)))

    async def read(self, keys: Sequence[str]) -> list[int]:
        """See `gateway.budgets.backend.BudgetBackend.read`."""
        groups = self._by_slot(keys)

        async def run() -> list[list[int]]:
            return await asyncio.gather(
                *(self._run("g", [keys[i] for i in group], "") for group in groups)
            )

        replies = await self._guarded(run)
        spent = [0] * len(keys)
        for group, reply in zip(groups, replies, strict=True):
            for i, value in zip(group, reply, strict=True):
                spent[i] = value
        return spent

    def _by_slot(self, keys: Sequence[str]) -> list[list[int]]:
        """Indexes of `keys` grouped by Cluster slot (one group on a standalone server)."""
        if not self._cluster:
            return [list(range(len(keys)))] if keys else []
        groups: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key_slot(key.encode()), []).append(index)
        return list(groups.values())

    async def _run(self, op: str, keys: list[str], spec: str) -> list[int]:
        self.redis_calls += 1
        if self._cluster:
            # The slot map must be known before concurrent commands go out (see the limiter).
            assert isinstance(self._client, RedisCluster)
            await self._client.initialize()
        reply = await self._script(keys=keys, args=[op, spec])
        return [int(v) for v in reply.split()]

    async def _guarded(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` within the timeout; the breaker hears of the outcome."""
        loop = asyncio.get_running_loop()
        mark = Mark(loop.time(), self._watch.stalled(loop.time()))
        expiry = Expiry()
        try:
            async with lag_aware_timeout(self._watch, mark, self._timeout_s, expiry):
                result = await call()
        except Exception as exc:
            stalled_out = expiry.fired and not expiry.responsive
            if self._breaker is not None and not stalled_out:
                self._breaker.record_failure()
            if not isinstance(exc, RedisError | OSError | TimeoutError):
                log.warning("budgets: unexpected error from the Redis client", exc_info=True)
            raise BudgetBackendError(f"Redis did not answer: {type(exc).__name__}") from exc
        if self._breaker is not None:
            self._breaker.record_success()
        return result


__all__ = ["SCRIPT", "RedisBudgetBackend"]
