"""Batch delivery: queued jobs of the text operations, gathered per model into Gemini Batch API
batches, submitted, polled, and each completed from its line of the batch's answer.

Every replica with job workers runs one `Batcher` beside its worker pool:

1. **Gather.** The store hands over a batch (`BatchStore.gather_batch`) once `max_batch_size`
   jobs delivered by batch wait for one model, or the oldest has waited `gather_window_s`: its
   jobs run held by the batch, and the batch row is leased to this replica. Executions are the
   store's coalescing unit, so a job whose key was in flight when it was submitted joined that
   execution and never waits for a batch.
2. **Submit.** Each job's request is read back as a job worker reads it. A job whose result is
   cached meanwhile is completed from the cache and never sent; the others' budgets are
   reserved (at batch prices) and they are sent as one batch of inline requests, each keyed by
   its job id, through the one Gemini adapter. The batch's name is stored on its row; the
   Batch API's display name is the row's id, so a replica that stopped between submitting and
   storing the name is found out by whoever takes the row over (no batch is sent twice).
3. **Poll.** Every `poll_interval_s` the batch is read; its jobs' progress says where it is
   (stage "batch"). A job cancelled meanwhile stays cancelled; once every job of a pending or
   running batch is cancelled, the batch itself is cancelled.
4. **Deliver.** Each line is read by the same rules as an interactive answer (safety, schema:
   the spec's parser), its usage goes to the ledger at batch prices with the job's labels, and
   its job completes with the result, cached as usual; a cancelled job's line is only paid for.
   A failed line, a line that does not parse, or a batch that failed or expired fails its jobs'
   attempt: a retryable error queues the job for a later batch after the jobs' backoff, as a
   job worker's failed attempt would (`retry_delay`); anything else, or the last attempt, fails
   it for good.

**Restarts.** The batch row's lease is extended every third of `execution.lease_s`; a replica
that stops (kill -9 included) leaves it to lapse, and any replica's batcher takes it over and
resumes: it submits it if it was never submitted, else polls it by its stored name. Its jobs
never lapse on their own (`BATCH_HOLD_S`): the job rescue leaves them to their batch.

Not batched: GenerateThumbnail (image output, several calls per job; `OperationSpec.batchable`),
and inline RPCs. The interactive upstream rate limits are not charged for batch lines (the
Batch API has quotas of its own); the admission limit was, when the job was submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from gateway import errors
from gateway.budgets.enforcement import Budgets, Reservation
from gateway.config import Settings
from gateway.execution.types import Outcome, Spend
from gateway.jobs.priority import tier_of_priority
from gateway.jobs.runner import SHARED_USER, retry_delay, stored_call
from gateway.model import (
    BatchClient,
    BatchLine,
    BatchState,
    BatchStatus,
    CallLabels,
    ModelRequest,
    UsageRecord,
    UsageSink,
)
from gateway.operations import codec
from gateway.operations.base import StructuredOperation
from gateway.store.base import (
    Batch,
    BatchLost,
    Claim,
    Job,
    JobError,
    JobProgress,
    JobStatus,
    LeaseLost,
    Store,
)
from gateway.store.blobs import BlobError, BlobStore

if TYPE_CHECKING:
    from gateway.execution.pipeline import Pipeline

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The progress stage of a job while its batch is on its way.
BATCH_STAGE = "batch"
#: Most batches one take-over round leases.
_TAKE_OVER_LIMIT = 16
#: How soon a released batch's lease lapses (a graceful stop hands it over at once).
_RELEASE_S = 0.001
#: What a line's inline request weighs beyond its parts' bytes (JSON, base64 slack aside).
_LINE_OVERHEAD_BYTES = 512


def line_bytes(request: ModelRequest) -> int:
    """About how many bytes `request` adds to a batch's inline requests: its text, its inline
    blobs as base64, and the line's envelope."""
    size = _LINE_OVERHEAD_BYTES + len((request.system_instruction or "").encode())
    for part in request.parts:
        if part.text is not None:
            size += len(part.text.encode())
        elif part.blob is not None:
            size += (len(part.blob.data) + 2) // 3 * 4
        elif part.file is not None:
            size += len(part.file.uri.encode())
    return size


