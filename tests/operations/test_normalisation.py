"""Every answer a client receives keeps the proto's documented rules, whatever the model wrote.

Adversarial model output (weights out of range, summing past 1.0, NaN, negative; unsorted regions
and hook moments; colours as names, rgb(), short or lowercase hex, or garbage; multi-line
summaries; wrong types, missing and extra fields) goes through the real parser of each operation,
then through its real gRPC conversion. Either the parse fails with the malformed-answer error
(`UpstreamBadResponse`, which the model is asked again for) or the message the client would
receive satisfies every rule its proto comments state. Where the rules can be met by a repair that
keeps the meaning (scale, sort, respell), the parse must succeed and the repair must keep it.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from PIL import ImageColor
from viewbait.ai.v1 import operations_pb2

from gateway.errors import UpstreamBadResponse
from gateway.operations import (
    ANALYZE_VIDEO,
    CHECK_CHANNEL_CONSISTENCY,
    COMPUTE_ATTENTION_HEATMAP,
    SUGGEST_THUMBNAIL_CONCEPTS,
)
from gateway.operations.compute_attention_heatmap import ComputeAttentionHeatmapRequest
from gateway.operations.images import ImageInput
from gateway.operations.normalise import (
    CSS_NAMED_COLOURS,
    RuleBroken,
    css_hex,
    one_line,
    shares,
    sums_within_one,
    unit_span,
)
from gateway.rpc.bindings import analyze_video as analyze_binding
from gateway.rpc.bindings import check_channel_consistency as consistency_binding
from gateway.rpc.bindings import compute_attention_heatmap as heatmap_binding
from gateway.rpc.bindings import suggest_thumbnail_concepts as concepts_binding
from tests.fixtures.answers import DIMENSIONS, concepts, consistency, region
from tests.operations.conftest import encode_image

HEX = re.compile(r"#[0-9A-F]{6}")
HEATMAP_SIZE = (48, 27)
HEATMAP_REQUEST = COMPUTE_ATTENTION_HEATMAP.validate(
    ComputeAttentionHeatmapRequest(ImageInput(encode_image("PNG", HEATMAP_SIZE)))
)
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the documented rules, checked on what a client receives ----------------------------------


def check_text(value: str, *, may_be_empty: bool = False) -> None:
    """Text in results has no surrounding whitespace, and is non-empty unless documented so."""
    assert value == value.strip()
    assert may_be_empty or value


def f32_sum(values: list[float]) -> float:
    total = np.float32(0.0)
    for value in values:
        total = np.float32(total + np.float32(value))
    return float(total)


def check_analysis(message: operations_pb2.VideoAnalysis) -> None:
    check_text(message.summary)
    check_text(message.audience)
    check_text(message.tone)
    assert 1 <= len(message.topics) <= 10
    assert 1 <= len(message.recommended_thumbnail_elements) <= 8
    for text in [*message.topics, *message.recommended_thumbnail_elements]:
        check_text(text)
    assert 1 <= len(message.hook_moments) <= 8
    times = [moment.timestamp_seconds for moment in message.hook_moments]
    assert all(0 <= t <= 86400 for t in times)
    assert times == sorted(times), "hook moments in timeline order"
    for moment in message.hook_moments:
        check_text(moment.description)


def check_concepts(message: operations_pb2.ThumbnailConcepts) -> None:
    assert 3 <= len(message.concepts) <= 6
    for concept in message.concepts:
        for text in (concept.headline, concept.composition, concept.emotion, concept.rationale):
            check_text(text)
        assert 2 <= len(concept.palette) <= 5
        assert all(HEX.fullmatch(colour) for colour in concept.palette), list(concept.palette)


def check_heatmap(message: operations_pb2.AttentionHeatmap) -> None:
    assert 1 <= len(message.regions) <= 10
    weights = [region.weight for region in message.regions]
    assert all(0.0 <= w <= 1.0 for w in weights)
    # However a client adds them up: exactly, in doubles, in float32.
    assert math.fsum(weights) <= 1.0
    assert sum(weights) <= 1.0
    assert f32_sum(weights) <= 1.0
    assert weights == sorted(weights, reverse=True), "regions strongest first"
    for each in message.regions:
        check_text(each.label)
        assert each.element != operations_pb2.ATTENTION_ELEMENT_UNSPECIFIED
        box = each.box
        for start, size in ((box.x, box.width), (box.y, box.height)):
            assert 0.0 <= start <= 1.0 and 0.0 <= size <= 1.0
            assert start + size <= 1.0 and f32_sum([start, size]) <= 1.0
    heatmap = message.heatmap
    assert (heatmap.width, heatmap.height) == HEATMAP_SIZE, "the size of the input image"
    assert heatmap.image.data.startswith(b"\x89PNG")


def check_consistency(message: operations_pb2.ChannelConsistency) -> None:
    assert 0 <= message.score <= 100
    assert message.verdict != operations_pb2.CONSISTENCY_VERDICT_UNSPECIFIED
    check_text(message.summary)
    assert "\n" not in message.summary and "\r" not in message.summary
    assert [f.dimension for f in message.findings] == [1, 2, 3, 4, 5], "in enum order"
    for finding in message.findings:
        assert 0 <= finding.score <= 100
        check_text(finding.finding)
        check_text(finding.suggestion, may_be_empty=True)


# spec, the validated request the answers are for, the result's gRPC conversion, its rules
OPERATIONS: dict[str, tuple[Any, Any, Callable[[Any], Any], Callable[[Any], None]]] = {
    "analyze_video": (ANALYZE_VIDEO, None, analyze_binding.to_result, check_analysis),
    "suggest_thumbnail_concepts": (
        SUGGEST_THUMBNAIL_CONCEPTS,
        None,
        concepts_binding.to_result,
        check_concepts,
    ),
    "compute_attention_heatmap": (
        COMPUTE_ATTENTION_HEATMAP,
        HEATMAP_REQUEST,
        heatmap_binding.to_result,
        check_heatmap,
    ),
    "check_channel_consistency": (
        CHECK_CHANNEL_CONSISTENCY,
        None,
        consistency_binding.to_result,
        check_consistency,
    ),
}


def _count(outcome: str) -> None:
    # How the examples split shows in `pytest --hypothesis-show-statistics`.
    if currently_in_test_context():
        event(outcome)


def delivered(name: str, data: Any) -> Any | None:
    """What the client receives for the model's answer `data` (JSON-encoded here, NaN and
    Infinity included), checked against every rule of its message; None when the parser
    refused it as a malformed answer."""
    spec, request, to_message, check = OPERATIONS[name]
    text = data if isinstance(data, str) else json.dumps(data)
    try:
        answer = spec.parse_answer(text)
    except UpstreamBadResponse as bad:
        assert bad.retryable and spec.name in bad.message
        _count("refused as malformed")
        return None
    _count("delivered")
    result = spec.finish(request, answer)
    message = to_message(result)
    check(message)
    # A cache hit delivers the very same result.
    stored = spec.result_from_json(spec.result_to_json(result), spec.result_blobs(result))
    assert to_message(stored) == message
    return message


# --- adversarial model output -------------------------------------------------------------------
#
# Two kinds of answer per operation. A *plausible* answer fits the schema and breaks only rules a
# repair can meet (weights summing past 1.0, regions and hook moments out of order, colours as
# names, rgb() or short hex, padded or multi-line text): it must always be delivered, within the
# rules. A *hostile* answer is anything near the schema (wrong types, values out of range, NaN,
# missing and extra fields, garbage colours, empty text): delivered within the rules, or refused.

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=1),
)
padding = st.sampled_from(["", "", " ", "\n", "\t ", "  \r\n"])
words = st.from_regex(r"[A-Za-z0-9'][A-Za-z0-9 \n\t.,!?'-]{0,20}", fullmatch=True)
padded_texts = st.tuples(padding, words, padding).map("".join)
any_texts = st.one_of(
    padded_texts,
    st.text(max_size=24),
    st.sampled_from(["", " ", "\n\t ", "x" * 700]),
)
numbers = st.one_of(
    st.floats(0.0, 1.0),
    st.floats(-2.0, 3.0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 200),
    st.sampled_from([0, 1, 1.0, 0.5, 5e-324, 1e-300, 0.9999999999999999, 1.0000000001]),
)
hex_digits = "0123456789abcdefABCDEF"
channels = st.integers(0, 255)
percents = st.integers(0, 100)
#: Every CSS form of an opaque colour the parser reads.
readable_colours = st.one_of(
    st.text(alphabet=hex_digits, min_size=6, max_size=6).map("#{}".format),
    st.text(alphabet=hex_digits, min_size=3, max_size=3).map("#{}".format),
    st.text(alphabet=hex_digits, min_size=3, max_size=3).map("#{}f".format),
    st.text(alphabet=hex_digits, min_size=6, max_size=6).map("#{}FF".format),
    st.tuples(channels, channels, channels).map(lambda c: "rgb({}, {}, {})".format(*c)),
    st.tuples(percents, percents, percents).map(lambda c: "rgb({}% {}% {}%)".format(*c)),
    st.tuples(channels, channels, channels, st.sampled_from(["1", "1.0", "100%"])).map(
        lambda c: "rgba({},{},{},{})".format(*c)
    ),
    st.tuples(
        st.sampled_from(sorted(CSS_NAMED_COLOURS)),
        st.sampled_from([str.lower, str.upper, str.title, " {} ".format]),
    ).map(lambda pair: pair[1](pair[0])),
    st.sampled_from(["Light Blue", "dark-slate-grey", "  #ff3b30  "]),
)
any_colours = st.one_of(
    readable_colours,
    st.text(alphabet=hex_digits, min_size=0, max_size=9).map("#{}".format),
    st.tuples(*[st.integers(-10, 300)] * 3).map(lambda c: "rgb({}, {}, {})".format(*c)),
    st.sampled_from(
        [
            "warm orange",
            "hsl(10, 50%, 50%)",
            "transparent",
            "currentColor",
            "#GGGGGG",
            "FF3B30",
            "",
            "rgb(1,2)",
            "rgb(255 59 48 / 0.5)",
            "#FF3B3080",
        ]
    ),
    st.text(max_size=12),
)


def sometimes_wrong(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `good`, now and then a value of another type."""
    return st.one_of(good, good, good, good, junk)


