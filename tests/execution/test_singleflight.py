"""In-process single-flight: one run per key, shared outcomes, and who may cancel the work."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Cancelled, UpstreamUnavailable
from gateway.execution import SingleFlight

KEY = b"k" * 32


class Work:
    """Work that runs until released, recording how often it ran and how it ended."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.release = asyncio.Event()
        self.runs = 0
        self.cancelled = 0
        self.fail = fail

    async def __call__(self) -> str:
        self.runs += 1
        run = self.runs
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        return f"result {run}"


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_concurrent_callers_share_one_run() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    callers = [asyncio.create_task(flights.do(KEY, work)) for _ in range(50)]
    await settle()
    assert flights.waiters(KEY) == 50
    work.release.set()
    outcomes = await asyncio.gather(*callers)
    assert work.runs == 1
    assert {result for result, _ in outcomes} == {"result 1"}
    assert sorted(joined for _, joined in outcomes) == [False] + [True] * 49
    assert len(flights) == 0


async def test_the_leaders_failure_reaches_every_follower() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work(fail=UpstreamUnavailable("Gemini is overloaded"))
    callers = [asyncio.create_task(flights.do(KEY, work)) for _ in range(5)]
    await settle()
    work.release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert work.runs == 1
    assert all(isinstance(o, UpstreamUnavailable) for o in outcomes)
    assert {str(o) for o in outcomes} == {"Gemini is overloaded"}


async def test_a_cancelled_leader_does_not_cancel_work_followers_wait_for() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    leader = asyncio.create_task(flights.do(KEY, work))
    await settle()
    followers = [asyncio.create_task(flights.do(KEY, work)) for _ in range(3)]
    await settle()
    leader.cancel()
    await settle()
    assert leader.cancelled() and work.cancelled == 0
    work.release.set()
    assert [r for r, _ in await asyncio.gather(*followers)] == ["result 1"] * 3
    assert work.runs == 1


async def test_a_follower_with_a_deadline_gives_up_alone() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()

    async def impatient() -> tuple[str, bool]:
        async with asyncio.timeout(0.01):
            return await flights.do(KEY, work)

    leader = asyncio.create_task(flights.do(KEY, work))
    await settle()
    with pytest.raises(TimeoutError):
        await impatient()
    assert flights.waiters(KEY) == 1
    work.release.set()
    assert await leader == ("result 1", False)


async def test_work_nobody_waits_for_is_cancelled_and_the_next_caller_starts_afresh() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    callers = [asyncio.create_task(flights.do(KEY, work)) for _ in range(3)]
    await settle()
    for caller in callers:
        caller.cancel()
    await settle()
    assert work.cancelled == 1 and len(flights) == 0
    again = asyncio.create_task(flights.do(KEY, work))
    await settle()
    work.release.set()
    assert await again == ("result 2", False)


async def test_a_caller_arriving_while_abandoned_work_winds_down_starts_afresh() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    leader = asyncio.create_task(flights.do(KEY, work))
    await settle()
    leader.cancel()
    await asyncio.sleep(0)  # the leader leaves; the work has not yet seen its cancellation
    assert work.cancelled == 0 and len(flights) == 0
    replacement = asyncio.create_task(flights.do(KEY, work))
    await settle()
    work.release.set()
    assert await replacement == ("result 2", False)
    assert work.cancelled == 1


async def test_work_cancelled_from_outside_fails_its_callers_cleanly() -> None:
    flights: SingleFlight[str] = SingleFlight()

    async def shut_down() -> str:
        raise asyncio.CancelledError

    with pytest.raises(Cancelled):
        await flights.do(KEY, shut_down)


async def test_a_caller_whose_wait_ends_keeps_the_work_running_for_its_return() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    with pytest.raises(TimeoutError):
        await flights.do(KEY, work, wait_s=0.01)
    await settle()
    assert work.cancelled == 0 and flights.waiters(KEY) == 0  # nobody waits, it still runs
    returning = asyncio.create_task(flights.do(KEY, work))
    await settle()
    returning.cancel()  # even the last waiter leaving does not cancel kept work
    await settle()
    assert work.cancelled == 0
    work.release.set()
    await settle()
    assert work.runs == 1 and len(flights) == 0


