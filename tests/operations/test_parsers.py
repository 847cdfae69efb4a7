"""Parsers: model JSON text becomes a typed result or an UpstreamBadResponse; nothing outside the
schema is clamped into it. (What a parser repairs inside the schema: test_normalisation.py.)"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from gateway.emulator.synth import value_for_schema
from gateway.errors import UpstreamBadResponse
from gateway.model import Blob, ModelResponse, Usage
from gateway.operations import (
    ANALYZE_VIDEO,
    CHECK_CHANNEL_CONSISTENCY,
    COMPUTE_ATTENTION_HEATMAP,
    GENERATE_THUMBNAIL,
    OPERATIONS,
    SUGGEST_THUMBNAIL_CONCEPTS,
)
from gateway.operations.analyze_video import HookMoment, VideoAnalysis
from gateway.operations.base import StructuredOperation
from gateway.operations.check_channel_consistency import Verdict
from gateway.operations.codec import to_jsonable
from gateway.operations.compute_attention_heatmap import AttentionElement
from gateway.operations.schema import SchemaMismatch, check_schema, validate

MakeImage = Callable[..., bytes]
STRUCTURED = [s for s in OPERATIONS.values() if isinstance(s, StructuredOperation)]


def finding(score: int) -> dict[str, Any]:
    return {"score": score, "finding": "Same warm palette.", "suggestion": ""}


VALID: dict[str, dict[str, Any]] = {
    "analyze_video": {
        "summary": "A creator builds a treehouse in a weekend.",
        "topics": ["woodworking", "DIY"],
        "hook_moments": [
            {"timestamp_s": 0, "description": "The finished treehouse at dusk."},
            {"timestamp_s": 312.5, "description": "The platform nearly falls."},
        ],
        "audience": "DIY hobbyists",
        "tone": "upbeat",
        "recommended_thumbnail_elements": ["the glowing treehouse", "a shocked face"],
    },
    "suggest_thumbnail_concepts": {
        "concepts": [
            {
                "headline_text": f"Built in {n} days",
                "composition": "Face left, treehouse right.",
                "palette": ["#FF8800", "#000080"],
                "emotion": "awe",
                "rationale": "CTR is low on browse traffic; a clear result helps.",
            }
            for n in (2, 3, 4)
        ]
    },
    "compute_attention_heatmap": {
        "regions": [
            {
                "label": "face",
                "element": "face",
                "weight": 0.5,
                "x": 0.3,
                "y": 0.4,
                "width": 0.2,
                "height": 0.35,
            },
            {
                "label": "headline",
                "element": "text",
                "weight": 0.25,
                "x": 0.75,
                "y": 0.2,
                "width": 0.4,
                "height": 0.15,
            },
        ]
    },
    "check_channel_consistency": {
        "score": 72,
        "verdict": "partly_consistent",
        "summary": "Palette fits; the font does not.",
        "findings": {
            d: finding(60 + i)
            for i, d in enumerate(["palette", "typography", "faces", "composition", "branding"])
        },
    },
}


def parse(spec: Any, data: Any, finish_reason: str = "STOP") -> Any:
    text = data if isinstance(data, str) else json.dumps(data)
    return spec.parse_answer(text, finish_reason)


@pytest.mark.parametrize("spec", STRUCTURED, ids=lambda s: s.name)
def test_valid_answers_parse_and_mirror_the_schema(spec: Any) -> None:
    answer = parse(spec, VALID[spec.name])
    assert isinstance(answer, spec.answer_type)
    # The typed answer holds exactly what the schema describes: nothing dropped, nothing added.
    assert to_jsonable(answer) == json.loads(json.dumps(VALID[spec.name]))
    validate(to_jsonable(answer), spec.response_schema)


def test_analysis_fields_are_typed() -> None:
    answer = parse(ANALYZE_VIDEO, VALID["analyze_video"])
    assert answer == VideoAnalysis(
        summary="A creator builds a treehouse in a weekend.",
        topics=("woodworking", "DIY"),
        hook_moments=(
            HookMoment(0.0, "The finished treehouse at dusk."),
            HookMoment(312.5, "The platform nearly falls."),
        ),
        audience="DIY hobbyists",
        tone="upbeat",
        recommended_thumbnail_elements=("the glowing treehouse", "a shocked face"),
    )
    assert isinstance(answer.hook_moments[0].timestamp_s, float)


def test_enums_become_members() -> None:
    assert parse(CHECK_CHANNEL_CONSISTENCY, VALID["check_channel_consistency"]).verdict is (
        Verdict.PARTLY_CONSISTENT
    )
    regions = parse(COMPUTE_ATTENTION_HEATMAP, VALID["compute_attention_heatmap"]).regions
    assert [r.element for r in regions] == [AttentionElement.FACE, AttentionElement.TEXT]


def test_integers_written_as_floats_are_integers() -> None:
    data = copy.deepcopy(VALID["check_channel_consistency"])
    data["score"] = 72.0
    assert parse(CHECK_CHANNEL_CONSISTENCY, data).score == 72


def broken(name: str, change: Callable[[Any], None]) -> dict[str, Any]:
    data = copy.deepcopy(VALID[name])
    change(data)
    return data


def _set(path: list[Any], value: Any) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        for step in path[:-1]:
            data = data[step]
        data[path[-1]] = value

    return change


def _delete(path: list[Any]) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        for step in path[:-1]:
            data = data[step]
        del data[path[-1]]

    return change


@pytest.mark.parametrize(
    ("spec", "change", "where"),
    [
        (ANALYZE_VIDEO, _delete(["summary"]), "$.summary"),
        (ANALYZE_VIDEO, _set(["extra"], 1), "$.extra"),
        (ANALYZE_VIDEO, _set(["topics"], []), "$.topics"),
        (ANALYZE_VIDEO, _set(["topics"], ["t"] * 11), "$.topics"),
        (ANALYZE_VIDEO, _set(["topics", 0], 5), "$.topics[0]"),
        (ANALYZE_VIDEO, _set(["hook_moments", 1, "timestamp_s"], -1), "$.hook_moments[1]"),
        (ANALYZE_VIDEO, _set(["hook_moments", 1, "timestamp_s"], "1:05"), "$.hook_moments[1]"),
        (ANALYZE_VIDEO, _set(["summary"], ""), "$.summary"),
        (ANALYZE_VIDEO, _set(["summary"], "x" * 2001), "$.summary"),
        (SUGGEST_THUMBNAIL_CONCEPTS, _set(["concepts"], []), "$.concepts"),
        (SUGGEST_THUMBNAIL_CONCEPTS, _delete(["concepts", 2]), "$.concepts"),
        (SUGGEST_THUMBNAIL_CONCEPTS, _set(["concepts", 0, "palette"], ["red"]), "$.concepts[0]"),
        (SUGGEST_THUMBNAIL_CONCEPTS, _set(["concepts", 1, "headline_text"], "h" * 61), "[1]"),
        (COMPUTE_ATTENTION_HEATMAP, _set(["regions", 0, "weight"], 1.3), "$.regions[0].weight"),
        (COMPUTE_ATTENTION_HEATMAP, _set(["regions", 1, "x"], -0.01), "$.regions[1].x"),
        (COMPUTE_ATTENTION_HEATMAP, _set(["regions", 1, "width"], 0), "$.regions[1].width"),
        (COMPUTE_ATTENTION_HEATMAP, _set(["regions", 0, "element"], "cat"), "element"),
        (COMPUTE_ATTENTION_HEATMAP, _set(["regions", 0, "weight"], True), "weight"),
        (COMPUTE_ATTENTION_HEATMAP, _set(["regions"], []), "$.regions"),
        (CHECK_CHANNEL_CONSISTENCY, _set(["score"], 101), "$.score"),
        (CHECK_CHANNEL_CONSISTENCY, _set(["score"], 71.5), "$.score"),
        (CHECK_CHANNEL_CONSISTENCY, _set(["verdict"], "great"), "$.verdict"),
        (CHECK_CHANNEL_CONSISTENCY, _delete(["findings", "branding"]), "branding"),
        (CHECK_CHANNEL_CONSISTENCY, _set(["findings", "faces", "score"], -5), "faces.score"),
    ],
)
def test_answers_outside_the_schema_are_bad_responses(
    spec: Any, change: Callable[[Any], None], where: str
) -> None:
    data = broken(spec.name, change)
    with pytest.raises(UpstreamBadResponse) as info:
        parse(spec, data)
    assert where in info.value.message
    assert spec.name in info.value.message
    assert info.value.retryable


@pytest.mark.parametrize("spec", STRUCTURED, ids=lambda s: s.name)
@pytest.mark.parametrize(
    "text",
    [
        "",
        "Sure! Here is the JSON you asked for.",
        "```json\n{}\n```",
        '{"summary": "cut off',
        "[]",
        "null",
    ],
)
def test_text_that_is_not_a_json_answer_is_a_bad_response(spec: Any, text: str) -> None:
    with pytest.raises(UpstreamBadResponse):
        parse(spec, text)


def test_nan_and_repeated_keys_are_refused() -> None:
    data = json.dumps(VALID["compute_attention_heatmap"]).replace("0.5", "NaN", 1)
    with pytest.raises(UpstreamBadResponse, match="not valid JSON"):
        parse(COMPUTE_ATTENTION_HEATMAP, data)
    text = json.dumps(VALID["check_channel_consistency"])
    with pytest.raises(UpstreamBadResponse, match="not valid JSON"):
        parse(CHECK_CHANNEL_CONSISTENCY, text[:-1] + ', "score": 10}')


def test_bad_response_names_the_finish_reason_but_never_echoes_the_text() -> None:
    secret = '{"summary": "SECRET-TEXT-FROM-MODEL'
    with pytest.raises(UpstreamBadResponse) as info:
        parse(ANALYZE_VIDEO, secret, "MAX_TOKENS")
    assert "MAX_TOKENS" in info.value.message
    assert "SECRET" not in info.value.message


@pytest.mark.parametrize("spec", STRUCTURED, ids=lambda s: s.name)
def test_the_emulators_synthetic_answers_parse(spec: Any) -> None:
    # The emulator builds answers from the schema alone; every one it can build must parse, or
    # the schema demands something it does not state.
    for seed in range(25):
        value = value_for_schema(spec.response_schema, random.Random(seed))
        parse(spec, value)


# --- GenerateThumbnail: the image answer -----------------------------------------------------


def image_response(images: list[Blob], text: str = "", finish: str = "STOP") -> ModelResponse:
    return ModelResponse(text, images, Usage(), 0.0, finish, "image-model")


def test_variation_takes_the_first_image_sniffed(make_image: MakeImage) -> None:
    png = make_image("PNG", (1344, 768))
    jpeg = make_image("JPEG", (64, 64))
    variation = GENERATE_THUMBNAIL.parse_variation(
        image_response([Blob(png, "image/jpeg"), Blob(jpeg, "image/jpeg")], " Here it is. "), 2
    )
    image = variation.image
    # The declared MIME type is wrong on purpose: the sniffed format wins.
    assert (variation.index, image.format, image.width, image.height) == (2, "png", 1344, 768)
    assert image.data == png and variation.text == "Here it is."


def test_variation_without_an_image_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponse, match="no image for variation 2"):
        GENERATE_THUMBNAIL.parse_variation(image_response([], "I cannot draw that."), 1)


def test_variation_with_unreadable_bytes_is_a_bad_response() -> None:
    with pytest.raises(UpstreamBadResponse, match="unreadable image for variation 1"):
        GENERATE_THUMBNAIL.parse_variation(image_response([Blob(b"\x89PNG\r\n", "image/png")]), 0)


# --- the schema subset itself ----------------------------------------------------------------


def test_check_schema_refuses_keywords_outside_the_subset() -> None:
    good: dict[str, Any] = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    check_schema(good)
    for bad in (
        {**good, "properties": {"a": {"type": "string", "pattern": "^x$"}}},
        {**good, "additionalProperties": True},
        {**good, "required": ["b"]},
        {"type": "array"},
        {"type": "null"},
        {"anyOf": [{"type": "string"}]},
    ):
        with pytest.raises(ValueError):
            check_schema(bad)


def test_validate_reports_the_path() -> None:
    with pytest.raises(SchemaMismatch) as info:
        validate({"regions": [{}]}, COMPUTE_ATTENTION_HEATMAP.response_schema)
    assert info.value.path == "$.regions[0].label"
