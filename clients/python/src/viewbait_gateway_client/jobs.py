"""Submit a job and follow it to its end, surviving broken streams.

`follow_job` turns JobService.WatchJob into a stream that outlives the connection it started on:
when the stream breaks (UNAVAILABLE: a connection reset, a gateway restarting or draining) it
reconnects with capped exponential backoff and full jitter, and resumes after the last sequence
number it yielded, so no event is repeated. The job's state is a snapshot per event, so an event
missed while disconnected is folded into the next one: nothing the job did is lost.

`run_job` submits first; `final_job` drains such a stream into the job's outcome: the succeeded
job, or `JobFailedError` / `JobCancelledError`. `GatewayClient.run_job`, `follow_job` and
`await_job` are the usual way in.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
from viewbait.ai.v1 import job_pb2, job_service_pb2

from viewbait_gateway_client.errors import GatewayError

if TYPE_CHECKING:
    from viewbait_gateway_client.client import GatewayClient

#: Statuses after which a job never changes again.
TERMINAL_STATUSES = frozenset(
    {job_pb2.JOB_STATUS_SUCCEEDED, job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_STATUS_CANCELLED}
)
#: Failures after which a stream (or a keyed submit) is tried again: the gateway could not be
#: reached or stopped serving the call (a restart, a drain, a connection reset).
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
#: Bound on the CancelJob call made when a caller abandons a job with `cancel_on_abandon`.
CANCEL_TIMEOUT_S = 5.0

#: Called before each wait to reconnect (or to submit again): what failed, and the wait in seconds.
RetryHook = Callable[[GatewayError, float], object]

_CODES = {code.value[0]: code for code in grpc.StatusCode}
# CancelJob calls still running after their caller went away (kept referenced until done).
_cancels: set[asyncio.Task[None]] = set()


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits between reconnects: full jitter over a ceiling that doubles from `initial_s` up to
    `max_s` and starts again once a stream delivers an event. A retry delay the gateway asked
    for (RetryInfo) is waited at least."""

    initial_s: float = 0.1
    max_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError("Backoff needs 0 < initial_s <= max_s")

    def delay(self, failures: int, retry_after_s: float | None = None) -> float:
        """The wait before attempt number `failures + 1` after `failures` failures in a row."""
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(failures, 62))
        return max(random.uniform(0.0, ceiling), retry_after_s or 0.0)


DEFAULT_BACKOFF = Backoff()


class JobFailedError(GatewayError):
    """The job failed: `code`, `reason` and `message` are those of the job's error (what the
    same failure would have been as an RPC error); `job` is the job as it ended."""

    def __init__(self, job: job_pb2.Job) -> None:
        error = job.error
        super().__init__(
            _CODES.get(error.code, grpc.StatusCode.UNKNOWN),
            error.message or f"job {job.id} failed",
            reason=error.reason or None,
            error_metadata={"job_id": job.id},
        )
        self.job = job


class JobCancelledError(GatewayError):
    """The job was cancelled (by its owner, through any client) before it finished; `job` is
    the job as it ended."""

    def __init__(self, job: job_pb2.Job) -> None:
        super().__init__(
            grpc.StatusCode.CANCELLED,
            f"job {job.id} was cancelled before it finished",
            reason="CANCELLED",
            error_metadata={"job_id": job.id},
        )
        self.job = job


def _outcome(job: job_pb2.Job) -> job_pb2.Job:
    """A terminal job as an outcome: itself when it succeeded, else the matching error raised."""
    if job.status == job_pb2.JOB_STATUS_SUCCEEDED:
        return job
    if job.status == job_pb2.JOB_STATUS_FAILED:
        raise JobFailedError(job)
    if job.status == job_pb2.JOB_STATUS_CANCELLED:
        raise JobCancelledError(job)
    raise ValueError(f"job {job.id} has not finished (status {job.status})")


