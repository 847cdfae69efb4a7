"""Cache key derivation: stable, unambiguous, scoped, versioned, and blind to irrelevant order."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from gateway.config import Scope
from gateway.model import ModelRequest
from gateway.operations import (
    ANALYZE_VIDEO,
    CHECK_CHANNEL_CONSISTENCY,
    COMPUTE_ATTENTION_HEATMAP,
    GENERATE_THUMBNAIL,
    OPERATIONS,
    SUGGEST_THUMBNAIL_CONCEPTS,
)
from gateway.operations.analyze_video import AnalyzeVideo, AnalyzeVideoRequest
from gateway.operations.base import StructuredOperation
from gateway.operations.check_channel_consistency import CheckChannelConsistencyRequest
from gateway.operations.compute_attention_heatmap import (
    ComputeAttentionHeatmap,
    ComputeAttentionHeatmapRequest,
)
from gateway.operations.generate_thumbnail import GenerateThumbnailRequest
from gateway.operations.images import ImageInput
from gateway.operations.keys import derive_key, encode_fields, multiset_digest
from gateway.operations.suggest_thumbnail_concepts import SuggestThumbnailConceptsRequest

MakeImage = Callable[..., bytes]
VIDEO_ID = "dQw4w9WgXcQ"
MODEL = "gemini-3.6-flash"
STRUCTURED = [s for s in OPERATIONS.values() if isinstance(s, StructuredOperation)]


def _variations(name: str, make_image: MakeImage) -> list[Any]:
    """Raw requests of one operation: some equal in what the model reads, some not."""
    if name == "analyze_video":
        return [
            AnalyzeVideoRequest(VIDEO_ID),
            AnalyzeVideoRequest(VIDEO_ID, "Title"),
            AnalyzeVideoRequest(VIDEO_ID, " Title "),
            AnalyzeVideoRequest(VIDEO_ID, "Title", "Description"),
            AnalyzeVideoRequest(VIDEO_ID, "", "Title"),
            AnalyzeVideoRequest("aaaaaaaaaaa", "Title"),
        ]
    if name == "suggest_thumbnail_concepts":
        return [
            SuggestThumbnailConceptsRequest(VIDEO_ID, '{"views": 10, "ctr": 0.05}'),
            SuggestThumbnailConceptsRequest(VIDEO_ID, '{"ctr":5e-2,"views":10.0}'),
            SuggestThumbnailConceptsRequest(VIDEO_ID, '{"ctr": 0.06, "views": 10}'),
            SuggestThumbnailConceptsRequest("aaaaaaaaaaa", '{"views": 10, "ctr": 0.05}'),
        ]
    images = [make_image(color=(i * 40, 9, 9)) for i in range(3)]
    if name == "compute_attention_heatmap":
        return [
            ComputeAttentionHeatmapRequest(ImageInput(images[0])),
            ComputeAttentionHeatmapRequest(ImageInput(images[0], "image/png")),
            ComputeAttentionHeatmapRequest(ImageInput(images[1])),
            ComputeAttentionHeatmapRequest(ImageInput(make_image("PNG", (36, 64)))),
        ]
    assert name == "check_channel_consistency"
    target, *refs = (ImageInput(image) for image in images)
    return [
        CheckChannelConsistencyRequest(target, (refs[0], refs[1]), VIDEO_ID),
        CheckChannelConsistencyRequest(target, (refs[1], refs[0]), VIDEO_ID),
        CheckChannelConsistencyRequest(target, (refs[0],), VIDEO_ID),
        CheckChannelConsistencyRequest(refs[0], (target, refs[1]), VIDEO_ID),
    ]


def analyze_key(spec: Any = ANALYZE_VIDEO, user: str = "user-1", model: str = MODEL) -> bytes:
    request = spec.validate(AnalyzeVideoRequest(VIDEO_ID, "A title"))
    key = spec.cache_key(request, user, model)
    assert isinstance(key, bytes)
    return key


# --- the encoding ----------------------------------------------------------------------------


def test_key_is_sha256_of_the_encoding() -> None:
    fields: list[tuple[str, str | bytes | int]] = [("a", "x"), ("b", b"\x00\x01"), ("c", 7)]
    assert derive_key(fields) == hashlib.sha256(encode_fields(fields)).digest()


def test_key_is_the_same_in_another_process() -> None:
    # Nothing may depend on the interpreter's hash seed or memory layout.
    code = (
        "from gateway.operations import ANALYZE_VIDEO as s;"
        "from gateway.operations.analyze_video import AnalyzeVideoRequest as R;"
        f"print(s.cache_key(s.validate(R({VIDEO_ID!r}, 'A title')), 'user-1', {MODEL!r}).hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        timeout=60,
    )
    assert out.stdout.strip() == analyze_key().hex()


def test_key_golden_value() -> None:
    # Pinned so an accidental change to the encoding (which would orphan every cached result)
    # fails loudly; change it only together with a deliberate encoding version bump.
    expected = hashlib.sha256(
        b"viewbait.cache-key.v1\x00"
        + b"".join(
            len(name).to_bytes(4, "big") + name + tag + len(value).to_bytes(8, "big") + value
            for name, tag, value in [
                (b"operation", b"s", b"analyze_video"),
                (b"prompt_version", b"s", b"1"),
                (b"schema_version", b"s", b"2"),
                (b"model", b"s", MODEL.encode()),
                (b"scope", b"s", b"user"),
                (b"user", b"s", b"user-1"),
                (b"video_id", b"s", VIDEO_ID.encode()),
                (b"title", b"s", b"A title"),
                (b"description", b"s", b""),
            ]
        )
    ).digest()
    assert analyze_key() == expected


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ([("ab", "c")], [("a", "bc")]),
        ([("a", "1")], [("a", 1)]),
        ([("a", "x")], [("a", b"x")]),
        ([("a", ""), ("b", "")], [("a", "\x00\x00\x00\x00\x00\x00\x00\x01b")]),
        ([("a", "x"), ("b", "y")], [("b", "y"), ("a", "x")]),
        ([("a", "x")], [("a", "x"), ("b", "")]),
    ],
)
def test_different_fields_never_share_an_encoding(one: Any, other: Any) -> None:
    assert encode_fields(one) != encode_fields(other)
    assert derive_key(one) != derive_key(other)


def test_booleans_are_not_key_values() -> None:
    with pytest.raises(TypeError):
        derive_key([("flag", True)])


def test_multiset_digest_ignores_order_but_counts_duplicates() -> None:
    a, b, c = (hashlib.sha256(x).digest() for x in (b"a", b"b", b"c"))
    assert multiset_digest([a, b, c]) == multiset_digest([c, a, b])
    assert multiset_digest([a, b]) != multiset_digest([a, b, b])
    with pytest.raises(ValueError):
        multiset_digest([b"short"])


# --- what goes into a key --------------------------------------------------------------------


def test_equal_inputs_give_equal_keys_and_every_prompt_input_splits_analyses() -> None:
    def key(request: AnalyzeVideoRequest, scope: Scope = Scope.USER) -> bytes | None:
        return ANALYZE_VIDEO.cache_key(ANALYZE_VIDEO.validate(request), "user-1", MODEL, scope)

    assert analyze_key() == analyze_key()
    # Surrounding whitespace is trimmed before the prompt is built, so it is not a new input.
    assert key(AnalyzeVideoRequest(VIDEO_ID, "  A title\n")) == analyze_key()
    # Title and description shape the prompt, so they shape the key, under either scope: a new
    # hint is never answered with the analysis another hint produced.
    for scope in Scope:
        base = key(AnalyzeVideoRequest(VIDEO_ID, "A title"), scope)
        assert key(AnalyzeVideoRequest(VIDEO_ID, "Other title"), scope) != base
        assert key(AnalyzeVideoRequest(VIDEO_ID, "A title", "desc"), scope) != base
        assert key(AnalyzeVideoRequest(VIDEO_ID), scope) != base
        assert key(AnalyzeVideoRequest("aaaaaaaaaaa", "A title"), scope) != base
    # Fields stay apart: moving text from title to description is another request.
    assert key(AnalyzeVideoRequest(VIDEO_ID, "ab", "")) != key(
        AnalyzeVideoRequest(VIDEO_ID, "a", "b")
    )


@pytest.mark.parametrize("spec", STRUCTURED, ids=lambda s: s.name)
def test_every_input_the_model_reads_is_in_the_key(spec: Any, make_image: MakeImage) -> None:
    # Two validated requests whose model requests differ never share a key: the key is a function
    # of everything the prompt is made of (checked on each operation's own variations).
    requests = [spec.validate(r) for r in _variations(spec.name, make_image)]
    by_key: dict[bytes, ModelRequest] = {}
    for request in requests:
        key = spec.cache_key(request, "user-1", MODEL, Scope.GLOBAL)
        sent = spec.model_request(request, MODEL)
        assert by_key.setdefault(key, sent) == sent
    assert len(by_key) > 1


def test_prompt_or_schema_version_bump_or_model_change_changes_the_key() -> None:
    base = analyze_key()
    assert analyze_key(AnalyzeVideo(prompt_version="next")) != base
    assert analyze_key(AnalyzeVideo(schema_version="next")) != base
    assert analyze_key(model="gemini-3.6-pro") != base
    assert analyze_key(AnalyzeVideo()) == base


def test_user_scope_separates_users() -> None:
    assert analyze_key(user="user-1") != analyze_key(user="user-2")


def test_user_scope_needs_a_user() -> None:
    request = ANALYZE_VIDEO.validate(AnalyzeVideoRequest(VIDEO_ID))
    with pytest.raises(ValueError, match="user id"):
        ANALYZE_VIDEO.cache_key(request, "", MODEL)


def test_global_scope_ignores_the_user_and_differs_from_user_scope() -> None:
    request = ANALYZE_VIDEO.validate(AnalyzeVideoRequest(VIDEO_ID))
    shared = ANALYZE_VIDEO.cache_key(request, "user-1", MODEL, Scope.GLOBAL)
    assert shared == ANALYZE_VIDEO.cache_key(request, "user-2", MODEL, Scope.GLOBAL)
    assert shared == ANALYZE_VIDEO.cache_key(request, "", MODEL, Scope.GLOBAL)
    assert shared != ANALYZE_VIDEO.cache_key(request, "user-1", MODEL, Scope.USER)


def test_heatmap_key_is_global_by_content(make_image: MakeImage) -> None:
    def key(data: bytes, user: str, spec: Any = COMPUTE_ATTENTION_HEATMAP) -> bytes:
        request = spec.validate(ComputeAttentionHeatmapRequest(ImageInput(data)))
        return spec.cache_key(request, user, MODEL)  # type: ignore[no-any-return]

    png = make_image("PNG", (128, 72))
    assert key(png, "user-1") == key(png, "user-2")
    assert key(png, "user-1") != key(make_image("PNG", (128, 72), (0, 0, 1)), "user-1")
    assert key(png, "user-1") != key(make_image("PNG", (72, 128)), "user-1")
    assert key(png, "u") != key(png, "u", ComputeAttentionHeatmap(prompt_version="2"))
    # A user-scoped override in the policy table puts the user back in.
    request = COMPUTE_ATTENTION_HEATMAP.validate(ComputeAttentionHeatmapRequest(ImageInput(png)))
    assert COMPUTE_ATTENTION_HEATMAP.cache_key(
        request, "user-1", MODEL, Scope.USER
    ) != COMPUTE_ATTENTION_HEATMAP.cache_key(request, "user-2", MODEL, Scope.USER)


def test_consistency_key_ignores_reference_order(make_image: MakeImage) -> None:
    refs = [make_image(color=(i * 30, 1, 2)) for i in range(5)]
    target = make_image("JPEG", (128, 72))

    def key(order: list[bytes], target: bytes = target, video_id: str = VIDEO_ID) -> bytes:
        request = CHECK_CHANNEL_CONSISTENCY.validate(
            CheckChannelConsistencyRequest(
                ImageInput(target), tuple(ImageInput(r) for r in order), video_id
            )
        )
        result = CHECK_CHANNEL_CONSISTENCY.cache_key(request, "user-1", MODEL)
        assert result is not None
        return result

    assert key(refs) == key(refs[::-1]) == key(refs[2:] + refs[:2])
    assert key(refs) != key(refs[:4])
    assert key(refs) != key(refs + refs[:1])
    assert key(refs) != key(refs, target=make_image("JPEG", (128, 72), (9, 9, 9)))
    assert key(refs) != key(refs, video_id="")
    # Swapping the target with a reference is a different question.
    assert key([*refs[1:], target], target=refs[0]) != key(refs)


@pytest.mark.parametrize(
    "spelling",
    [
        '{"views": 1200, "ctr": 0.05, "sources": {"search": 3, "browse": 7}}',
        '{"sources":{"browse":7,"search":3},"ctr":5e-2,"views":1.2e3}',
        '{\n  "ctr": 0.050,\n  "views": 1200.0,\n  "sources": {"s\\u0065arch": 3, "browse": 7}\n}',
    ],
)
def test_analytics_key_ignores_key_order_and_number_spelling(spelling: str) -> None:
    def key(text: str) -> bytes | None:
        request = SUGGEST_THUMBNAIL_CONCEPTS.validate(
            SuggestThumbnailConceptsRequest(VIDEO_ID, text)
        )
        return SUGGEST_THUMBNAIL_CONCEPTS.cache_key(request, "user-1", MODEL)

    reference = key('{"ctr":0.05,"sources":{"browse":7,"search":3},"views":1200}')
    assert key(spelling) == reference
    assert key('{"ctr":0.06,"sources":{"browse":7,"search":3},"views":1200}') != reference


def test_thumbnails_are_never_cached() -> None:
    request = GENERATE_THUMBNAIL.validate(GenerateThumbnailRequest("My video"))
    assert GENERATE_THUMBNAIL.cache_key(request, "user-1", "image-model") is None


def test_keys_need_a_validated_request(make_image: MakeImage) -> None:
    raw = ComputeAttentionHeatmapRequest(ImageInput(make_image()))
    with pytest.raises(RuntimeError, match="validated"):
        COMPUTE_ATTENTION_HEATMAP.cache_key(raw, "user-1", MODEL)
