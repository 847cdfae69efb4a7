"""Request validation: every bound refuses with INVALID_ARGUMENT naming the field and the bound."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.config import InputBounds, Settings
from gateway.errors import InvalidArgument
from gateway.operations import (
    ANALYZE_VIDEO,
    CHECK_CHANNEL_CONSISTENCY,
    COMPUTE_ATTENTION_HEATMAP,
    GENERATE_THUMBNAIL,
    SUGGEST_THUMBNAIL_CONCEPTS,
)
from gateway.operations.analyze_video import AnalyzeVideoRequest
from gateway.operations.check_channel_consistency import CheckChannelConsistencyRequest
from gateway.operations.compute_attention_heatmap import ComputeAttentionHeatmapRequest
from gateway.operations.generate_thumbnail import (
    GenerateThumbnailRequest,
    ReferenceImage,
    ReferenceRole,
    StylePreset,
)
from gateway.operations.images import ImageInput
from gateway.operations.suggest_thumbnail_concepts import SuggestThumbnailConceptsRequest

VIDEO_ID = "dQw4w9WgXcQ"
MakeImage = Callable[..., bytes]


def refused(spec: Any, request: Any, bounds: InputBounds | None = None) -> dict[str, str]:
    """Validates `request`, expecting refusal; returns field path -> description."""
    with pytest.raises(InvalidArgument) as info:
        spec.validate(request, bounds or InputBounds())
    fields = {v.field: v.description for v in info.value.violations}
    assert len(fields) == len(info.value.violations), "one violation per field"
    for field, description in fields.items():
        assert f"{field}: {description}" in info.value.message
    return fields


# --- AnalyzeVideo ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "video_id", ["", "dQw4w9WgXc", "dQw4w9WgXcQQ", "dQw4w9WgXc!", "dQw4w9 gXcQ", "dQw4w9WgXcé"]
)
def test_analyze_refuses_malformed_video_ids(video_id: str) -> None:
    fields = refused(ANALYZE_VIDEO, AnalyzeVideoRequest(video_id))
    assert list(fields) == ["video_id"]
    assert "11 characters" in fields["video_id"]


def test_analyze_accepts_every_id_alphabet_character() -> None:
    for video_id in ("abcdefghijk", "LMNOPQRSTUV", "0123456789_", "-_-_-_-_-_-"):
        assert ANALYZE_VIDEO.validate(AnalyzeVideoRequest(video_id)).video_id == video_id


def test_analyze_bounds_title_and_description_and_reports_all_at_once() -> None:
    bounds = InputBounds(max_title_chars=10, max_description_chars=20)
    fields = refused(ANALYZE_VIDEO, AnalyzeVideoRequest("short", "t" * 11, "d" * 21), bounds)
    assert set(fields) == {"video_id", "title", "description"}
    assert "the limit is 10" in fields["title"]
    assert "the limit is 20" in fields["description"]


def test_analyze_strips_hints_and_keeps_them_at_the_limit() -> None:
    bounds = InputBounds(max_title_chars=10)
    checked = ANALYZE_VIDEO.validate(AnalyzeVideoRequest(VIDEO_ID, "  " + "t" * 10 + "\n"), bounds)
    assert checked == AnalyzeVideoRequest(VIDEO_ID, "t" * 10, "")


def test_analyze_refuses_nul_in_text() -> None:
    assert "NUL" in refused(ANALYZE_VIDEO, AnalyzeVideoRequest(VIDEO_ID, "a\x00b"))["title"]


# --- SuggestThumbnailConcepts ----------------------------------------------------------------


def test_suggest_accepts_an_analytics_object_in_its_canonical_form() -> None:
    request = SuggestThumbnailConceptsRequest(VIDEO_ID, ' {"views": 10, "ctr": 0.05} ')
    assert SUGGEST_THUMBNAIL_CONCEPTS.validate(request) == SuggestThumbnailConceptsRequest(
        VIDEO_ID, '{"ctr":0.05,"views":10}'
    )


def test_suggest_bounds_the_canonical_analytics_the_model_reads_too() -> None:
    # 4 characters that canonical JSON writes as 21: the bound holds for what the model reads.
    text = "{" + ",".join(f'"{i:02d}":1e20' for i in range(30)) + "}"
    assert len(text) <= 400
    bounds = InputBounds(max_analytics_json_bytes=400)
    with pytest.raises(InvalidArgument) as info:
        SUGGEST_THUMBNAIL_CONCEPTS.validate(SuggestThumbnailConceptsRequest(VIDEO_ID, text), bounds)
    assert "canonical JSON form" in info.value.violations[0].description
    assert info.value.violations[0].field == "analytics_json"


@pytest.mark.parametrize("text", ["[1, 2]", "42", '"views"', "null", "true"])
def test_suggest_refuses_analytics_that_are_not_an_object(text: str) -> None:
    fields = refused(SUGGEST_THUMBNAIL_CONCEPTS, SuggestThumbnailConceptsRequest(VIDEO_ID, text))
    assert fields == {"analytics_json": "must be a JSON object"}


@pytest.mark.parametrize("text", ["", "{", '{"views": }', "{'views': 1}", '{"a": NaN}'])
def test_suggest_refuses_analytics_that_are_not_json(text: str) -> None:
    fields = refused(SUGGEST_THUMBNAIL_CONCEPTS, SuggestThumbnailConceptsRequest(VIDEO_ID, text))
    assert list(fields) == ["analytics_json"]
    assert "not acceptable JSON" in fields["analytics_json"]


def test_suggest_bounds_analytics_size_in_utf8_bytes() -> None:
    bounds = InputBounds(max_analytics_json_bytes=16)
    fits = '{"k":"' + "é" * 4 + '"}'  # 16 bytes, 12 characters
    assert len(fits.encode()) == 16
    SUGGEST_THUMBNAIL_CONCEPTS.validate(SuggestThumbnailConceptsRequest(VIDEO_ID, fits), bounds)
    too_big = '{"k":"' + "é" * 5 + '"}'
    fields = refused(
        SUGGEST_THUMBNAIL_CONCEPTS, SuggestThumbnailConceptsRequest("bad", too_big), bounds
    )
    assert fields["analytics_json"] == "is 18 bytes; the limit is 16 bytes"
    assert "video_id" in fields


# --- images (ComputeAttentionHeatmap exercises the shared image checks) ----------------------


def heatmap(data: bytes, mime_type: str = "") -> ComputeAttentionHeatmapRequest:
    return ComputeAttentionHeatmapRequest(ImageInput(data, mime_type))


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp")])
def test_images_are_sniffed_not_trusted(make_image: MakeImage, fmt: str, mime: str) -> None:
    data = make_image(fmt, (320, 180))
    checked = COMPUTE_ATTENTION_HEATMAP.validate(heatmap(data))
    image = checked.image.verified
    assert (image.format, image.width, image.height) == (mime, 320, 180)
    assert image.mime_type == f"image/{mime}"
    assert image.data is data


def test_unvalidated_images_cannot_be_used(make_image: MakeImage) -> None:
    with pytest.raises(RuntimeError, match="validated"):
        _ = ImageInput(make_image()).verified


def test_images_refuse_empty_and_garbage_bytes() -> None:
    assert "empty" in refused(COMPUTE_ATTENTION_HEATMAP, heatmap(b""))["image.data"]
    assert list(refused(COMPUTE_ATTENTION_HEATMAP, heatmap(b"<html>not an image</html>"))) == [
        "image.data"
    ]


def test_images_refuse_truncated_files(make_image: MakeImage) -> None:
    data = make_image("PNG", (64, 64))
    assert list(refused(COMPUTE_ATTENTION_HEATMAP, heatmap(data[:20]))) == ["image.data"]


def test_images_refuse_gif_which_gemini_does_not_take(make_image: MakeImage) -> None:
    fields = refused(COMPUTE_ATTENTION_HEATMAP, heatmap(make_image("GIF")))
    assert fields == {"image.data": "image is GIF; send PNG, JPEG or WebP"}


def test_images_bound_bytes(make_image: MakeImage) -> None:
    data = make_image("PNG", (64, 64), noise_seed=1)
    bounds = InputBounds(max_image_bytes=1024)
    assert len(data) > 1024
    fields = refused(COMPUTE_ATTENTION_HEATMAP, heatmap(data), bounds)
    assert fields["image.data"] == f"image is {len(data)} bytes; the limit is 1024 bytes"


def test_images_bound_pixel_sides(make_image: MakeImage) -> None:
    bounds = InputBounds(max_image_side=100)
    COMPUTE_ATTENTION_HEATMAP.validate(heatmap(make_image("PNG", (100, 40))), bounds)
    for size in ((101, 40), (40, 101)):
        fields = refused(COMPUTE_ATTENTION_HEATMAP, heatmap(make_image("PNG", size)), bounds)
        assert list(fields) == ["image.data"]
        assert "100" in fields["image.data"]


def test_declared_mime_type_must_match_the_bytes(make_image: MakeImage) -> None:
    png = make_image("PNG")
    fields = refused(COMPUTE_ATTENTION_HEATMAP, heatmap(png, "image/jpeg"))
    assert list(fields) == ["image.mime_type"]
    assert "image/png" in fields["image.mime_type"]
    COMPUTE_ATTENTION_HEATMAP.validate(heatmap(png, " Image/PNG "))
    COMPUTE_ATTENTION_HEATMAP.validate(heatmap(make_image("JPEG"), "image/jpg"))


# --- CheckChannelConsistency -----------------------------------------------------------------


def consistency(refs: list[bytes], video_id: str = "", target: bytes | None = None) -> Any:
    # The target defaults to the first reference's bytes: a valid image the test does not vary.
    return CheckChannelConsistencyRequest(
        ImageInput(target or (refs[0] if refs else b"")),
        tuple(ImageInput(r) for r in refs),
        video_id,
    )


def test_consistency_bounds_reference_count(make_image: MakeImage) -> None:
    bounds = InputBounds(max_consistency_references=3)
    assert (
        "between 1 and 3"
        in refused(CHECK_CHANNEL_CONSISTENCY, consistency([]), bounds)["references"]
    )
    refs = [make_image(color=(i, i, i)) for i in range(4)]
    fields = refused(CHECK_CHANNEL_CONSISTENCY, consistency(refs), bounds)
    assert fields == {"references": "has 4 items; send between 1 and 3"}
    CHECK_CHANNEL_CONSISTENCY.validate(consistency(refs[:3]), bounds)


def test_consistency_default_allows_twelve_references(make_image: MakeImage) -> None:
    refs = [make_image(color=(i, 0, 0)) for i in range(13)]
    CHECK_CHANNEL_CONSISTENCY.validate(consistency(refs[:12]))
    assert "references" in refused(CHECK_CHANNEL_CONSISTENCY, consistency(refs))


def test_consistency_names_each_bad_image(make_image: MakeImage) -> None:
    refs = [make_image(), b"nope", make_image("GIF")]
    fields = refused(CHECK_CHANNEL_CONSISTENCY, consistency(refs, target=b"garbage"))
    assert set(fields) == {"target.data", "references[1].data", "references[2].data"}


def test_consistency_video_id_is_optional_but_checked(make_image: MakeImage) -> None:
    CHECK_CHANNEL_CONSISTENCY.validate(consistency([make_image()]))
    CHECK_CHANNEL_CONSISTENCY.validate(consistency([make_image()], VIDEO_ID))
    assert "video_id" in refused(CHECK_CHANNEL_CONSISTENCY, consistency([make_image()], "x"))


def test_consistency_bounds_total_image_bytes(make_image: MakeImage) -> None:
    refs = [make_image("PNG", (64, 64), noise_seed=i) for i in range(3)]
    target = make_image("PNG", (64, 64), noise_seed=9)
    total = len(target) + sum(map(len, refs))
    bounds = InputBounds(max_total_image_bytes=total - 1)
    fields = refused(CHECK_CHANNEL_CONSISTENCY, consistency(refs, target=target), bounds)
    assert list(fields) == ["references[2].data"]
    assert f"{total - 1} bytes" in fields["references[2].data"]
    CHECK_CHANNEL_CONSISTENCY.validate(
        consistency(refs, target=target), InputBounds(max_total_image_bytes=total)
    )


def test_consistency_orders_references_by_content(make_image: MakeImage) -> None:
    refs = [make_image(color=(i * 40, 0, 0)) for i in range(4)]
    one = CHECK_CHANNEL_CONSISTENCY.validate(consistency(refs))
    other = CHECK_CHANNEL_CONSISTENCY.validate(consistency(refs[::-1]))
    digests = [ref.verified.sha256 for ref in one.references]
    assert digests == sorted(digests)
    assert [r.data for r in one.references] == [r.data for r in other.references]


# --- GenerateThumbnail -----------------------------------------------------------------------


def test_generate_defaults() -> None:
    checked = GENERATE_THUMBNAIL.validate(GenerateThumbnailRequest("  My video  "))
    assert checked == GenerateThumbnailRequest("My video", None, (), "16:9", 1)


def test_generate_bounds_prompt() -> None:
    bounds = InputBounds(max_prompt_chars=5)
    assert refused(GENERATE_THUMBNAIL, GenerateThumbnailRequest("   "))["prompt"] == (
        "must not be empty"
    )
    assert (
        "the limit is 5"
        in refused(GENERATE_THUMBNAIL, GenerateThumbnailRequest("abcdef"), bounds)["prompt"]
    )


@pytest.mark.parametrize("variations", [0, -1, 5])
def test_generate_bounds_variations(variations: int) -> None:
    fields = refused(GENERATE_THUMBNAIL, GenerateThumbnailRequest("x", variations=variations))
    assert fields == {"variations": f"is {variations}; send 1 to 4"}


@pytest.mark.parametrize("ratio", ["16:9", "9:16", "1:1", "21:9", "4:5"])
def test_generate_accepts_supported_aspect_ratios(ratio: str) -> None:
    GENERATE_THUMBNAIL.validate(GenerateThumbnailRequest("x", aspect_ratio=ratio))


@pytest.mark.parametrize("ratio", ["", "16x9", "32:9", "16:10"])
def test_generate_refuses_other_aspect_ratios(ratio: str) -> None:
    fields = refused(GENERATE_THUMBNAIL, GenerateThumbnailRequest("x", aspect_ratio=ratio))
    assert list(fields) == ["aspect_ratio"] and "16:9" in fields["aspect_ratio"]


def test_generate_style_preset_from_the_fixed_list() -> None:
    checked = GENERATE_THUMBNAIL.validate(
        GenerateThumbnailRequest("x", style_preset="neon")  # type: ignore[arg-type]
    )
    assert checked.style_preset is StylePreset.NEON
    fields = refused(
        GENERATE_THUMBNAIL,
        GenerateThumbnailRequest("x", style_preset="vaporwave"),  # type: ignore[arg-type]
    )
    assert "bold" in fields["style_preset"]


def test_generate_bounds_references_and_checks_roles(make_image: MakeImage) -> None:
    def ref(role: Any, data: bytes | None = None) -> ReferenceImage:
        return ReferenceImage(ImageInput(data or make_image()), role)

    five = tuple(ref(ReferenceRole.FACE) for _ in range(5))
    fields = refused(GENERATE_THUMBNAIL, GenerateThumbnailRequest("x", references=five))
    assert fields == {"references": "has 5 items; send at most 4"}

    mixed = (ref("face"), ref("logo"), ref(ReferenceRole.STYLE, b"GIF89a-not-really"))
    fields = refused(GENERATE_THUMBNAIL, GenerateThumbnailRequest("x", references=mixed))
    assert set(fields) == {"references[1].role", "references[2].image.data"}
    assert "face, style" in fields["references[1].role"]

    checked = GENERATE_THUMBNAIL.validate(
        GenerateThumbnailRequest("x", references=(ref("face"), ref(ReferenceRole.STYLE)))
    )
    assert [r.role for r in checked.references] == [ReferenceRole.FACE, ReferenceRole.STYLE]
    assert all(r.image.sniffed is not None for r in checked.references)


def test_bounds_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIEWBAIT_BOUNDS__MAX_VARIATIONS", "2")
    bounds = Settings().bounds
    assert bounds.max_variations == 2
    fields = refused(GENERATE_THUMBNAIL, GenerateThumbnailRequest("x", variations=3), bounds)
    assert fields == {"variations": "is 3; send 1 to 2"}


def test_validation_does_not_mutate_the_request(make_image: MakeImage) -> None:
    request = ComputeAttentionHeatmapRequest(ImageInput(make_image()))
    COMPUTE_ATTENTION_HEATMAP.validate(request)
    assert request.image.sniffed is None
