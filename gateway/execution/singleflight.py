"""In-process single-flight: one execution per key at a time, shared by every caller.

The first caller for a key (the leader) starts the work in a task of its own; callers arriving
while it runs (followers) wait for the same outcome. Then:

- every caller gets the work's result, or its exception (the leader's failure is everyone's);
- a caller that is cancelled (its RPC ended, its deadline passed) stops waiting, and the work
  goes on for the others, the leader included: the work does not belong to whoever started it;
- when the last caller stops waiting, the work is cancelled: nobody would use its result;
- nothing is cached: once the work finishes, the next caller for the key starts it again (the
  result cache is a separate layer);
- a caller may bound its wait (`wait_s`): when that time is up it stops waiting and the work is
  *kept*: it runs to its end even when nobody waits any more, because whoever gave up waiting
  was promised they could come back for it (a pending job handle).

The work runs in a task created by the leader, so it sees the leader's context variables.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import Cancelled

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class _Flight(Generic[T]):
    task: asyncio.Future[T]
    #: Callers currently awaiting the task.
    waiters: int = 0
    #: A caller stopped waiting at its `wait_s`: the work runs to its end regardless.
    kept: bool = False


class SingleFlight(Generic[T]):
    """Deduplicates concurrent work by key (see the module docstring)."""

    def __init__(self) -> None:
        self._flights: dict[bytes, _Flight[T]] = {}

    def __len__(self) -> int:
        """How many keys have work in flight."""
        return len(self._flights)

    def waiters(self, key: bytes) -> int:
        """How many callers await the work for `key` (0 when none runs)."""
        flight = self._flights.get(key)
        return 0 if flight is None else flight.waiters

    async def do(
        self,
        key: bytes,
        work: Callable[[], Awaitable[T]],
        *,
        wait_s: float | None = None,
        keep: bool = False,
    ) -> tuple[T, bool]:
        """The outcome of `work()` for `key`, run once however many callers ask at a time.

        Returns (result, joined): `joined` is True when this caller shared work another caller
        started. Raises what the work raised; `gateway.errors.Cancelled` if the work was
        cancelled from outside while this caller still waited. With `wait_s`, raises
        `TimeoutError` once this caller has waited that long, and the work is kept (see the
        module docstring). `keep` keeps the work from the start: its caller means to come back.
        """
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(functools.partial(self._landed, key, flight))
        flight.kept = flight.kept or keep

        flight.waiters += 1
        try:
            # `wait` never cancels what it waits for: only this caller stops waiting.
            done, _ = await asyncio.wait((flight.task,), timeout=wait_s)
        except asyncio.CancelledError:
            self._leave(key, flight)
            raise
        flight.waiters -= 1
        if not done:
            flight.kept = True
            raise TimeoutError(f"the shared work did not finish within {wait_s} s")
        if flight.task.cancelled():
            raise Cancelled("the shared work for this request was cancelled") from None
        return flight.task.result(), joined

    def cancel_all(self) -> list[asyncio.Future[T]]:
        """Cancels all work in flight, kept work included (at shutdown); returns the tasks so
        the caller can wait for them to wind down."""
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        return tasks

    def _leave(self, key: bytes, flight: _Flight[T]) -> None:
        flight.waiters -= 1
        if flight.waiters == 0 and not flight.kept and not flight.task.done():
            flight.task.cancel()
            # Forget it now: a caller arriving while it winds down starts afresh rather than
            # joining work that is being cancelled.
            self._forget(key, flight)

    def _landed(self, key: bytes, flight: _Flight[T], _task: object) -> None:
        self._forget(key, flight)
        if not flight.task.cancelled():
            # Retrieved here so an outcome nobody awaited any more is not logged as lost.
            flight.task.exception()

    def _forget(self, key: bytes, flight: _Flight[T]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