def _list(item: st.SearchStrategy[Any], low: int, high: int, slack: int) -> st.SearchStrategy[Any]:
    """Lists of `low` to `high` items, `slack` more or fewer now and then."""
    return st.lists(item, min_size=max(0, low - slack), max_size=high + slack)


def _object(fields: dict[str, st.SearchStrategy[Any]], hostile: bool) -> st.SearchStrategy[Any]:
    """An object with these fields; when hostile, now and then one missing or one extra."""
    whole = st.fixed_dictionaries(fields)
    if not hostile:
        return whole
    dropped = whole.flatmap(
        lambda d: st.sampled_from(sorted(d)).map(lambda k: {n: v for n, v in d.items() if n != k})
    )
    extra = whole.map(lambda d: {**d, "confidence": 0.9})
    return st.one_of(whole, whole, whole, whole, whole, whole, dropped, extra)


def analyses(hostile: bool) -> st.SearchStrategy[Any]:
    wrong = sometimes_wrong if hostile else (lambda strategy: strategy)
    text = any_texts if hostile else padded_texts
    seconds = st.one_of(st.floats(0, 86400), st.integers(0, 4000))
    slack = 1 if hostile else 0
    return _object(
        {
            "summary": wrong(text),
            "topics": wrong(_list(wrong(text), 1, 10, slack)),
            "hook_moments": wrong(
                _list(
                    _object(
                        {
                            "timestamp_s": wrong(
                                st.one_of(seconds, numbers) if hostile else seconds
                            ),
                            "description": wrong(text),
                        },
                        hostile,
                    ),
                    1,
                    8,
                    slack,
                )
            ),
            "audience": wrong(text),
            "tone": wrong(text),
            "recommended_thumbnail_elements": wrong(_list(text, 1, 8, slack)),
        },
        hostile,
    )


