"""Protobuf messages <-> domain types: the shapes several operations and the job messages share.

Images in and out, response metadata, pending job handles and jobs. Each operation's own
request and result conversions live beside its binding (`gateway.rpc.bindings.<operation>`).
Only shapes change, here and there: every rule about what is acceptable lives in the operation
specs' `validate`, so a request built from any client goes through the same checks. Enum values
a caller left UNSPECIFIED become None (or "") and are refused there with the field named.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from viewbait.ai.v1 import common_pb2, job_pb2

from gateway.errors import InvalidArgument
from gateway.execution import Pending, Spend
from gateway.model import Usage
from gateway.operations.images import Image, ImageInput
from gateway.rpc.status import status_code
from gateway.store.base import AttemptError, Job, JobError, JobProgress, JobStatus

_IMAGE_FORMATS = {
    "png": common_pb2.IMAGE_FORMAT_PNG,
    "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
    "webp": common_pb2.IMAGE_FORMAT_WEBP,
    "gif": common_pb2.IMAGE_FORMAT_GIF,
}
_JOB_STATUSES = {
    JobStatus.QUEUED: job_pb2.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: job_pb2.JOB_STATUS_RUNNING,
    JobStatus.SUCCEEDED: job_pb2.JOB_STATUS_SUCCEEDED,
    JobStatus.FAILED: job_pb2.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: job_pb2.JOB_STATUS_CANCELLED,
}


# --- images ---------------------------------------------------------------------------------


def image_input(message: common_pb2.Image) -> ImageInput:
    """A caller's image; sniffed and checked later by the spec."""
    return ImageInput(data=message.data, mime_type=message.mime_type)


def output_image(image: Image) -> common_pb2.OutputImage:
    """An image the gateway produced, with its sniffed facts."""
    return common_pb2.OutputImage(
        image=common_pb2.Image(data=image.data, mime_type=image.mime_type),
        format=_IMAGE_FORMATS[image.format],
        width=image.width,
        height=image.height,
        sha256=image.sha256.hex(),
    )


# --- answers and jobs -----------------------------------------------------------------------


def token_counts(usage: Usage) -> dict[str, int]:
    """Token counts by kind, as the fields of every message that reports them are named."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "cached_prompt_tokens": usage.cached_prompt_tokens,
        "output_tokens": usage.output_tokens,
        "thinking_tokens": usage.thinking_tokens,
        "image_output_tokens": usage.image_output_tokens,
        "total_tokens": usage.total_tokens,
    }


def response_metadata(
    request_id: str, *, model: str, spend: Spend, cached: bool = False, coalesced: bool = False
) -> common_pb2.ResponseMetadata:
    """How an answer was produced (an answer that cost nothing, a cache hit, leaves `usage`
    unset: all zeros)."""
    u = spend.usage
    if not spend.upstream_calls and not u.total_tokens and not spend.cost_usd:
        return common_pb2.ResponseMetadata(
            request_id=request_id, cached=cached, coalesced=coalesced, model=model
        )
    return common_pb2.ResponseMetadata(
        request_id=request_id,
        cached=cached,
        coalesced=coalesced,
        model=model,
        usage=common_pb2.Usage(
            **token_counts(u),
            cost_usd=spend.cost_usd,
            upstream_calls=spend.upstream_calls,
        ),
    )


def _progress(progress: JobProgress | None) -> common_pb2.Progress | None:
    if progress is None:
        return None
    return common_pb2.Progress(
        fraction=progress.fraction, stage=progress.stage, message=progress.message
    )


def pending_job(pending: Pending) -> job_pb2.PendingJob:
    """The handle of work that did not finish within the long-poll window."""
    return job_pb2.PendingJob(
        job_id=pending.job_id,
        status=_JOB_STATUSES[pending.status],
        progress=_progress(pending.progress),
    )


def _timestamp(at: datetime | None) -> timestamp_pb2.Timestamp | None:
    if at is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def job_error(error: JobError) -> job_pb2.JobError:
    """A stored job error in RPC terms: the code the same failure would have as an RPC error."""
    code = status_code(error.to_exception())
    return job_pb2.JobError(code=code.value[0], reason=error.reason, message=error.message)


def attempt_error(failed: AttemptError) -> job_pb2.JobAttemptError:
    """One failed attempt of a job's error history."""
    return job_pb2.JobAttemptError(
        attempt=failed.attempt,
        error=job_error(failed.error),
        time=_timestamp(failed.at),
        worker=failed.worker,
    )


def job_metadata(row: Job) -> common_pb2.ResponseMetadata:
    """How a succeeded job's result was produced: from the cache, or by joining an execution
    another user started (`coalesced`: its owner paid nothing, so its usage is zero, as a unary
    join's), the model, and the tokens, cost and upstream calls of every attempt."""
    spend = Spend()
    if not row.coalesced:
        spent = row.spend
        spend = Spend(
            usage=spent.usage, cost_usd=spent.cost_usd, upstream_calls=spent.upstream_calls
        )
    return response_metadata(
        "", model=row.model, spend=spend, cached=row.cached, coalesced=row.coalesced
    )


def job(
    row: Job, operation: common_pb2.Operation.ValueType, result: Message | None = None
) -> job_pb2.Job:
    """A job as its owner sees it: `operation` is its `Operation` value, `result` its result
    message (None: left out), set in the `Job.result` case named like the operation.

    `run_after_time` is set only for a queued job that waits out a delay.
    """
    message = job_pb2.Job(
        id=row.id,
        operation=operation,
        status=_JOB_STATUSES[row.status],
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        progress=_progress(row.progress),
        error=None if row.error is None else job_error(row.error),
        idempotency_key=row.idempotency_key or "",
        create_time=_timestamp(row.created_at),
        start_time=_timestamp(row.started_at),
        end_time=_timestamp(row.completed_at),
        run_after_time=_timestamp(
            row.run_after
            if row.status is JobStatus.QUEUED and row.run_after > row.created_at
            else None
        ),
        error_history=[attempt_error(failed) for failed in row.error_history],
    )
    if row.status is JobStatus.SUCCEEDED:
        message.metadata.CopyFrom(job_metadata(row))
        if result is not None:
            getattr(message, row.op).CopyFrom(result)
    return message


def job_id(value: str) -> str:
    """A job id from a request; refuses an empty one (an unknown one is NOT_FOUND later)."""
    if not value:
        raise InvalidArgument.field("job_id", "is required")
    return value
