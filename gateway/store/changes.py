"""In-process fan-out of job change signals, and the one wait loop both stores use.

A store publishes a job id whenever that job changes (the in-memory store directly; the
PostgreSQL store from its single LISTEN connection). Any number of waiters in this process can
wait for changes of any job; each has its own `asyncio.Event`, so one notification costs one
`set()` per interested waiter and nothing for anyone else. While the hub is `live` (every
change reaches it) waiters do not poll: a replica holding a thousand idle WatchJob streams would
otherwise re-read a job for each of them every poll interval, for nothing.

Besides job ids, the hub carries one more signal, `DUE`: "a job may have become due", which
wakes the job workers of every replica sharing the store instead of waiting for their poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

from gateway.store.base import Job

#: The hub key (and NOTIFY payload) of "a job may have become due"; job ids are UUIDs, so it
#: cannot collide with one.
DUE = "due"


class ChangeHub:
    """Job id -> the events of the waiters interested in it (each with the change it has seen
    already, if it said: see `subscribe`)."""

    def __init__(self) -> None:
        self._waiters: dict[str, dict[asyncio.Event, int | None]] = {}
        #: Whether every change is published (the store's LISTEN connection is up). Whoever
        #: clears it calls `publish_all` right after, so waiters that sleep without polling
        #: re-read once and poll from then on.
        self.live = False

    @contextmanager
    def subscribe(
        self, job_id: str, event: asyncio.Event | None = None, *, after_seq: int | None = None
    ) -> Iterator[asyncio.Event]:
        """An event (`event`, or a new one) set on every change of `job_id` while the block
        runs; with `after_seq`, not for a change whose sequence number is known and at most
        that (one the waiter made or saw itself, say its own claim)."""
        event = asyncio.Event() if event is None else event
        self._waiters.setdefault(job_id, {})[event] = after_seq
        try:
            yield event
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.pop(event, None)
                if not waiters:
                    del self._waiters[job_id]

    def publish(self, job_id: str, seq: int | None = None) -> None:
        """Wakes every waiter of `job_id` (`seq`: the change's sequence number, when known)."""
        for event, seen in self._waiters.get(job_id, {}).items():
            if seq is None or seen is None or seq > seen:
                event.set()

    def publish_all(self) -> None:
        """Wakes every waiter (after notifications may have been missed, or at shutdown)."""
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    @property
    def waiting(self) -> int:
        """How many waiters are registered (for metrics and tests)."""
        return sum(len(w) for w in self._waiters.values())


async def wait_for_change(
    hub: ChangeHub,
    job_id: str,
    read: Callable[[], Awaitable[Job]],
    after_seq: int,
    timeout_s: float,
    poll_interval_s: float,
) -> Job:
    """Reads the job until its `event_seq` passes `after_seq`, it is terminal, or time is up.

    Subscribes before the first read, and clears the event before every read, so a change that
    lands between a read and the wait still wakes the waiter. While the hub is not `live`, the
    job is also re-read every `poll_interval_s`: the fallback for lost notifications.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout_s, 0.0)
    with hub.subscribe(job_id) as changed:
        while True:
            changed.clear()
            job = await read()
            remaining = deadline - loop.time()
            if job.event_seq > after_seq or not job.active or remaining <= 0:
                return job
            wait_s = remaining if hub.live else min(remaining, poll_interval_s)
            try:
                async with asyncio.timeout(wait_s):
                    await changed.wait()
            except TimeoutError:
                pass