def concept_answers(hostile: bool) -> st.SearchStrategy[Any]:
    wrong = sometimes_wrong if hostile else (lambda strategy: strategy)
    text = any_texts if hostile else padded_texts
    slack = 1 if hostile else 0
    colour = any_colours if hostile else readable_colours
    concept = _object(
        {
            "headline_text": wrong(text),
            "composition": wrong(text),
            "palette": wrong(_list(wrong(colour), 2, 5, slack)),
            "emotion": wrong(text),
            "rationale": wrong(text),
        },
        hostile,
    )
    return _object({"concepts": _list(concept, 3, 6, slack)}, hostile)


def heatmap_answers(hostile: bool) -> st.SearchStrategy[Any]:
    wrong = sometimes_wrong if hostile else (lambda strategy: strategy)
    elements = ["face", "text", "object", "logo", "background", "other"]
    fraction, extent = st.floats(0.0, 1.0), st.floats(0.01, 1.0)
    region = _object(
        {
            "label": wrong(any_texts if hostile else padded_texts),
            "element": wrong(st.sampled_from(elements + (["FACE", ""] if hostile else []))),
            "weight": wrong(numbers if hostile else fraction),
            "x": wrong(numbers if hostile else fraction),
            "y": wrong(numbers if hostile else fraction),
            "width": wrong(numbers if hostile else extent),
            "height": wrong(numbers if hostile else extent),
        },
        hostile,
    )
    return _object({"regions": _list(region, 1, 10, 1 if hostile else 0)}, hostile)


