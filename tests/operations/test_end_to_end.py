"""Each operation end to end: spec -> real GeminiClient (google-genai over HTTP) -> emulator.

The emulator is the offline Gemini emulator on 127.0.0.1 (fixtures in tests/conftest.py). Its
request counters prove how many upstream calls each outcome took; the usage sink proves what was
recorded and priced.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image as PILImage

from gateway.config import GeminiSettings
from gateway.emulator import EmulatorServer
from gateway.errors import (
    DeadlineExceeded,
    SafetyBlocked,
    UpstreamBadResponse,
    UpstreamRejected,
    UpstreamUnavailable,
)
from gateway.gemini import GeminiClient
from gateway.model import CallLabels
from gateway.operations import (
    ANALYZE_VIDEO,
    CHECK_CHANNEL_CONSISTENCY,
    COMPUTE_ATTENTION_HEATMAP,
    GENERATE_THUMBNAIL,
    SUGGEST_THUMBNAIL_CONCEPTS,
)
from gateway.operations.analyze_video import AnalyzeVideoRequest, VideoAnalysis
from gateway.operations.base import ProgressEvent, ProgressKind, RunContext
from gateway.operations.check_channel_consistency import (
    ChannelConsistency,
    CheckChannelConsistencyRequest,
)
from gateway.operations.compute_attention_heatmap import (
    AttentionHeatmap,
    ComputeAttentionHeatmapRequest,
)
from gateway.operations.generate_thumbnail import (
    GeneratedThumbnails,
    GenerateThumbnailRequest,
    ReferenceImage,
    ReferenceRole,
)
from gateway.operations.images import ImageInput
from gateway.operations.suggest_thumbnail_concepts import (
    SuggestThumbnailConceptsRequest,
    ThumbnailConcepts,
)
from tests.fixtures.usage import UsageCollector

MakeImage = Callable[..., bytes]
VIDEO_ID = "dQw4w9WgXcQ"
MODELS = GeminiSettings()
TEXT_MODEL, IMAGE_MODEL = MODELS.text_model, MODELS.image_model


def context(
    spec: Any, *, deadline: float | None = None, progress: Any = None, text_progress: bool = False
) -> RunContext:
    model = IMAGE_MODEL if spec.model_kind == "image" else TEXT_MODEL
    return RunContext(
        user_id="user-1",
        model=model,
        labels=CallLabels(operation=spec.name, user_id="user-1", request_id="req-1"),
        deadline=deadline,
        progress=progress,
        text_progress=text_progress,
    )


def requests_for(make_image: MakeImage) -> dict[str, Any]:
    """A valid raw request per operation."""
    refs = tuple(ImageInput(make_image("PNG", (320, 180), (40 * i, 90, 200))) for i in range(3))
    return {
        "analyze_video": AnalyzeVideoRequest(VIDEO_ID, "I built a treehouse", "Weekend build"),
        "suggest_thumbnail_concepts": SuggestThumbnailConceptsRequest(
            VIDEO_ID, '{"views": 1200, "impressions": 40000, "ctr": 0.03}'
        ),
        "compute_attention_heatmap": ComputeAttentionHeatmapRequest(
            ImageInput(make_image("JPEG", (1280, 720)), "image/jpeg")
        ),
        "check_channel_consistency": CheckChannelConsistencyRequest(
            ImageInput(make_image("WEBP", (320, 180))), refs, VIDEO_ID
        ),
        "generate_thumbnail": GenerateThumbnailRequest(
            "I built a treehouse in a weekend",
            references=(ReferenceImage(ImageInput(make_image("PNG")), ReferenceRole.FACE),),
        ),
    }


SPECS = [
    ANALYZE_VIDEO,
    SUGGEST_THUMBNAIL_CONCEPTS,
    COMPUTE_ATTENTION_HEATMAP,
    CHECK_CHANNEL_CONSISTENCY,
    GENERATE_THUMBNAIL,
]
TEXT_SPECS = SPECS[:4]
RESULT_TYPES = {
    "analyze_video": VideoAnalysis,
    "suggest_thumbnail_concepts": ThumbnailConcepts,
    "compute_attention_heatmap": AttentionHeatmap,
    "check_channel_consistency": ChannelConsistency,
    "generate_thumbnail": GeneratedThumbnails,
}


async def run(spec: Any, make_image: MakeImage, client: GeminiClient, **ctx: Any) -> Any:
    request = spec.validate(requests_for(make_image)[spec.name])
    return await spec.run(request, client, context(spec, **ctx))


def model_of(spec: Any) -> str:
    return IMAGE_MODEL if spec.model_kind == "image" else TEXT_MODEL


# --- success ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
async def test_operation_succeeds_with_one_priced_call(
    spec: Any,
    make_image: MakeImage,
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    usage_sink: UsageCollector,
) -> None:
    result = await run(spec, make_image, gemini_client)
    assert isinstance(result, RESULT_TYPES[spec.name])
    stats = emulator.stats()
    assert stats.requests == stats.count(model_of(spec), "ok") == 1
    [record] = usage_sink.records
    assert (record.outcome, record.model, record.attempt) == ("ok", model_of(spec), 1)
    assert record.labels.operation == spec.name and record.labels.user_id == "user-1"
    assert record.usage.prompt_tokens > 0 and record.cost_usd > 0
    # The result survives the cache's JSON + blob round trip.
    text, blobs = spec.result_to_json(result), spec.result_blobs(result)
    assert spec.result_from_json(text, blobs) == result


async def test_analyze_video_sends_the_youtube_url_and_the_schema(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    await run(ANALYZE_VIDEO, make_image, gemini_client)
    [sent] = emulator.stats().recent
    assert sent["parts"][0]["uri"] == f"https://www.youtube.com/watch?v={VIDEO_ID}"
    assert sent["response_schema"] == ANALYZE_VIDEO.response_schema
    assert sent["system_instruction"] and sent["modalities"] in (["TEXT"], [])


async def test_images_are_sent_inline_with_their_sniffed_type(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    await run(CHECK_CHANNEL_CONSISTENCY, make_image, gemini_client)
    [sent] = emulator.stats().recent
    inline = [p for p in sent["parts"] if p["kind"] != "text"]
    assert [p["mime_type"] for p in inline] == ["image/png"] * 3 + ["image/webp"]


async def test_text_streams_as_progress_and_adds_up_to_the_answer(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    events: list[ProgressEvent] = []

    async def progress(event: ProgressEvent) -> None:
        events.append(event)

    result = await run(
        SUGGEST_THUMBNAIL_CONCEPTS, make_image, gemini_client, progress=progress, text_progress=True
    )
    assert emulator.stats().recent[0]["stream"] is True
    assert len(events) > 1 and {e.kind for e in events} == {ProgressKind.TEXT}
    streamed = "".join(e.text for e in events)
    assert SUGGEST_THUMBNAIL_CONCEPTS.parse_answer(streamed) == result
    assert 3 <= len(result.concepts) <= 6


async def test_a_listener_that_does_not_want_text_gets_one_unary_call(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    events: list[ProgressEvent] = []

    async def progress(event: ProgressEvent) -> None:
        events.append(event)

    result = await run(SUGGEST_THUMBNAIL_CONCEPTS, make_image, gemini_client, progress=progress)
    assert emulator.stats().recent[0]["stream"] is False
    assert events == [] and 3 <= len(result.concepts) <= 6


async def test_heatmap_overlay_matches_the_thumbnail(
    make_image: MakeImage, gemini_client: GeminiClient
) -> None:
    result = await run(COMPUTE_ATTENTION_HEATMAP, make_image, gemini_client)
    overlay = PILImage.open(io.BytesIO(result.overlay.data))
    assert overlay.format == "PNG" and overlay.size == (1280, 720)
    assert (result.overlay.width, result.overlay.height) == (1280, 720)
    assert 1 <= len(result.regions) <= 10


async def test_consistency_answer_does_not_depend_on_reference_order(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    # The emulator answers as a pure function of the request body: equal answers prove the
    # model saw the same prompt whatever order the caller listed the references in.
    raw = requests_for(make_image)["check_channel_consistency"]
    reordered = CheckChannelConsistencyRequest(raw.target, raw.references[::-1], raw.video_id)
    ctx = context(CHECK_CHANNEL_CONSISTENCY)
    one = await CHECK_CHANNEL_CONSISTENCY.run(
        CHECK_CHANNEL_CONSISTENCY.validate(raw), gemini_client, ctx
    )
    two = await CHECK_CHANNEL_CONSISTENCY.run(
        CHECK_CHANNEL_CONSISTENCY.validate(reordered), gemini_client, ctx
    )
    assert one == two
    assert 0 <= one.score <= 100


async def test_thumbnail_variations_run_one_call_each_and_report_progress(
    make_image: MakeImage,
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    usage_sink: UsageCollector,
) -> None:
    events: list[ProgressEvent] = []

    async def progress(event: ProgressEvent) -> None:
        events.append(event)

    request = GENERATE_THUMBNAIL.validate(
        GenerateThumbnailRequest("Treehouse in a weekend", aspect_ratio="16:9", variations=3)
    )
    result = await GENERATE_THUMBNAIL.run(
        request, gemini_client, context(GENERATE_THUMBNAIL, progress=progress)
    )

    stats = emulator.stats()
    assert stats.count(IMAGE_MODEL, "ok") == stats.requests == 3
    for sent in stats.recent:
        assert sent["modalities"] == ["IMAGE", "TEXT"] and sent["aspect_ratio"] == "16:9"
    assert [v.index for v in result.variations] == [0, 1, 2]
    images = [v.image for v in result.variations]
    assert all(i.format == "png" and i.width > i.height for i in images)
    assert len({i.sha256 for i in images}) == 3, "variations should differ"
    # Image output is priced at the image rate: far above a text answer.
    assert all(r.usage.image_output_tokens > 0 for r in usage_sink.records)
    assert usage_sink.total_cost_usd() > 3 * 1290 * 60 / 1e6 * 0.99

    for index in range(3):
        mine = [e for e in events if e.index == index]
        assert [e.kind for e in mine] == [ProgressKind.STARTED, ProgressKind.IMAGE_READY]
        assert mine[1].image == result.variations[index].image
        assert all(e.total == 3 for e in mine)


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", ["unavailable", "rate_limited", "internal", "malformed"])
async def test_transient_faults_are_retried(
    spec: Any,
    kind: str,
    make_image: MakeImage,
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    usage_sink: UsageCollector,
) -> None:
    emulator.inject(kind, count=1, retry_delay_s=0.01)
    result = await run(spec, make_image, gemini_client)
    assert isinstance(result, RESULT_TYPES[spec.name])
    stats = emulator.stats()
    assert (stats.count(outcome=kind), stats.count(outcome="ok"), stats.requests) == (1, 1, 2)
    assert usage_sink.outcomes()[-1] == "ok" and len(usage_sink.records) == 2


@pytest.mark.parametrize("spec", [ANALYZE_VIDEO, GENERATE_THUMBNAIL], ids=lambda s: s.name)
async def test_persistent_unavailability_stops_at_the_attempt_limit(
    spec: Any,
    make_image: MakeImage,
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    gemini_settings: GeminiSettings,
) -> None:
    emulator.inject("unavailable", count=100)
    with pytest.raises(UpstreamUnavailable):
        await run(spec, make_image, gemini_client)
    assert emulator.stats().requests == gemini_settings.max_attempts


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
async def test_rejections_are_not_retried(
    spec: Any, make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    emulator.inject("error", count=5, code=400)
    with pytest.raises(UpstreamRejected):
        await run(spec, make_image, gemini_client)
    assert emulator.stats().requests == 1


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("kind", ["safety", "prompt_blocked"])
async def test_safety_blocks_are_final(
    spec: Any,
    kind: str,
    make_image: MakeImage,
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
) -> None:
    emulator.inject(kind, count=5)
    with pytest.raises(SafetyBlocked):
        await run(spec, make_image, gemini_client)
    assert emulator.stats().requests == 1


async def test_image_safety_block_is_final(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    emulator.inject("image_safety", count=5)
    with pytest.raises(SafetyBlocked):
        await run(GENERATE_THUMBNAIL, make_image, gemini_client)
    assert emulator.stats().requests == 1


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=lambda s: s.name)
async def test_an_answer_outside_the_schema_is_retried_once(
    spec: Any, make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    emulator.inject("invalid_answer", count=1)
    result = await run(spec, make_image, gemini_client)
    assert isinstance(result, RESULT_TYPES[spec.name])
    assert emulator.stats().requests == 2


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=lambda s: s.name)
async def test_two_answers_outside_the_schema_fail_clearly(
    spec: Any, make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    emulator.inject("invalid_answer", count=5)
    with pytest.raises(UpstreamBadResponse) as info:
        await run(spec, make_image, gemini_client)
    assert spec.name in info.value.message
    assert emulator.stats().requests == 2


async def test_a_failed_variation_fails_the_whole_generation(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    emulator.inject("error", count=1, code=400)
    request = GENERATE_THUMBNAIL.validate(GenerateThumbnailRequest("x", variations=4))
    with pytest.raises(UpstreamRejected):
        await GENERATE_THUMBNAIL.run(request, gemini_client, context(GENERATE_THUMBNAIL))
    # Every variation was asked for once; none was retried after the rejection.
    assert emulator.stats().requests <= 4


async def test_mid_stream_failures_are_retried_from_the_start(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    events: list[ProgressEvent] = []

    async def progress(event: ProgressEvent) -> None:
        events.append(event)

    emulator.inject("midstream", count=1)
    result = await run(ANALYZE_VIDEO, make_image, gemini_client, progress=progress)
    assert emulator.stats().requests == 2
    assert isinstance(result, VideoAnalysis)


@pytest.mark.parametrize("spec", [ANALYZE_VIDEO, GENERATE_THUMBNAIL], ids=lambda s: s.name)
async def test_the_deadline_is_respected(
    spec: Any, make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    emulator.set_knobs(hang_s=30.0)
    emulator.inject("hang", count=100)
    # Long enough for the first attempt to reach the emulator on a busy machine.
    with pytest.raises(DeadlineExceeded):
        await run(spec, make_image, gemini_client, deadline=time.monotonic() + 3.0)
    # The one attempt that hung used the whole budget: no retry was started past the deadline.
    assert emulator.stats().requests == 1


async def test_a_deadline_already_past_makes_no_call(
    make_image: MakeImage, emulator: EmulatorServer, gemini_client: GeminiClient
) -> None:
    with pytest.raises(DeadlineExceeded):
        await run(ANALYZE_VIDEO, make_image, gemini_client, deadline=time.monotonic() - 1)
    assert emulator.stats().requests == 0
