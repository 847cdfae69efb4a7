"""Protobuf messages <-> the operations' domain types.

Only shapes change here: every rule about what is acceptable lives in the operation specs'
`validate`, so a request built from any client goes through the same checks. Enum values a
caller left UNSPECIFIED become None (or "") and are refused there with the field named.
"""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from viewbait.ai.v1 import common_pb2, job_pb2, operations_pb2

from gateway.errors import InvalidArgument
from gateway.execution import Pending, Spend
from gateway.operations.analyze_video import AnalyzeVideoRequest, VideoAnalysis
from gateway.operations.check_channel_consistency import (
    ChannelConsistency,
    CheckChannelConsistencyRequest,
    Verdict,
)
from gateway.operations.compute_attention_heatmap import (
    AttentionElement,
    AttentionHeatmap,
    ComputeAttentionHeatmapRequest,
)
from gateway.operations.generate_thumbnail import (
    DEFAULT_ASPECT_RATIO,
    GeneratedThumbnails,
    GenerateThumbnailRequest,
    ReferenceImage,
    ReferenceRole,
    StylePreset,
    ThumbnailVariation,
)
from gateway.operations.images import Image, ImageInput
from gateway.operations.suggest_thumbnail_concepts import (
    SuggestThumbnailConceptsRequest,
    ThumbnailConcepts,
)
from gateway.rpc.status import status_code
from gateway.store.base import Job, JobError, JobProgress, JobStatus

_IMAGE_FORMATS = {
    "png": common_pb2.IMAGE_FORMAT_PNG,
    "jpeg": common_pb2.IMAGE_FORMAT_JPEG,
    "webp": common_pb2.IMAGE_FORMAT_WEBP,
    "gif": common_pb2.IMAGE_FORMAT_GIF,
}
_ROLES = {
    operations_pb2.REFERENCE_ROLE_FACE: ReferenceRole.FACE,
    operations_pb2.REFERENCE_ROLE_STYLE: ReferenceRole.STYLE,
}
_ELEMENTS = {
    AttentionElement.FACE: operations_pb2.ATTENTION_ELEMENT_FACE,
    AttentionElement.TEXT: operations_pb2.ATTENTION_ELEMENT_TEXT,
    AttentionElement.OBJECT: operations_pb2.ATTENTION_ELEMENT_OBJECT,
    AttentionElement.LOGO: operations_pb2.ATTENTION_ELEMENT_LOGO,
    AttentionElement.BACKGROUND: operations_pb2.ATTENTION_ELEMENT_BACKGROUND,
    AttentionElement.OTHER: operations_pb2.ATTENTION_ELEMENT_OTHER,
}
_VERDICTS = {
    Verdict.CONSISTENT: operations_pb2.CONSISTENCY_VERDICT_CONSISTENT,
    Verdict.PARTLY_CONSISTENT: operations_pb2.CONSISTENCY_VERDICT_PARTLY_CONSISTENT,
    Verdict.INCONSISTENT: operations_pb2.CONSISTENCY_VERDICT_INCONSISTENT,
}
_JOB_STATUSES = {
    JobStatus.QUEUED: job_pb2.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: job_pb2.JOB_STATUS_RUNNING,
    JobStatus.SUCCEEDED: job_pb2.JOB_STATUS_SUCCEEDED,
    JobStatus.FAILED: job_pb2.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: job_pb2.JOB_STATUS_CANCELLED,
}
_DIMENSIONS = (
    ("palette", operations_pb2.CONSISTENCY_DIMENSION_PALETTE),
    ("typography", operations_pb2.CONSISTENCY_DIMENSION_TYPOGRAPHY),
    ("faces", operations_pb2.CONSISTENCY_DIMENSION_FACES),
    ("composition", operations_pb2.CONSISTENCY_DIMENSION_COMPOSITION),
    ("branding", operations_pb2.CONSISTENCY_DIMENSION_BRANDING),
)


# --- requests -------------------------------------------------------------------------------


def image_input(message: common_pb2.Image) -> ImageInput:
    """A caller's image; sniffed and checked later by the spec."""
    return ImageInput(data=message.data, mime_type=message.mime_type)


def generate_thumbnail_request(
    message: operations_pb2.GenerateThumbnailRequest,
) -> GenerateThumbnailRequest:
    """GenerateThumbnail's domain request ("" / 0 mean the documented defaults)."""
    style: StylePreset | str | None = message.style_preset or None
    references = tuple(
        ReferenceImage(image_input(ref.image), _ROLES.get(ref.role))  # type: ignore[arg-type]
        for ref in message.references
    )
    return GenerateThumbnailRequest(
        prompt=message.prompt,
        style_preset=style,  # type: ignore[arg-type]
        references=references,
        aspect_ratio=message.aspect_ratio or DEFAULT_ASPECT_RATIO,
        variations=message.variations or 1,
    )


def analyze_video_request(message: operations_pb2.AnalyzeVideoRequest) -> AnalyzeVideoRequest:
    """AnalyzeVideo's domain request."""
    return AnalyzeVideoRequest(
        video_id=message.video_id, title=message.title, description=message.description
    )


