"""How many replicas share the limits, counted live in Redis while it answers.

While Redis is unreachable, the `local` failure mode has each replica enforce its share of every
limit, so the fleet as a whole stays near the limit. That share needs the fleet's size, which a
static setting gets wrong as soon as the fleet scales. So every replica registers in one sorted
set while Redis answers: its id scored by Redis's own clock (`TIME`, so replica clocks do not
matter), entries older than `ttl_s` pruned by each heartbeat, the set itself expiring once no
replica beats. The count a heartbeat reads is kept; during an outage the last one known is used
(a replica that died meanwhile still counts: the fleet then admits a little less, never more).
The key has a hash tag of its own, so it is one slot in a Redis Cluster.
"""

from __future__ import annotations

import asyncio
import uuid

from redis.exceptions import RedisError

from gateway.limiter.checks import LimiterBackendError
from gateway.limiter.shared import RedisClient

#: Registers `ARGV[1]`, prunes members older than `ARGV[2]` ms by Redis TIME, returns the count.
HEARTBEAT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
"""


def replicas_key(prefix: str) -> str:
    """The sorted set of live replicas (its own hash tag: one Cluster slot)."""
    return f"{{{prefix}:fleet}}:replicas"


class ReplicaRegistry:
    """This replica's heartbeat in Redis and the fleet size it last read.

    `client` is the limiter's Redis (or Cluster) client; `ttl_s` how long a replica counts after
    its last heartbeat; `timeout_s` bounds every call.
    """

    def __init__(self, client: RedisClient, prefix: str, *, ttl_s: float, timeout_s: float) -> None:
        self._client = client
        self._key = replicas_key(prefix)
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._timeout_s = timeout_s
        self._script = client.register_script(HEARTBEAT_SCRIPT)
        #: This replica's member in the set.
        self.replica_id = uuid.uuid4().hex
        #: Replicas counted by the last heartbeat that got an answer (None: none did yet).
        self.live: int | None = None

    async def heartbeat(self) -> int:
        """Registers (again) and returns the live count; raises `LimiterBackendError` when Redis
        does not answer in time (the last count stays)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                count = await self._script(keys=[self._key], args=[self.replica_id, self._ttl_ms])
        except (RedisError, OSError, TimeoutError) as exc:
            raise LimiterBackendError(f"heartbeat not recorded: {type(exc).__name__}") from exc
        self.live = int(count)
        return self.live

    async def leave(self) -> None:
        """Removes this replica at shutdown (best effort: it ages out anyway)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.zrem(self._key, self.replica_id)
        except (RedisError, OSError, TimeoutError):
            pass