def consistency_answers(hostile: bool) -> st.SearchStrategy[Any]:
    wrong = sometimes_wrong if hostile else (lambda strategy: strategy)
    text = any_texts if hostile else padded_texts
    score = st.one_of(st.integers(0, 100), st.integers(0, 100).map(float))
    if hostile:
        score = sometimes_wrong(st.one_of(score, st.integers(-5, 105), numbers))
    verdicts = ["consistent", "partly_consistent", "inconsistent"] + (["great"] if hostile else [])
    finding = _object(
        {
            "score": score,
            "finding": wrong(text),
            "suggestion": wrong(st.one_of(text, st.just(""), padding)),
        },
        hostile,
    )
    return _object(
        {
            "score": score,
            "verdict": wrong(st.sampled_from(verdicts)),
            "summary": wrong(text),
            "findings": _object(dict.fromkeys(DIMENSIONS, finding), hostile),
        },
        hostile,
    )


ANSWERS: dict[str, Callable[[bool], st.SearchStrategy[Any]]] = {
    "analyze_video": analyses,
    "suggest_thumbnail_concepts": concept_answers,
    "compute_attention_heatmap": heatmap_answers,
    "check_channel_consistency": consistency_answers,
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_plausible_answers_are_always_delivered_within_the_rules(name: str) -> None:
    @PROPERTY
    @given(ANSWERS[name](False))
    def check(data: Any) -> None:
        assert delivered(name, data) is not None, "every rule it breaks can be repaired"

    check()


@pytest.mark.parametrize("name", list(ANSWERS))
def test_hostile_answers_are_delivered_within_the_rules_or_refused(name: str) -> None:
    @PROPERTY
    @given(st.one_of(ANSWERS[name](True), ANSWERS[name](False)))
    def check(data: Any) -> None:
        delivered(name, data)

    check()


@PROPERTY
@given(st.text(max_size=40) | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_any_text_at_all_is_delivered_within_the_rules_or_refused(text: str) -> None:
    for name in OPERATIONS:
        delivered(name, text)


def test_deeply_nested_json_is_a_malformed_answer() -> None:
    for name in OPERATIONS:
        assert delivered(name, "[" * 100_000) is None


# --- what can be repaired is repaired, and keeps its meaning -----------------------------------


@PROPERTY
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=10), st.randoms())
def test_weights_in_range_always_parse_scaled_and_sorted(
    weights: list[float], rng: random.Random
) -> None:
    labels = [f"region {i}" for i in range(len(weights))]
    pairs = list(zip(labels, weights, strict=True))
    rng.shuffle(pairs)
    message = delivered(
        "compute_attention_heatmap", {"regions": [region(label, w) for label, w in pairs]}
    )
    assert message is not None, "weights within 0..1 are always repairable"
    got = {r.label: r.weight for r in message.regions}
    assert sorted(got) == sorted(labels)
    total = math.fsum(weights)
    scale = 1.0 / total if total > 1.0 else 1.0
    for label, weight in zip(labels, weights, strict=True):
        # Proportions are kept to float32 precision (and the few steps that keep the sum within).
        assert got[label] == pytest.approx(weight * scale, rel=2e-6, abs=1e-7)