def suggest_thumbnail_concepts_request(
    message: operations_pb2.SuggestThumbnailConceptsRequest,
) -> SuggestThumbnailConceptsRequest:
    """SuggestThumbnailConcepts' domain request."""
    return SuggestThumbnailConceptsRequest(
        video_id=message.video_id, analytics_json=message.analytics_json
    )


def compute_attention_heatmap_request(
    message: operations_pb2.ComputeAttentionHeatmapRequest,
) -> ComputeAttentionHeatmapRequest:
    """ComputeAttentionHeatmap's domain request."""
    return ComputeAttentionHeatmapRequest(image=image_input(message.image))


def check_channel_consistency_request(
    message: operations_pb2.CheckChannelConsistencyRequest,
) -> CheckChannelConsistencyRequest:
    """CheckChannelConsistency's domain request."""
    return CheckChannelConsistencyRequest(
        target=image_input(message.target),
        references=tuple(image_input(ref) for ref in message.references),
        video_id=message.video_id,
    )


# --- results --------------------------------------------------------------------------------


def output_image(image: Image) -> common_pb2.OutputImage:
    """An image the gateway produced, with its sniffed facts."""
    return common_pb2.OutputImage(
        image=common_pb2.Image(data=image.data, mime_type=image.mime_type),
        format=_IMAGE_FORMATS[image.format],
        width=image.width,
        height=image.height,
        sha256=image.sha256.hex(),
    )


def generated_thumbnail(variation: ThumbnailVariation) -> operations_pb2.GeneratedThumbnail:
    """One generated variation."""
    return operations_pb2.GeneratedThumbnail(
        index=variation.index, image=output_image(variation.image), text=variation.text
    )


def video_analysis(result: VideoAnalysis) -> operations_pb2.VideoAnalysis:
    """AnalyzeVideo's result."""
    return operations_pb2.VideoAnalysis(
        summary=result.summary,
        topics=result.topics,
        hook_moments=[
            operations_pb2.HookMoment(timestamp_seconds=m.timestamp_s, description=m.description)
            for m in result.hook_moments
        ],
        audience=result.audience,
        tone=result.tone,
        recommended_thumbnail_elements=result.recommended_thumbnail_elements,
    )


def thumbnail_concepts(result: ThumbnailConcepts) -> operations_pb2.ThumbnailConcepts:
    """SuggestThumbnailConcepts' result."""
    return operations_pb2.ThumbnailConcepts(
        concepts=[
            operations_pb2.ThumbnailConcept(
                headline=c.headline_text,
                composition=c.composition,
                palette=c.palette,
                emotion=c.emotion,
                rationale=c.rationale,
            )
            for c in result.concepts
        ]
    )


def _clip(low: float, high: float) -> tuple[float, float]:
    low, high = max(0.0, low), min(1.0, high)
    return low, max(0.0, high - low)


def attention_heatmap(result: AttentionHeatmap) -> operations_pb2.AttentionHeatmap:
    """ComputeAttentionHeatmap's result; regions centred on their peak become boxes clipped to
    the image."""
    regions = []
    for r in result.regions:
        x, width = _clip(r.x - r.width / 2, r.x + r.width / 2)
        y, height = _clip(r.y - r.height / 2, r.y + r.height / 2)
        regions.append(
            operations_pb2.AttentionRegion(
                label=r.label,
                weight=r.weight,
                box=operations_pb2.NormalizedBox(x=x, y=y, width=width, height=height),
                element=_ELEMENTS[r.element],
            )
        )
    return operations_pb2.AttentionHeatmap(regions=regions, heatmap=output_image(result.overlay))


def channel_consistency(result: ChannelConsistency) -> operations_pb2.ChannelConsistency:
    """CheckChannelConsistency's result, one finding per dimension in enum order."""
    findings = []
    for name, dimension in _DIMENSIONS:
        finding = getattr(result.findings, name)
        findings.append(
            operations_pb2.ConsistencyFinding(
                dimension=dimension,
                score=finding.score,
                finding=finding.finding,
                suggestion=finding.suggestion,
            )
        )
    return operations_pb2.ChannelConsistency(
        score=result.score,
        verdict=_VERDICTS[result.verdict],
        summary=result.summary,
        findings=findings,
    )


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
            prompt_tokens=u.prompt_tokens,
            cached_prompt_tokens=u.cached_prompt_tokens,
            output_tokens=u.output_tokens,
            thinking_tokens=u.thinking_tokens,
            image_output_tokens=u.image_output_tokens,
            total_tokens=u.total_tokens,
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


def generate_thumbnail_result(
    result: GeneratedThumbnails,
) -> operations_pb2.GenerateThumbnailResult:
    """All variations of a finished GenerateThumbnail, in order."""
    return operations_pb2.GenerateThumbnailResult(
        thumbnails=[generated_thumbnail(v) for v in result.variations]
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
    )
    if row.status is JobStatus.SUCCEEDED:
        message.metadata.CopyFrom(common_pb2.ResponseMetadata(model=row.model))
        if result is not None:
            getattr(message, row.op).CopyFrom(result)
    return message


def job_id(value: str) -> str:
    """A job id from a request; refuses an empty one (an unknown one is NOT_FOUND later)."""
    if not value:
        raise InvalidArgument.field("job_id", "is required")
    return value
