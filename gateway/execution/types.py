"""The request path's value types: what a request is to the executor (`Call`), what it answers
(`Outcome`, `Pending`), what it cost (`Spend`), and the hooks a run and a job worker hand in
(`Runner`, `InputWrite`, `BlobQuota`, `Retry`, `RetryPolicy`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway.config import Scope
from gateway.model import Usage, UsageRecord
from gateway.operations.base import OperationSpec
from gateway.store.base import Claim, Delivery, Job, JobProgress, JobStatus

ResultT = TypeVar("ResultT")
ViewT = TypeVar("ViewT")


@dataclass(slots=True)
class Spend:
    """Usage and cost summed over every upstream attempt behind one answer: failed, retried
    and unparseable attempts included, since each is paid for (`upstream_calls` counts them)."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    upstream_calls: int = 0

    def add(self, attempt: UsageRecord) -> None:
        """Adds one upstream attempt, whatever its outcome."""
        self.usage = self.usage + attempt.usage
        self.cost_usd += attempt.cost_usd
        self.upstream_calls += 1


@dataclass(frozen=True, slots=True)
class Outcome(Generic[ResultT]):
    """A finished operation and how it was produced.

    `spend` is what this answer cost: zero for a cache hit and for a caller that shared work
    someone else paid for (`coalesced`). `saved_usd` is what such an answer did not pay: the
    cost of the upstream work that produced the result it took (0 for a fresh run).
    """

    result: ResultT
    model: str
    spend: Spend
    cached: bool = False
    coalesced: bool = False
    saved_usd: float = 0.0
    #: Renderings of a result from the hot copy, shared by every hit on its entry (`view`).
    views: dict[Any, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def result_cost_usd(self) -> float:
        """What the upstream work behind the result cost, whoever paid for it."""
        return self.spend.cost_usd + self.saved_usd

    def view(self, render: Callable[[ResultT], ViewT]) -> ViewT:
        """`render(result)`, e.g. the result's protobuf message. For a result from the hot copy
        it is computed once per cache entry and shared by every hit, so it must not be mutated.
        """
        if self.views is None:
            return render(self.result)
        rendered: ViewT | None = self.views.get(render)
        if rendered is None:
            rendered = self.views[render] = render(self.result)
        return rendered


@dataclass(frozen=True, slots=True)
class Pending:
    """A unary answer that did not finish within the long-poll window: the caller's own job
    (or handle), still active; the work goes on."""

    job_id: str
    status: JobStatus
    progress: JobProgress | None = None


#: Runs the operation once: (the claim of the execution it runs for, None outside a job: the
#: usage labels name its job and fencing token; deadline; the `Spend` every upstream call of
#: this run is added to) -> a fresh outcome, whose `spend` is that one. The caller keeps the
#: `Spend`, so what a run that failed had spent is known too.
Runner = Callable[[Claim | None, float | None, Spend], Awaitable[Outcome[Any]]]

#: Charges a user for input bytes about to be written to the blob store: (user id, bytes);
#: raises `RateLimited` when the user's blob write limit refuses them.
BlobQuota = Callable[[str, int], Awaitable[object]]


class InputWrite:
    """A request's input images, written to the blob store once, when first asked.

    An inline run asks just after its first model call passed the upstream limits (and a
    queued job at submission, after admission), so a request refused by a limit writes
    nothing. Unarmed (nothing to write), asking is free.
    """

    def __init__(self) -> None:
        self._write: Callable[[], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()

    def arm(self, write: Callable[[], Awaitable[None]] | None) -> None:
        """What to run on the first ask (None: nothing)."""
        self._write = write

    async def __call__(self) -> None:
        """Runs the write unless it has run; concurrent askers wait for the one write."""
        if self._write is None:
            return
        async with self._lock:
            write, self._write = self._write, None
            if write is None:
                return
            try:
                await write()
            except BaseException:
                self._write = write
                raise


@dataclass(frozen=True, slots=True)
class Retry:
    """A failed attempt is tried again after `delay_s` seconds."""

    delay_s: float
    #: False when nothing was spent (a rate limit denied the attempt before the model call):
    #: the attempt is given back instead of counted, so a denial never fails the job.
    counted: bool = True


#: (the execution, the error its attempt raised) -> when to try again, or None for a final
#: failure.
RetryPolicy = Callable[[Job, BaseException], Retry | None]


@dataclass(frozen=True, slots=True)
class Call:
    """One validated request, as the executor needs it."""

    spec: OperationSpec[Any, Any]
    #: The validated request (only `validate`'s output may reach here).
    request: Any
    user_id: str
    #: The identity of the model that runs it (`Settings.model_identity`: the configured
    #: name, marked when the emulator answers).
    model: str
    run: Runner
    #: The result-cache key; None when the result is not cached.
    key: bytes | None = None
    scope: Scope = Scope.USER
    ttl_s: float = 0.0
    #: The caller's idempotency key: a repeat returns (or joins) the first execution.
    idempotency_key: str | None = None
    #: Job priority (tier weight, higher first).
    priority: int = 0
    #: The caller's deadline (`time.monotonic()`); bounds its wait, not the shared work.
    deadline: float | None = None
    #: Answer a pending handle after the long-poll window (unary RPCs) instead of waiting for
    #: the end (streams).
    long_poll: bool = True
    #: The input images' deferred write; `run` asks for it before its first model call.
    inputs: InputWrite = field(default_factory=InputWrite, compare=False)
    #: The request id (for the usage ledger's labels).
    request_id: str = ""
    #: How a queued job of it reaches the model (an inline request is always interactive).
    delivery: Delivery = Delivery.INTERACTIVE