@pytest.mark.parametrize("total", [1.5, 1.9])
def test_the_sums_seen_from_the_model_are_scaled_to_one(total: float) -> None:
    # The answers that prompted the rule: weights of one heatmap adding up to 1.5 and 1.9.
    weights = [total / 2, total / 4, total / 4]
    message = delivered(
        "compute_attention_heatmap", {"regions": [region("face", w) for w in weights]}
    )
    assert message is not None
    assert [r.weight for r in message.regions] == pytest.approx([0.5, 0.25, 0.25], rel=1e-6)


def test_weights_that_already_fit_are_kept_as_the_model_gave_them() -> None:
    message = delivered(
        "compute_attention_heatmap",
        {"regions": [region("a", 0.25), region("b", 0.5), region("c", 0.125)]},
    )
    assert message is not None
    assert [r.weight for r in message.regions] == [0.5, 0.25, 0.125]


@PROPERTY
@given(st.lists(st.floats(0.0, 1.0, allow_subnormal=True), max_size=12))
def test_shares_sum_within_one_in_every_arithmetic_keep_order_and_are_float32(
    weights: list[float],
) -> None:
    result = shares(weights, "$.w[{}]")
    assert sums_within_one(result)
    assert all(float(np.float32(w)) == w and 0.0 <= w <= 1.0 for w in result)
    ranked = sorted(range(len(weights)), key=lambda i: -weights[i])
    assert [result[i] for i in ranked] == sorted(result, reverse=True)


@pytest.mark.parametrize("bad", [-0.1, math.nan, math.inf])
def test_shares_refuse_weights_that_are_no_share(bad: float) -> None:
    with pytest.raises(RuleBroken) as info:
        shares([0.2, bad], "$.regions[{}].weight")
    assert info.value.path == "$.regions[1].weight"


@PROPERTY
@given(st.floats(-1.0, 2.0), st.floats(0.0, 1.0))
def test_boxes_are_clipped_to_the_image_in_float32(centre: float, size: float) -> None:
    offset, length = unit_span(centre - size / 2, centre + size / 2)
    assert 0.0 <= offset <= 1.0 and length >= 0.0
    assert offset + length <= 1.0 and f32_sum([offset, length]) <= 1.0
    assert float(np.float32(offset)) == offset and float(np.float32(length)) == length


@PROPERTY
@given(st.lists(st.tuples(st.floats(0, 86400), st.text("abc", min_size=1)), min_size=1, max_size=8))
def test_hook_moments_are_put_in_timeline_order(moments: list[tuple[float, str]]) -> None:
    data = {
        "summary": "s",
        "topics": ["t"],
        "hook_moments": [{"timestamp_s": t, "description": d} for t, d in moments],
        "audience": "a",
        "tone": "t",
        "recommended_thumbnail_elements": ["e"],
    }
    message = delivered("analyze_video", data)
    assert message is not None
    got = [(m.timestamp_seconds, m.description) for m in message.hook_moments]
    # The same moments, in time order; equal times keep the model's order.
    assert got == sorted(moments, key=lambda moment: moment[0])


# Forms Pillow reads as CSS does: an independent reading of the same colour.
pillow_forms = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF", min_size=6, max_size=6).map("#{}".format),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=3, max_size=3).map("#{}".format),
    st.text(alphabet="0123456789abcdef", min_size=6, max_size=6).map("#{}ff".format),
    st.tuples(*[st.integers(0, 255)] * 3).map(lambda c: "rgb({}, {}, {})".format(*c)),
    st.tuples(*[st.integers(0, 100)] * 3).map(lambda c: "rgb({}%,{}%,{}%)".format(*c)),
    st.sampled_from(sorted(CSS_NAMED_COLOURS)).map(str.title),
)