@dataclasses.dataclass(frozen=True, slots=True)
class _Line:
    """A job of a batch and its model request, as sent."""

    job: Job
    request: ModelRequest


class Batcher:
    """Gathers, submits, polls and delivers this replica's batches (the module docstring).

    `client` is the Batch API (the Gemini adapter), `usage` the ledger its lines are recorded
    in, `budgets` the spend budgets reserved before a line is sent (None: none configured).
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        blobs: BlobStore,
        client: BatchClient,
        usage: UsageSink,
        budgets: Budgets | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._batch = settings.batch
        self._pipeline = pipeline
        self._executor = pipeline.executor
        self._store: Store = pipeline.executor.store
        self._blobs = blobs
        self._client = client
        self._usage = usage
        self._budgets = budgets if budgets is not None and budgets.enabled else None
        self._rng = rng
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._batches: dict[str, asyncio.Task[None]] = {}
        #: Budget reservations of the lines this replica sent, by job id (settled when their
        #: lines come back here; a batch taken over keeps its estimate charged).
        self._reservations: dict[str, Reservation] = {}
        self._last_take_over = -float("inf")
        #: Batches this replica submitted and lines it delivered (for metrics and tests).
        self.submitted = 0
        self.delivered = 0

    @property
    def worker_id(self) -> str:
        """Who holds this replica's batch leases (the executor's lease holder)."""
        return self._executor.worker_id

    @property
    def _lease_s(self) -> float:
        return self._executor.lease_s

    def start(self) -> None:
        """Starts gathering and taking over batches."""
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._gather_forever(), name="viewbait-batcher")

    async def stop(self) -> None:
        """Stops: the batches under way are handed over (their leases released at once) for
        another replica to resume."""
        tasks = [t for t in (self._loop_task, *self._batches.values()) if t is not None]
        self._loop_task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- gathering -------------------------------------------------------------------------------

    async def _gather_forever(self) -> None:
        with self._store.subscribe_due(self._wake):
            while True:
                self._wake.clear()
                try:
                    await self._take_over()
                    while (
                        gathered := await self._store.gather_batch(
                            self.worker_id,
                            self._lease_s,
                            self._batch.max_batch_size,
                            self._batch.gather_window_s,
                        )
                    ) is not None:
                        self._spawn(*gathered)
                except errors.Unavailable as exc:
                    log.warning("could not gather batches: %s", exc.message)
                except Exception:
                    # A bug here must not silently end batch delivery on this replica.
                    log.exception("gathering batches failed; trying again at the next poll")
                tick = self._settings.jobs.poll_interval_s
                if self._batch.gather_window_s > 0:
                    tick = min(tick, self._batch.gather_window_s)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tick):
                        await self._wake.wait()

    async def _take_over(self) -> None:
        """Leases the batches whose replica stopped (at most every third of a lease)."""
        now = time.monotonic()
        if now - self._last_take_over < self._lease_s / 3:
            return
        self._last_take_over = now
        for batch in await self._store.take_over_batches(
            self.worker_id, self._lease_s, _TAKE_OVER_LIMIT
        ):
            if batch.id in self._batches:
                continue  # its own lease lapsed while this replica was slow: still ours
            log.info("took over batch %s (%s) from a replica that stopped", batch.id, batch.name)
            self._spawn(batch, None)

    def _spawn(self, batch: Batch, jobs: list[Job] | None) -> None:
        task = asyncio.create_task(
            self._see_through(batch, jobs), name=f"viewbait-batch-{batch.id}"
        )
        self._batches[batch.id] = task
        task.add_done_callback(lambda _: self._batches.pop(batch.id, None))

    # -- one batch -------------------------------------------------------------------------------

    async def _see_through(self, batch: Batch, jobs: list[Job] | None) -> None:
        """Submits (unless submitted) and polls `batch` to its end, under its lease."""
        work = asyncio.ensure_future(self._deliver(batch, jobs))
        beat = asyncio.ensure_future(self._keep_lease(batch.id, work))
        try:
            await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is None or current.cancelling() == 0:
                return  # the lease was lost: the batch is another replica's now
            # Stopping: hand the batch over now rather than once its lease lapses.
            with contextlib.suppress(BatchLost, errors.Unavailable):
                await asyncio.shield(
                    self._store.heartbeat_batch(batch.id, self.worker_id, _RELEASE_S)
                )
            raise
        except BatchLost as lost:
            log.warning("%s; its work here ends", lost)
        except Exception:
            # Left to lapse: another replica (or this one) takes it over after its lease.
            log.exception("batch %s failed on this replica; it is taken over later", batch.id)
        finally:
            beat.cancel()

    async def _keep_lease(self, batch_id: str, work: asyncio.Future[None]) -> None:
        """Extends the batch's lease every third of it; stops `work` once it is lost."""
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                await self._store.heartbeat_batch(batch_id, self.worker_id, self._lease_s)
            except BatchLost as lost:
                log.warning("%s; stopping its work here", lost)
                work.cancel()
                return
            except errors.Unavailable as exc:
                log.warning("heartbeat of batch %s failed: %s", batch_id, exc.message)

    async def _deliver(self, batch: Batch, jobs: list[Job] | None) -> None:
        """The batch's life from where it stands: submitted if it was not, polled, delivered."""
        while batch.name is None:
            try:
                submitted = await self._submit(batch, jobs)
            except errors.GatewayError as exc:
                if not exc.retryable:
                    raise
                # The store or Gemini is out for now: the same batch, again, later.
                log.warning("batch %s not submitted yet: %s", batch.id, exc.message)
                await asyncio.sleep(self._batch.poll_interval_s)
                jobs = None
                continue
            if submitted is None:
                return
            batch = submitted
        await self._poll(batch)

    async def _submit(self, batch: Batch, jobs: list[Job] | None) -> Batch | None:
        """Sends the batch's jobs that still need Gemini; the batch with its name, or None when
        none is left (all cached, cancelled or refused: the batch is finished)."""
        if jobs is None:
            jobs = await self._store.batch_executions(batch)
        lines: list[_Line] = []
        size = 0
        for job in jobs:
            if not self._held(batch, job):
                continue
            line = await self._line(batch, job)
            if line is None:
                continue
            weight = line_bytes(line.request)
            if weight > self._batch.max_batch_bytes:
                self._release_reservation(job.id)
                message = (
                    f"the request is {weight / 2**20:.1f} MiB, more than a batch carries "
                    f"({self._batch.max_batch_bytes / 2**20:.1f} MiB); submit it for "
                    "interactive delivery"
                )
                await self._settle_job(
                    batch, job, JobError(errors.FailedPrecondition.reason, message)
                )
                continue
            if lines and size + weight > self._batch.max_batch_bytes:
                # Left for the next batch, its attempt given back.
                await self._settle_job(
                    batch,
                    job,
                    JobError(
                        errors.Unavailable.reason, "waiting for the next batch (this one is full)"
                    ),
                    retry_after_s=0.0,
                    counted=False,
                )
                self._release_reservation(job.id)
                continue
            size += weight
            lines.append(line)
        if not lines:
            await self._store.finish_batch(batch.id, self.worker_id)
            return None
        model = lines[0].request.model
        status = None
        if batch.attempts > 1:
            # Taken over before its name was stored: it may have been sent already.
            status = await self._client.find_batch(batch.id, model)
        if status is None:
            try:
                status = await self._client.create_batch(
                    model, [(line.job.id, line.request) for line in lines], display_name=batch.id
                )
            except errors.GatewayError as exc:
                if exc.retryable:
                    raise
                for line in lines:
                    self._release_reservation(line.job.id)
                    await self._fail_attempt(batch, line.job, exc)
                await self._store.finish_batch(batch.id, self.worker_id)
                return None
            self.submitted += 1
        # Sent: from here on only this step is tried again (sending twice would pay twice).
        name, order = status.name, [line.job.id for line in lines]
        batch = await self._retrying(
            lambda: self._store.heartbeat_batch(
                batch.id, self.worker_id, self._lease_s, name=name, job_ids=order
            )
        )
        log.info("batch %s submitted as %s with %d lines", batch.id, status.name, len(lines))
        await self._retrying(functools.partial(self._progress, batch, status.state))
        return batch

    async def _line(self, batch: Batch, job: Job) -> _Line | None:
        """A job's line, or None when it needs none: its result is cached (the job is completed
        from it), its input cannot be read, or a budget refuses it (the job fails or waits)."""
        try:
            call = await stored_call(self._pipeline, self._blobs, job)
        except (BlobError, codec.DecodeError, KeyError) as exc:
            log.error("job %s has an unusable input: %s", job.id, exc)
            await self._settle_job(
                batch,
                job,
                JobError(errors.Internal.reason, "the job's stored input cannot be read"),
            )
            return None
        cached = await self._executor.cached(call)
        if cached is not None:
            with contextlib.suppress(LeaseLost):
                await self._executor.keep_for(call, self._claim(batch, job), cached)
            return None
        spec = call.spec
        assert isinstance(spec, StructuredOperation), f"{spec.name} cannot be batched"
        model = self._model_of(job)
        request = spec.model_request(call.request, model)
        # A submit tried again reserves again: what the last try held goes back first.
        self._release_reservation(job.id)
        if self._budgets is not None:
            amount = round(self._budgets.estimate(request) * self._batch.price_factor)
            try:
                reservation = await self._budgets.reserve(
                    call.user_id, tier_of_priority(job.priority), model, amount
                )
            except errors.GatewayError as refused:
                await self._fail_attempt(batch, job, refused)
                return None
            if reservation is not None:
                self._reservations[job.id] = reservation
        return _Line(job, request)

    async def _poll(self, batch: Batch) -> None:
        """Reads the batch every `poll_interval_s` until it ends, then delivers its lines."""
        name = batch.name
        assert name is not None
        seen: BatchState | None = None
        while True:
            jobs = await self._retrying(lambda: self._store.batch_executions(batch))
            if not jobs:
                await self._retrying(lambda: self._store.finish_batch(batch.id, self.worker_id))
                return
            held = [job for job in jobs if self._held(batch, job)]
            try:
                status = await self._client.get_batch(name, self._model_of(jobs[0]))
            except errors.GatewayError as exc:
                if exc.retryable:
                    log.warning("batch %s (%s) not read: %s", batch.id, name, exc.message)
                    await asyncio.sleep(self._batch.poll_interval_s)
                    continue
                log.error("batch %s (%s) cannot be read: %s", batch.id, name, exc.message)
                status = BatchStatus(name, BatchState.FAILED)
            if not held and not status.state.done:
                # Every job was cancelled: so is the batch.
                with contextlib.suppress(errors.GatewayError):
                    await self._client.cancel_batch(name)
                log.info("batch %s (%s) cancelled: its jobs all were", batch.id, name)
            elif status.state.done:
                await self._apply(batch, status, jobs)
            else:
                if status.state is not seen:
                    seen = status.state
                    await self._retrying(functools.partial(self._progress, batch, seen))
                await asyncio.sleep(self._batch.poll_interval_s)
                continue
            await self._retrying(lambda: self._store.finish_batch(batch.id, self.worker_id))
            return

    async def _apply(self, batch: Batch, status: BatchStatus, jobs: Sequence[Job]) -> None:
        """Delivers a finished batch's lines to its jobs (by key, else by position)."""
        keyed = {line.key: line for line in status.lines if line.key is not None}
        positional = len(keyed) < len(status.lines)
        for index, job in enumerate(jobs):
            line = keyed.get(job.id)
            if line is None and positional and index < len(status.lines):
                line = status.lines[index]
            await self._retrying(functools.partial(self._deliver_line, batch, status, job, line))

    async def _deliver_line(
        self, batch: Batch, status: BatchStatus, job: Job, line: BatchLine | None
    ) -> None:
        held = self._held(batch, job)
        if line is not None and (held or job.status is JobStatus.CANCELLED):
            # A cancelled job's line is paid for too; a finished one's was recorded already.
            await self._record(batch, job, line, outcome=None if held else errors.Cancelled.reason)
        if not held:
            return
        if line is None:
            word = status.state.value if status.state is not BatchState.SUCCEEDED else "without it"
            await self._fail_attempt(
                batch,
                job,
                errors.UpstreamUnavailable(f"Gemini's batch {status.name} ended {word}"),
            )
            return
        if line.error is not None:
            await self._fail_attempt(batch, job, line.error)
            return
        assert line.response is not None
        call = await stored_call(self._pipeline, self._blobs, job)
        spec = call.spec
        assert isinstance(spec, StructuredOperation)
        try:
            answer = spec.parse_answer(line.response.text, line.response.finish_reason)
        except errors.UpstreamBadResponse as bad:
            await self._fail_attempt(batch, job, bad)
            return
        result = await spec.complete(call.request, answer)
        spend = Spend(line.usage, line.cost_usd, 1)
        try:
            await self._executor.keep_for(
                call, self._claim(batch, job), Outcome(result, call.model, spend)
            )
        except LeaseLost:
            return  # cancelled while its line was read: ignored
        self.delivered += 1

    async def _record(self, batch: Batch, job: Job, line: BatchLine, outcome: str | None) -> None:
        """The line's usage, in the ledger and against the budgets its job reserved."""
        outcome = outcome or ("ok" if line.error is None else line.error.reason)
        submitted = batch.submitted_at or batch.created_at
        record = UsageRecord(
            labels=CallLabels(
                operation=job.op,
                user_id=job.charged_user or SHARED_USER,
                job_id=job.id,
                request_id=f"job-{job.id}",
                fence=job.fence,
            ),
            model=self._model_of(job),
            attempt=1,
            outcome=outcome,
            duration_s=max(0.0, (datetime.now(UTC) - submitted).total_seconds()),
            usage=line.usage,
            cost_usd=line.cost_usd,
        )
        await self._usage.record(record)
        reservation = self._reservations.pop(job.id, None)
        if reservation is not None and self._budgets is not None:
            await self._budgets.settle(reservation, line.cost_usd)

    # -- jobs of a batch -------------------------------------------------------------------------

    @staticmethod
    def _held(batch: Batch, job: Job) -> bool:
        return job.status is JobStatus.RUNNING and job.locked_by == batch.holder

    @staticmethod
    def _claim(batch: Batch, job: Job) -> Claim:
        """The claim `batch` holds on `job`, one of its executions as read from the store: a
        batch's holder name is its own (`batch_holder`), so no other claim shares it, and a job
        it no longer holds refuses the claim's writes (`LeaseLost`)."""
        return Claim(job.id, batch.holder, job.fence)

    def _model_of(self, job: Job) -> str:
        """The Gemini model a job runs on (its operation's policy names it)."""
        return self._settings.model_name(self._settings.policy(job.op))

    async def _progress(self, batch: Batch, state: BatchState) -> None:
        progress = JobProgress(0.0, BATCH_STAGE, f"in Gemini batch {batch.name}: {state.value}")
        await self._store.record_batch_progress(batch, progress)

    async def _fail_attempt(self, batch: Batch, job: Job, error: BaseException) -> None:
        """Ends the job's attempt with `error`: queued for a later batch when the retry policy
        says so (a budget refusal waits uncounted), failed for good otherwise."""
        retry = retry_delay(
            self._settings.jobs,
            job,
            error,
            self._rng,
            budget_refusal=self._settings.budgets.job_refusal,
        )
        await self._settle_job(
            batch,
            job,
            JobError.from_exception(error),
            retry_after_s=None if retry is None else retry.delay_s,
            counted=retry is None or retry.counted,
        )

    async def _settle_job(
        self,
        batch: Batch,
        job: Job,
        error: JobError,
        *,
        retry_after_s: float | None = None,
        counted: bool = True,
    ) -> None:
        """Records the end of a job's attempt as its batch (nothing if it left the batch)."""
        try:
            if not counted and retry_after_s is not None:
                await self._store.defer_job(self._claim(batch, job), error, retry_after_s)
            else:
                await self._store.fail_job(self._claim(batch, job), error, retry_after_s)
        except LeaseLost:
            pass  # cancelled meanwhile

    def _release_reservation(self, job_id: str) -> None:
        reservation = self._reservations.pop(job_id, None)
        if reservation is not None and self._budgets is not None:
            task = asyncio.ensure_future(self._budgets.release(reservation))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _retrying(self, step: Callable[[], Awaitable[T]]) -> T:
        """`await step()`, tried again every `poll_interval_s` while the store is unavailable."""
        while True:
            try:
                return await step()
            except errors.Unavailable as exc:
                log.warning("batch work waits for the store: %s", exc.message)
                await asyncio.sleep(self._batch.poll_interval_s)
