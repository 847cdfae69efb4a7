"""Results to cache JSON and back: images travel as blobs, JSON holds only their references."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway import native
from gateway.operations import (
    ANALYZE_VIDEO,
    CHECK_CHANNEL_CONSISTENCY,
    COMPUTE_ATTENTION_HEATMAP,
    GENERATE_THUMBNAIL,
    SUGGEST_THUMBNAIL_CONCEPTS,
)
from gateway.operations.analyze_video import HookMoment, VideoAnalysis
from gateway.operations.check_channel_consistency import (
    ChannelConsistency,
    ConsistencyFindings,
    DimensionFinding,
    Verdict,
)
from gateway.operations.codec import DecodeError
from gateway.operations.compute_attention_heatmap import (
    AttentionAnswer,
    AttentionElement,
    AttentionRegion,
    ComputeAttentionHeatmapRequest,
)
from gateway.operations.generate_thumbnail import GeneratedThumbnails, ThumbnailVariation
from gateway.operations.images import Image, ImageInput
from gateway.operations.suggest_thumbnail_concepts import ThumbnailConcept, ThumbnailConcepts

MakeImage = Callable[..., bytes]


def image(data: bytes) -> Image:
    return Image.from_info(data, native.inspect_image(data))


def heatmap_result(make_image: MakeImage) -> Any:
    request = COMPUTE_ATTENTION_HEATMAP.validate(
        ComputeAttentionHeatmapRequest(ImageInput(make_image("JPEG", (320, 180))))
    )
    region = AttentionRegion("face", AttentionElement.FACE, 0.7, 0.5, 0.5, 0.2, 0.3)
    return COMPUTE_ATTENTION_HEATMAP.finish(request, AttentionAnswer((region,)))


def thumbnails_result(make_image: MakeImage) -> GeneratedThumbnails:
    return GeneratedThumbnails(
        tuple(
            ThumbnailVariation(i, image(make_image("PNG", (1344, 768), (i, 80, 160))), f"v{i}")
            for i in range(3)
        )
    )


TEXT_RESULTS: list[tuple[Any, Any]] = [
    (
        ANALYZE_VIDEO,
        VideoAnalysis("s", ("a", "b"), (HookMoment(1.5, "d"),), "aud", "tone", ("x",)),
    ),
    (
        SUGGEST_THUMBNAIL_CONCEPTS,
        ThumbnailConcepts(
            tuple(ThumbnailConcept(f"h{i}", "c", ("red",), "e", "r") for i in range(3))
        ),
    ),
    (
        CHECK_CHANNEL_CONSISTENCY,
        ChannelConsistency(
            88,
            Verdict.CONSISTENT,
            "fits",
            ConsistencyFindings(*(DimensionFinding(90, f"f{i}", "") for i in range(5))),
        ),
    ),
]


@pytest.mark.parametrize(("spec", "result"), TEXT_RESULTS, ids=lambda x: getattr(x, "name", ""))
def test_text_results_round_trip_without_blobs(spec: Any, result: Any) -> None:
    text = spec.result_to_json(result)
    assert spec.result_blobs(result) == {}
    assert spec.result_from_json(text, {}) == result
    # Equal results give identical text (the store may compare or deduplicate it).
    assert spec.result_to_json(spec.result_from_json(text, {})) == text


def test_images_go_to_blobs_and_json_holds_references(make_image: MakeImage) -> None:
    result = thumbnails_result(make_image)
    text = GENERATE_THUMBNAIL.result_to_json(result)
    blobs = GENERATE_THUMBNAIL.result_blobs(result)
    assert len(text) < 2000, "image bytes leaked into the JSON"
    assert blobs == {v.image.sha256: v.image.data for v in result.variations}
    reference = json.loads(text)["variations"][0]["image"]
    first = result.variations[0].image
    assert reference == {
        "sha256": hashlib.sha256(first.data).hexdigest(),
        "mime_type": "image/png",
        "format": "png",
        "size": len(first.data),
        "width": 1344,
        "height": 768,
    }
    assert GENERATE_THUMBNAIL.result_from_json(text, blobs) == result


def test_heatmap_result_round_trips_with_its_overlay(make_image: MakeImage) -> None:
    result = heatmap_result(make_image)
    text = COMPUTE_ATTENTION_HEATMAP.result_to_json(result)
    blobs = COMPUTE_ATTENTION_HEATMAP.result_blobs(result)
    assert list(blobs) == [result.overlay.sha256]
    assert COMPUTE_ATTENTION_HEATMAP.result_from_json(text, blobs) == result


def test_missing_or_corrupt_blobs_are_refused(make_image: MakeImage) -> None:
    result = heatmap_result(make_image)
    text = COMPUTE_ATTENTION_HEATMAP.result_to_json(result)
    digest = result.overlay.sha256
    with pytest.raises(DecodeError, match="missing"):
        COMPUTE_ATTENTION_HEATMAP.result_from_json(text, {})
    tampered = bytearray(result.overlay.data)
    tampered[-20] ^= 0xFF
    with pytest.raises(DecodeError, match="does not match"):
        COMPUTE_ATTENTION_HEATMAP.result_from_json(text, {digest: bytes(tampered)})
    with pytest.raises(DecodeError, match="does not match"):
        COMPUTE_ATTENTION_HEATMAP.result_from_json(text, {digest: result.overlay.data + b"\x00"})


@pytest.mark.parametrize(
    "mangle",
    [
        lambda d: d.pop("summary"),
        lambda d: d.update(extra=1),
        lambda d: d.update(verdict="amazing"),
        lambda d: d.update(score="88"),
        lambda d: d["findings"].pop("faces"),
    ],
)
def test_stored_json_that_does_not_fit_is_refused(mangle: Callable[[Any], None]) -> None:
    spec, result = TEXT_RESULTS[2]
    data = json.loads(spec.result_to_json(result))
    mangle(data)
    with pytest.raises(DecodeError):
        spec.result_from_json(json.dumps(data), {})


def test_stored_text_that_is_not_json_is_refused() -> None:
    with pytest.raises(DecodeError, match="not JSON"):
        ANALYZE_VIDEO.result_from_json("{", {})