@PROPERTY
@given(st.lists(pillow_forms, min_size=2, max_size=5))
def test_css_colours_are_respelled_as_the_same_colour(palette: list[str]) -> None:
    message = delivered("suggest_thumbnail_concepts", concepts(palette))
    assert message is not None
    expected = ["#{:02X}{:02X}{:02X}".format(*ImageColor.getrgb(c)[:3]) for c in palette]
    assert list(message.concepts[0].palette) == expected


@pytest.mark.parametrize(
    ("colour", "canonical"),
    [
        ("#ff3b30", "#FF3B30"),
        ("#F3B", "#FF33BB"),
        ("#f3b", "#FF33BB"),
        ("#FF3B30FF", "#FF3B30"),
        ("#f3bf", "#FF33BB"),
        ("rgb(255, 59, 48)", "#FF3B30"),
        ("RGB(255 59 48)", "#FF3B30"),
        ("rgba(255, 59, 48, 1)", "#FF3B30"),
        ("rgb(255 59 48 / 100%)", "#FF3B30"),
        ("rgb(100%, 50%, 0%)", "#FF8000"),
        ("rgb(254.6, 0, .4)", "#FF0000"),
        ("navy", "#000080"),
        ("Light Blue", "#ADD8E6"),
        ("dark_slate-grey", "#2F4F4F"),
        ("  RebeccaPurple ", "#663399"),
    ],
)
def test_colour_forms(colour: str, canonical: str) -> None:
    assert css_hex(colour, "$.c") == canonical


@pytest.mark.parametrize(
    "colour",
    [
        "warm orange",
        "hsl(4, 100%, 59%)",
        "transparent",
        "currentColor",
        "#GGGGGG",
        "#12345",
        "FF3B30",
        "#FF3B3080",
        "rgba(255, 59, 48, 0.5)",
        "rgb(256, 0, 0)",
        "rgb(101%, 0%, 0%)",
        "rgb(1, 2)",
        "",
    ],
)
def test_what_is_no_opaque_css_colour_is_refused(colour: str) -> None:
    with pytest.raises(RuleBroken) as info:
        css_hex(colour, "$.concepts[0].palette[1]")
    assert info.value.path == "$.concepts[0].palette[1]"


def test_an_unreadable_colour_is_a_malformed_answer_naming_the_place_not_the_text() -> None:
    data = concepts(["#FF3B30", "navy"])
    data["concepts"] = [
        *data["concepts"][:2],
        concepts(["#FF3B30", "SECRET-ish"])["concepts"][0],
    ]
    with pytest.raises(UpstreamBadResponse) as info:
        SUGGEST_THUMBNAIL_CONCEPTS.parse_answer(json.dumps(data))
    assert "$.concepts[2].palette[1]" in info.value.message
    assert "SECRET" not in info.value.message
    assert info.value.retryable


def test_the_named_colours_are_those_of_css() -> None:
    # Pillow's table is CSS Color 4's 148 names: an independent copy of the same standard.
    assert set(ImageColor.colormap) == set(CSS_NAMED_COLOURS)
    for name, value in CSS_NAMED_COLOURS.items():
        assert value == "#{:02X}{:02X}{:02X}".format(*ImageColor.getrgb(name)[:3]), name


def test_summaries_are_one_line_and_text_is_trimmed() -> None:
    data = consistency("  On brand\napart from\r\n\tthe font.  ", " Fits. ", "  ")
    message = delivered("check_channel_consistency", data)
    assert message is not None
    assert message.summary == "On brand apart from the font."
    assert message.findings[0].finding == "Fits."
    assert message.findings[0].suggestion == ""
    assert one_line(" a \n\n b\tc ") == "a b c"


def test_a_required_text_of_whitespace_is_a_malformed_answer() -> None:
    assert delivered("check_channel_consistency", consistency(" \n ")) is None
    assert delivered("check_channel_consistency", consistency("ok", finding="\t")) is None
