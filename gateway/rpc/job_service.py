"""JobService: submit an operation as a background job, follow it, cancel it, list them.

SubmitJob goes through the same pipeline checks as the unary RPCs (tier, validation, admission
limit) and queues the job for the worker pool (`gateway.jobs`); the job joins the active one of
an equal cacheable request, and an idempotency key returns the caller's earlier job. Every read
is scoped to the caller: another user's job id answers NOT_FOUND, exactly as a missing one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from grpc import aio
from viewbait.ai.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from gateway import errors, operations
from gateway.auth import Principal
from gateway.execution import Pipeline, load_result
from gateway.operations import codec
from gateway.rpc import context as request_context
from gateway.rpc import convert
from gateway.store.base import Job, JobCursor, JobFilter, JobStatus, JobStore
from gateway.store.blobs import BlobError, BlobStore

Context = aio.ServicerContext[Any, Any]

#: ListJobs page sizes (the proto's contract).
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
#: How long one store wait of a WatchJob stream lasts before it looks again (a quiet job).
WATCH_WAIT_S = 30.0

#: SubmitJobRequest's oneof case -> its proto-to-domain conversion (cases are operation names).
_REQUESTS: dict[str, Callable[[Any], Any]] = {
    "generate_thumbnail": convert.generate_thumbnail_request,
    "analyze_video": convert.analyze_video_request,
    "suggest_thumbnail_concepts": convert.suggest_thumbnail_concepts_request,
    "compute_attention_heatmap": convert.compute_attention_heatmap_request,
    "check_channel_consistency": convert.check_channel_consistency_request,
}
_STATUSES = {
    job_pb2.JOB_STATUS_QUEUED: JobStatus.QUEUED,
    job_pb2.JOB_STATUS_RUNNING: JobStatus.RUNNING,
    job_pb2.JOB_STATUS_SUCCEEDED: JobStatus.SUCCEEDED,
    job_pb2.JOB_STATUS_FAILED: JobStatus.FAILED,
    job_pb2.JOB_STATUS_CANCELLED: JobStatus.CANCELLED,
}
_OPERATIONS = {number: name for name, (number, _) in convert.JOB_OPERATIONS.items()}


def _principal() -> Principal:
    principal = request_context.current().principal
    assert principal is not None, "AuthInterceptor runs before every servicer"
    return principal


def encode_page_token(cursor: JobCursor) -> str:
    """An opaque token for the page after `cursor`."""
    text = json.dumps([cursor.created_at.isoformat(), cursor.job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> JobCursor:
    """Inverse of `encode_page_token`; `InvalidArgument` for anything it did not make."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        cursor = JobCursor(datetime.fromisoformat(created), str(job_id))
    except (ValueError, TypeError, binascii.Error):
        raise errors.InvalidArgument.field(
            "page_token", "is not a token this service gave out; pass next_page_token as is"
        ) from None
    if cursor.created_at.tzinfo is None:
        raise errors.InvalidArgument.field("page_token", "is not a token this service gave out")
    return cursor