async def test_work_kept_from_the_start_outlives_its_cancelled_caller() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    caller = asyncio.create_task(flights.do(KEY, work, keep=True))
    await settle()
    caller.cancel()
    await settle()
    assert work.cancelled == 0
    retry = asyncio.create_task(flights.do(KEY, work))
    await settle()
    work.release.set()
    assert await retry == ("result 1", True)
    assert work.runs == 1


async def test_cancel_all_stops_kept_work_too() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    caller = asyncio.create_task(flights.do(KEY, work, keep=True))
    await settle()
    await asyncio.gather(*flights.cancel_all(), return_exceptions=True)
    assert work.cancelled == 1
    with pytest.raises(Cancelled):
        await caller


async def test_nothing_is_cached_and_keys_are_independent() -> None:
    flights: SingleFlight[str] = SingleFlight()
    work = Work()
    work.release.set()
    assert await flights.do(KEY, work) == ("result 1", False)
    assert await flights.do(KEY, work) == ("result 2", False)
    other = Work()
    pending = asyncio.create_task(flights.do(b"other", other))
    await settle()
    assert await flights.do(KEY, work) == ("result 3", False)
    other.release.set()
    assert await pending == ("result 1", False)


# -- random interleavings --------------------------------------------------------------------

Action = Any
actions = st.lists(
    st.one_of(
        st.just("join"),
        st.just("finish"),
        st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=11)),
    ),
    max_size=24,
)


@settings(max_examples=300, deadline=None)
@given(schedule=actions, fail=st.booleans())
def test_any_interleaving_of_joins_cancels_and_completion(
    schedule: list[Action], fail: bool
) -> None:
    """Against a model: which joins start a run, what each caller gets, which runs are
    cancelled, and that no outcome is ever reported as lost."""
    asyncio.run(_interleaving(schedule, fail))


async def _interleaving(schedule: list[Action], fail: bool) -> None:
    loop = asyncio.get_running_loop()
    lost: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: lost.append(context))
    flights: SingleFlight[int] = SingleFlight()
    releases: list[asyncio.Event] = []
    cancelled_runs: set[int] = set()

    async def work() -> int:
        run = len(releases)
        releases.append(asyncio.Event())
        try:
            await releases[run].wait()
        except asyncio.CancelledError:
            cancelled_runs.add(run)
            raise
        if fail:
            raise UpstreamUnavailable(f"run {run} failed")
        return run

    callers: list[asyncio.Task[tuple[int, bool]]] = []
    # The model: each caller's run, which callers were cancelled before their run ended.
    caller_run: list[int] = []
    cancelled_callers: set[int] = set()
    live: int | None = None  # the run new callers join
    runs = 0
    finished_runs: set[int] = set()
    abandoned_runs: set[int] = set()

    for action in schedule:
        if action == "join":
            if live is None:
                live, runs = runs, runs + 1
            caller_run.append(live)
            callers.append(asyncio.create_task(flights.do(KEY, work)))
        elif action == "finish":
            if live is not None:
                releases[live].set()
                finished_runs.add(live)
                live = None
        else:
            index = action[1]
            if index < len(callers) and index not in cancelled_callers:
                run = caller_run[index]
                if run not in finished_runs and run not in abandoned_runs:
                    cancelled_callers.add(index)
                    callers[index].cancel()
                    waiting = [
                        i
                        for i, r in enumerate(caller_run)
                        if r == run and i not in cancelled_callers
                    ]
                    if not waiting:
                        abandoned_runs.add(run)
                        live = None if live == run else live
        await settle()

    for event in releases:
        event.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)

    assert len(releases) == runs
    assert cancelled_runs == abandoned_runs
    for index, outcome in enumerate(outcomes):
        run = caller_run[index]
        if index in cancelled_callers:
            assert isinstance(outcome, asyncio.CancelledError)
        elif fail:
            assert isinstance(outcome, UpstreamUnavailable) and str(outcome) == f"run {run} failed"
        else:
            first = caller_run.index(run) == index
            assert outcome == (run, not first)
    assert len(flights) == 0
    assert lost == []
