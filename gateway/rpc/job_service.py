"""JobService over gRPC: converts messages and calls the job service (`gateway.jobs.service`).

Each operation's messages are converted by its binding (`gateway.rpc.bindings`): SubmitJob's
oneof case picks it, and a job's result and ListJobs' operation filter go through it.

SubmitJob goes through the same pipeline checks as the unary RPCs (tier, validation, admission
limit) and queues the job for the worker pool (`gateway.jobs`), or with `delivery` BATCH for the
batchers (`gateway.jobs.batcher`); the job joins the active one of
an equal cacheable request, and an idempotency key returns the caller's earlier job. Every read
is scoped to the caller: another user's job id answers NOT_FOUND, exactly as a missing one.
RetryJob re-drives a dead letter: the owner's own, or any user's with the service token.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from grpc import aio
from viewbait.ai.v1 import job_pb2, job_service_pb2, job_service_pb2_grpc

from gateway import errors
from gateway.auth import Principal
from gateway.jobs.service import JobService, JobView
from gateway.rpc import bindings, convert
from gateway.rpc import context as request_context
from gateway.store.base import Delivery, JobCursor, JobFilter, JobStatus, parse_job_id

Context = aio.ServicerContext[Any, Any]

#: ListJobs page sizes (the proto's contract).
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

_STATUSES = {
    job_pb2.JOB_STATUS_QUEUED: JobStatus.QUEUED,
    job_pb2.JOB_STATUS_RUNNING: JobStatus.RUNNING,
    job_pb2.JOB_STATUS_SUCCEEDED: JobStatus.SUCCEEDED,
    job_pb2.JOB_STATUS_FAILED: JobStatus.FAILED,
    job_pb2.JOB_STATUS_CANCELLED: JobStatus.CANCELLED,
}


_DELIVERIES = {
    job_service_pb2.DELIVERY_UNSPECIFIED: Delivery.INTERACTIVE,
    job_service_pb2.DELIVERY_INTERACTIVE: Delivery.INTERACTIVE,
    job_service_pb2.DELIVERY_BATCH: Delivery.BATCH,
}


#: What an ErrorInfo reason looks like (`gateway.errors.GatewayError.reason`).
_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _delivery(value: job_service_pb2.Delivery.ValueType) -> Delivery:
    if value not in _DELIVERIES:
        raise errors.InvalidArgument.field("delivery", f"is an unknown delivery ({value})")
    return _DELIVERIES[value]


def _principal() -> Principal:
    principal = request_context.current().principal
    assert principal is not None, "AuthInterceptor runs before every servicer"
    return principal


def encode_page_token(cursor: JobCursor) -> str:
    """An opaque token for the page after `cursor`."""
    text = json.dumps([cursor.created_at.isoformat(), cursor.job_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> JobCursor:
    """Inverse of `encode_page_token`; `InvalidArgument` naming `page_token` for anything it
    did not make (a forged or garbled token never reaches the store)."""
    refused = errors.InvalidArgument.field(
        "page_token", "is not a token this service gave out; pass next_page_token as is"
    )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        created, job_id = json.loads(raw)
        cursor = JobCursor(datetime.fromisoformat(created), str(job_id))
    except (ValueError, TypeError, binascii.Error):
        raise refused from None
    if cursor.created_at.tzinfo is None or parse_job_id(cursor.job_id) is None:
        raise refused
    return cursor


def _job_filter(request: job_service_pb2.ListJobsRequest) -> JobFilter:
    statuses = set()
    for value in request.statuses:
        if value not in _STATUSES:
            raise errors.InvalidArgument.field("statuses", f"holds an unknown status ({value})")
        statuses.add(_STATUSES[value])
    ops = set()
    for number in request.operations:
        if number not in bindings.BY_OPERATION:
            raise errors.InvalidArgument.field(
                "operations", f"holds an unknown operation ({number})"
            )
        ops.add(bindings.BY_OPERATION[number].name)
    reasons = frozenset(request.error_reasons)
    if "" in reasons:
        raise errors.InvalidArgument.field(
            "error_reasons", "holds an empty reason; name reasons such as SAFETY_BLOCKED"
        )
    for reason in reasons:
        if not _REASON.fullmatch(reason):
            raise errors.InvalidArgument.field(
                "error_reasons",
                f"holds {reason[:40]!r}, not a reason: reasons are UPPER_SNAKE_CASE codes such "
                "as SAFETY_BLOCKED",
            )
    return JobFilter(frozenset(statuses), frozenset(ops), reasons)


def _job(view: JobView) -> job_pb2.Job:
    return bindings.job(view.job, view.result)


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Serves JobService from the job service."""

    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs

    async def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: Context
    ) -> job_service_pb2.SubmitJobResponse:
        principal = _principal()
        case = request.WhichOneof("operation")
        if case is None:
            raise errors.InvalidArgument.field(
                "operation", f"is required: set one of {', '.join(sorted(bindings.BINDINGS))}"
            )
        binding = bindings.BINDINGS[case]
        operation: Message = getattr(request, case)
        key = request.idempotency_key
        inner = getattr(operation, "idempotency_key", "")
        if key and inner and key != inner:
            raise errors.InvalidArgument.field(
                "idempotency_key",
                f"differs from {case}.idempotency_key; set one of them, or both to the same key",
            )
        submitted = await self._jobs.submit(
            binding.name,
            binding.to_request(operation),
            principal,
            idempotency_key=key or inner,
            delivery=_delivery(request.delivery),
        )
        return job_service_pb2.SubmitJobResponse(
            job=_job(submitted.view), existing=submitted.existing
        )

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Context
    ) -> job_service_pb2.GetJobResponse:
        view = await self._jobs.get(convert.job_id(request.job_id), _principal())
        return job_service_pb2.GetJobResponse(job=_job(view))

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        changes = self._jobs.watch(
            convert.job_id(request.job_id), _principal(), request.after_sequence
        )
        async for sequence, view in changes:
            yield job_service_pb2.WatchJobResponse(sequence=sequence, job=_job(view))

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Context
    ) -> job_service_pb2.CancelJobResponse:
        view = await self._jobs.cancel(convert.job_id(request.job_id), _principal())
        return job_service_pb2.CancelJobResponse(job=_job(view))

    async def RetryJob(
        self, request: job_service_pb2.RetryJobRequest, context: Context
    ) -> job_service_pb2.RetryJobResponse:
        retried = await self._jobs.retry(convert.job_id(request.job_id), _principal())
        return job_service_pb2.RetryJobResponse(job=_job(retried.view), retried=retried.retried)

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            raise errors.InvalidArgument.field(
                "page_size", f"is {size}; the limit is {MAX_PAGE_SIZE}"
            )
        after = decode_page_token(request.page_token) if request.page_token else None
        page = await self._jobs.page(_principal(), _job_filter(request), size, after)
        token = "" if page.next_after is None else encode_page_token(page.next_after)
        return job_service_pb2.ListJobsResponse(
            jobs=[bindings.job(job) for job in page.jobs], next_page_token=token
        )
