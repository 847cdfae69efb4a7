"""The store's one LISTEN connection, fanning job notifications out to waiters in process.

Every change a watcher should see sends `NOTIFY <channel>, '<id>:<seq>,...'` in the statement
that makes it (see `sql/queries.sql`), and a change that leaves an execution queued and due also
sends `NOTIFY <channel>, 'due'`. The listener publishes each to the `ChangeHub`, which wakes any
number of waiters. While it is down, waiters poll, so a lost listener only slows them down; it
reconnects by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import asyncpg

from gateway.config import StoreSettings
from gateway.store.changes import ChangeHub

log = logging.getLogger(__name__)


def channel_name(schema: str) -> str:
    """The NOTIFY channel of a schema's job changes (an identifier of at most 63 bytes)."""
    name = f"{schema}.jobs"
    if len(name.encode()) <= 63:
        return name
    return "viewbait_jobs_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


class Listener:
    """Holds a LISTEN connection on `channel` while started, reconnecting when it is lost."""

    def __init__(
        self, settings: StoreSettings, dsn: str, channel: str, hub: ChangeHub, call_timeout_s: float
    ) -> None:
        self._settings = settings
        self._dsn = dsn
        self._channel = channel
        self._hub = hub
        self._call_timeout_s = call_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._listening = False
        self._closed = False
        #: Notifications received (for metrics and tests).
        self.notifications_received = 0

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (waiters poll while it is not)."""
        return self._listening

    def start(self, name: str) -> None:
        """Starts listening in a task called `name` (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name=name)

    async def close(self) -> None:
        """Stops listening for good."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.notifications_received += 1
        # '<id>:<seq>' for each changed job, comma-separated, or `DUE`: either way the first
        # field of each item is its hub key.
        for item in str(payload).split(","):
            key, _, seq = item.partition(":")
            self._hub.publish(key, int(seq) if seq.isdigit() else None)

    async def _listen_forever(self) -> None:
        while not self._closed:
            try:
                await self._listen_once()
            except Exception as exc:
                # Whatever went wrong, waiters keep polling and the loop tries again.
                log.debug("store listener connection failed: %r", exc)
            self._hub.publish_all()
            await asyncio.sleep(self._settings.reconnect_interval_s)

    async def _listen_once(self) -> None:
        """Holds one LISTEN connection until it is lost."""
        settings = self._settings
        lost = asyncio.Event()
        async with asyncio.timeout(self._call_timeout_s):
            conn = await asyncpg.connect(self._dsn, timeout=settings.connect_timeout_s)
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            async with asyncio.timeout(self._call_timeout_s):
                await conn.add_listener(self._channel, self._on_notify)
            # Every change reaches the hub from now on: waiters stop polling.
            self._listening = self._hub.live = True
            # Changes made while nobody listened: every waiter re-reads once.
            self._hub.publish_all()
            while not lost.is_set():
                try:
                    async with asyncio.timeout(settings.poll_interval_s):
                        await lost.wait()
                except TimeoutError:
                    # A connection can die without a FIN (a dead host, a dropped NAT entry):
                    # ask it something to find out.
                    await conn.fetchval("SELECT 1", timeout=settings.command_timeout_s)
        finally:
            if self._listening and not self._closed:
                log.warning("store listener lost its connection; reconnecting")
            # Waiters poll again once woken (`_listen_forever` wakes them all).
            self._listening = self._hub.live = False
            conn.terminate()