def _job_filter(request: job_service_pb2.ListJobsRequest) -> JobFilter:
    statuses = set()
    for value in request.statuses:
        if value not in _STATUSES:
            raise errors.InvalidArgument.field("statuses", f"holds an unknown status ({value})")
        statuses.add(_STATUSES[value])
    ops = set()
    for number in request.operations:
        if number not in _OPERATIONS:
            raise errors.InvalidArgument.field(
                "operations", f"holds an unknown operation ({number})"
            )
        ops.add(_OPERATIONS[number])
    return JobFilter(frozenset(statuses), frozenset(ops))


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Serves JobService from the pipeline's job store.

    `on_submit` is called when a submit queued a new job (the local workers' wake-up).
    """

    def __init__(
        self,
        pipeline: Pipeline,
        blobs: BlobStore,
        on_submit: Callable[[], None] | None = None,
    ) -> None:
        executor = pipeline.executor
        self._pipeline = pipeline
        self._store: JobStore = executor.store
        self._blobs = blobs
        self._on_submit = on_submit
        #: Set when the replica starts draining: WatchJob streams end at once with UNAVAILABLE
        #: (to be resumed on another replica) instead of holding the drain for its whole grace.
        self._draining = executor.draining

    async def _message(self, job: Job, *, with_result: bool = True) -> job_pb2.Job:
        """The job for its owner, with its decoded result when it succeeded and `with_result`."""
        result = None
        if with_result and job.status is JobStatus.SUCCEEDED and job.result is not None:
            try:
                result = await load_result(operations.get(job.op), job.result, self._blobs)
            except (BlobError, codec.DecodeError) as exc:
                raise errors.Internal(
                    f"the stored result of job {job.id} cannot be read ({type(exc).__name__})"
                ) from None
        return convert.job(job, result)

    async def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: Context
    ) -> job_service_pb2.SubmitJobResponse:
        principal = _principal()
        case = request.WhichOneof("operation")
        if case is None:
            raise errors.InvalidArgument.field(
                "operation", f"is required: set one of {', '.join(sorted(_REQUESTS))}"
            )
        operation: Message = getattr(request, case)
        key = request.idempotency_key
        inner = getattr(operation, "idempotency_key", "")
        if key and inner and key != inner:
            raise errors.InvalidArgument.field(
                "idempotency_key",
                f"differs from {case}.idempotency_key; set one of them, or both to the same key",
            )
        prepared = self._pipeline.prepare(
            case, _REQUESTS[case](operation), principal, idempotency_key=key or inner
        )
        joined = await self._pipeline.submit(prepared)
        if joined.created and self._on_submit is not None:
            self._on_submit()
        return job_service_pb2.SubmitJobResponse(
            job=await self._message(joined.job), existing=joined.existing
        )

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Context
    ) -> job_service_pb2.GetJobResponse:
        job = await self._store.get_job(convert.job_id(request.job_id), _principal().user_id)
        return job_service_pb2.GetJobResponse(job=await self._message(job))

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        job_id = convert.job_id(request.job_id)
        user_id = _principal().user_id
        seen = request.after_sequence
        job = await self._store.get_job(job_id, user_id)
        while True:
            if job.event_seq > seen:
                seen = job.event_seq
                yield job_service_pb2.WatchJobResponse(
                    sequence=seen, job=await self._message(job, with_result=not job.active)
                )
            if not job.active:
                return
            job = await self._wait_unless_draining(job_id, user_id, seen)

    async def _wait_unless_draining(self, job_id: str, user_id: str, seen: int) -> Job:
        """The job's next change, or `Unavailable` once this replica drains."""
        if not self._draining.is_set():
            change = asyncio.ensure_future(
                self._store.wait_for_job_change(job_id, user_id, seen, WATCH_WAIT_S)
            )
            draining = asyncio.ensure_future(self._draining.wait())
            try:
                await asyncio.wait((change, draining), return_when=asyncio.FIRST_COMPLETED)
            finally:
                draining.cancel()
                if not change.done():
                    change.cancel()
            if change.done():
                return change.result()
        raise errors.Unavailable(
            f"this gateway replica is shutting down; watch job {job_id} again after sequence "
            f"{seen} (another replica serves it)",
            retry_after_s=0.0,
        )

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Context
    ) -> job_service_pb2.CancelJobResponse:
        job = await self._store.cancel_job(convert.job_id(request.job_id), _principal().user_id)
        return job_service_pb2.CancelJobResponse(job=await self._message(job))

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument.field(
                "page_size", f"is {size}; the limit is {MAX_PAGE_SIZE}"
            )
        after = decode_page_token(request.page_token) if request.page_token else None
        # One more than asked tells whether another page follows.
        jobs = await self._store.list_jobs(
            _principal().user_id, _job_filter(request), size + 1, after
        )
        page = jobs[:size]
        token = ""
        if len(jobs) > size:
            token = encode_page_token(JobCursor(page[-1].created_at, page[-1].id))
        return job_service_pb2.ListJobsResponse(
            jobs=[convert.job(job) for job in page], next_page_token=token
        )