async def final_job(events: AsyncIterable[job_service_pb2.WatchJobResponse]) -> job_pb2.Job:
    """Reads a job's events to the end: the succeeded job (with its result), or
    `JobFailedError` / `JobCancelledError`. Errors of the stream itself propagate."""
    last: job_pb2.Job | None = None
    async for event in events:  # a job's event stream ends after its terminal state
        last = event.job
    if last is None or last.status not in TERMINAL_STATUSES:
        raise GatewayError(
            grpc.StatusCode.UNAVAILABLE, "the job's events ended before the job finished"
        )
    return _outcome(last)


class _Deadline:
    """The caller's overall time budget (None: unbounded) for one helper call."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._loop = asyncio.get_running_loop()
        self._at = None if timeout_s is None else self._loop.time() + timeout_s

    def remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - self._loop.time())

    def expired(self) -> bool:
        return self._at is not None and self._loop.time() >= self._at

    def error(self, job_id: str = "") -> GatewayError:
        """DEADLINE_EXCEEDED for the job `job_id` (empty: while it was being submitted)."""
        message = (
            f"job {job_id} did not finish within {self.timeout_s:g} s; it goes on"
            if job_id
            else f"the job was not submitted within {self.timeout_s:g} s"
        )
        return GatewayError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            message,
            reason="DEADLINE_EXCEEDED",
            error_metadata={"job_id": job_id} if job_id else None,
        )


async def _wait_to_retry(
    deadline: _Deadline,
    backoff: Backoff,
    failures: int,
    error: GatewayError,
    on_retry: RetryHook | None,
) -> None:
    delay = backoff.delay(failures, error.retry_after_s)
    remaining = deadline.remaining()
    if remaining is not None:
        delay = min(delay, remaining)
    if on_retry is not None:
        on_retry(error, delay)
    await asyncio.sleep(delay)


async def follow_job(
    client: GatewayClient,
    job_id: str,
    *,
    after_sequence: int = 0,
    timeout_s: float | None = None,
    request_id: str | None = None,
    cancel_on_abandon: bool = False,
    backoff: Backoff = DEFAULT_BACKOFF,
    on_retry: RetryHook | None = None,
) -> AsyncGenerator[job_service_pb2.WatchJobResponse, None]:
    """See `GatewayClient.follow_job`."""
    deadline = _Deadline(timeout_s)
    async for event in _follow(
        client, job_id, after_sequence, deadline, request_id, cancel_on_abandon, backoff, on_retry
    ):
        yield event


async def run_job(
    client: GatewayClient,
    request: job_service_pb2.SubmitJobRequest,
    *,
    idempotency_key: str | None = None,
    timeout_s: float | None = None,
    request_id: str | None = None,
    cancel_on_abandon: bool = False,
    backoff: Backoff = DEFAULT_BACKOFF,
    on_retry: RetryHook | None = None,
) -> AsyncGenerator[job_service_pb2.WatchJobResponse, None]:
    """See `GatewayClient.run_job`."""
    deadline = _Deadline(timeout_s)
    request = _with_idempotency_key(request, idempotency_key)
    job_id = await _submit(client, request, deadline, request_id, backoff, on_retry)
    async for event in _follow(
        client, job_id, 0, deadline, request_id, cancel_on_abandon, backoff, on_retry
    ):
        yield event


def _with_idempotency_key(
    request: job_service_pb2.SubmitJobRequest, key: str | None
) -> job_service_pb2.SubmitJobRequest:
    """`request` carrying `key` (a copy; the caller's message is left alone)."""
    if not key or request.idempotency_key == key:
        return request
    if request.idempotency_key:
        raise ValueError(
            "idempotency_key differs from request.idempotency_key; set one of them, or both "
            "to the same key"
        )
    keyed = job_service_pb2.SubmitJobRequest()
    keyed.CopyFrom(request)
    keyed.idempotency_key = key
    return keyed


def _idempotency_key(request: job_service_pb2.SubmitJobRequest) -> str:
    """The key the gateway will use: the request's own, else an embedded GenerateThumbnail's."""
    if request.idempotency_key:
        return request.idempotency_key
    if request.WhichOneof("operation") == "generate_thumbnail":
        return request.generate_thumbnail.idempotency_key
    return ""


async def _submit(
    client: GatewayClient,
    request: job_service_pb2.SubmitJobRequest,
    deadline: _Deadline,
    request_id: str | None,
    backoff: Backoff,
    on_retry: RetryHook | None,
) -> str:
    """Submits; with an idempotency key, a submit that could not reach the gateway is sent
    again (it joins the job the first one may have queued). Without a key it is not: a retry
    could queue the job twice."""
    retryable = bool(_idempotency_key(request))
    failures = 0
    while True:
        try:
            submitted = await client.submit_job(
                request, timeout_s=deadline.remaining(), request_id=request_id
            )
            return submitted.job.id
        except GatewayError as exc:
            if deadline.expired():
                raise deadline.error() from exc
            if not (retryable and exc.code in RESUMABLE_CODES):
                raise
            error = exc
        await _wait_to_retry(deadline, backoff, failures, error, on_retry)
        failures += 1


async def _follow(
    client: GatewayClient,
    job_id: str,
    after_sequence: int,
    deadline: _Deadline,
    request_id: str | None,
    cancel_on_abandon: bool,
    backoff: Backoff,
    on_retry: RetryHook | None,
) -> AsyncGenerator[job_service_pb2.WatchJobResponse, None]:
    seen = after_sequence
    failures = 0
    finished = False
    try:
        while True:
            if deadline.expired():
                raise deadline.error(job_id)
            watch = job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=seen)
            received = False
            try:
                # aclosing: leaving this loop (the caller broke out, or was cancelled) ends the
                # call now, not whenever the inner generator is collected.
                async with contextlib.aclosing(
                    client.watch_job(watch, timeout_s=deadline.remaining(), request_id=request_id)
                ) as stream:
                    async for event in stream:
                        received = True
                        if event.sequence <= seen:
                            continue  # never hand the caller an event twice
                        seen = event.sequence
                        failures = 0
                        finished = event.job.status in TERMINAL_STATUSES
                        yield event
                        if finished:
                            return
                # A stream that ends with nothing at all after `seen` is the gateway's answer for
                # a job that was already over at `seen` (a resume after its terminal event).
                if not received and seen > 0:
                    job = (
                        await client.get_job(
                            job_service_pb2.GetJobRequest(job_id=job_id),
                            timeout_s=deadline.remaining(),
                            request_id=request_id,
                        )
                    ).job
                    if job.status in TERMINAL_STATUSES:
                        finished = True
                        return
                # The gateway ends a stream only after the terminal state: anything else is a
                # broken stream too (e.g. a proxy closing it cleanly).
                error = GatewayError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the event stream of job {job_id} ended before the job finished",
                )
            except GatewayError as exc:
                if deadline.expired():
                    raise deadline.error(job_id) from exc
                if exc.code not in RESUMABLE_CODES:
                    raise
                error = exc
            await _wait_to_retry(deadline, backoff, failures, error, on_retry)
            failures += 1
    finally:
        if cancel_on_abandon and not finished:
            await _cancel_quietly(client, job_id, request_id)


async def _cancel_quietly(client: GatewayClient, job_id: str, request_id: str | None) -> None:
    """Best-effort CancelJob for a job its caller abandoned. Runs in a task of its own, so it
    completes even when the caller is being cancelled again while it waits."""

    async def cancel() -> None:
        with contextlib.suppress(GatewayError):
            await client.cancel_job(
                job_service_pb2.CancelJobRequest(job_id=job_id),
                timeout_s=CANCEL_TIMEOUT_S,
                request_id=request_id,
            )

    task = asyncio.ensure_future(cancel())
    _cancels.add(task)
    task.add_done_callback(_cancels.discard)
    await asyncio.shield(task)
