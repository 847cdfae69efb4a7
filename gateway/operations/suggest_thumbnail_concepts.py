"""SuggestThumbnailConcepts: 3 to 6 thumbnail concepts from a video and its channel analytics.

The analytics (views, impressions, CTR, average view duration, traffic sources...) arrive as a JSON
object in text. Validation rewrites it in its canonical form (RFC 8785, computed natively), which
is what the model reads and what the key carries the hash of: key order, whitespace and number
spelling split neither the cache nor the prompt, and the key covers everything the prompt is made
of. The model also watches the video itself.

Palette colours reach the caller as "#RRGGBB" (uppercase), whatever CSS form the model used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from gateway import native
from gateway.config import InputBounds, Scope
from gateway.model import FileRef, Part
from gateway.operations import prompts
from gateway.operations import schema as s
from gateway.operations.base import DEFAULT_BOUNDS, StructuredOperation
from gateway.operations.keys import KeyFields
from gateway.operations.normalise import css_hex
from gateway.operations.validation import Violations

_ANALYTICS_FIELD = "analytics_json"


@dataclass(frozen=True, slots=True)
class SuggestThumbnailConceptsRequest:
    """A video and the channel's analytics for it."""

    #: YouTube video id: 11 characters of `A-Z a-z 0-9 _ -`.
    video_id: str
    #: A JSON object as text, e.g. `{"views": 1200, "ctr": 0.041, "traffic_sources": {...}}`;
    #: canonical (RFC 8785) once validated.
    analytics_json: str


@dataclass(frozen=True, slots=True)
class ThumbnailConcept:
    """One thumbnail idea."""

    #: The words on the thumbnail (short enough to read at a glance).
    headline_text: str
    #: Layout: subject, placement, framing, background.
    composition: str
    #: Colours as "#RRGGBB" (uppercase hex digits), dominant first.
    palette: tuple[str, ...]
    #: The emotion the thumbnail should trigger.
    emotion: str
    #: Why this should raise click-through, given the analytics.
    rationale: str


@dataclass(frozen=True, slots=True)
class ThumbnailConcepts:
    """The suggested concepts, best first."""

    concepts: tuple[ThumbnailConcept, ...]


RESPONSE_SCHEMA = s.obj(
    "Thumbnail concepts for one YouTube video, best first.",
    {
        "concepts": s.array(
            "Distinct thumbnail concepts.",
            s.obj(
                "One thumbnail concept.",
                {
                    "headline_text": s.string(
                        "The words on the thumbnail, at most about five.", max_length=60
                    ),
                    "composition": s.string(
                        "Subject, placement, framing and background.", max_length=500
                    ),
                    "palette": s.array(
                        "Colours, dominant first.",
                        s.string("A colour as a hex code, #RRGGBB.", max_length=40),
                        min_items=2,
                        max_items=5,
                    ),
                    "emotion": s.string("The emotion the thumbnail triggers.", max_length=80),
                    "rationale": s.string(
                        "Why this should raise click-through, citing the analytics.",
                        max_length=600,
                    ),
                },
            ),
            min_items=3,
            max_items=6,
        ),
    },
)


class SuggestThumbnailConcepts(
    StructuredOperation[SuggestThumbnailConceptsRequest, ThumbnailConcepts, ThumbnailConcepts]
):
    """The SuggestThumbnailConcepts operation spec."""

    name = "suggest_thumbnail_concepts"
    # 2: the analytics are given in their canonical form.
    PROMPT_VERSION = "2"
    # 2: palette colours are "#RRGGBB" only, strings trimmed.
    SCHEMA_VERSION = "2"
    default_scope = Scope.USER
    request_type = SuggestThumbnailConceptsRequest
    result_type = ThumbnailConcepts
    answer_type = ThumbnailConcepts
    response_schema = RESPONSE_SCHEMA
    system_instruction = prompts.system_instruction(
        "You are a YouTube thumbnail strategist. Watch the video, read the channel's analytics "
        "for it, and propose distinct thumbnail concepts that would raise click-through rate. "
        "Ground each rationale in the analytics (for example a low CTR with high impressions, "
        "or the traffic sources) and in what the video shows.",
    )

    def validate(
        self, request: SuggestThumbnailConceptsRequest, bounds: InputBounds = DEFAULT_BOUNDS
    ) -> SuggestThumbnailConceptsRequest:
        """Checks the video id and that the analytics are a bounded JSON object, and rewrites the
        analytics in their canonical form."""
        v = Violations()
        v.video_id("video_id", request.video_id)
        size = len(request.analytics_json.encode("utf-8", "surrogatepass"))
        canonical = None
        if size > bounds.max_analytics_json_bytes:
            v.add(
                _ANALYTICS_FIELD,
                f"is {size} bytes; the limit is {bounds.max_analytics_json_bytes} bytes",
            )
        else:
            # The native canonicalizer is the one JSON reader the key relies on, so it judges.
            canonical = v.attempt(
                lambda: native.canonical_json_field(request.analytics_json, _ANALYTICS_FIELD)
            )
            # Canonical JSON of an object starts with "{" (nothing else does).
            if canonical is not None and not canonical.startswith("{"):
                v.add(_ANALYTICS_FIELD, "must be a JSON object")
            # The model reads the canonical form, which spells some numbers longer ("1e20").
            elif (
                canonical is not None and len(canonical.encode()) > bounds.max_analytics_json_bytes
            ):
                v.add(
                    _ANALYTICS_FIELD,
                    f"is {len(canonical.encode())} bytes in canonical JSON form (numbers written "
                    f"out in full); the limit is {bounds.max_analytics_json_bytes} bytes",
                )
        v.raise_if_any()
        assert canonical is not None
        return SuggestThumbnailConceptsRequest(request.video_id, canonical)

    def key_fields(self, request: SuggestThumbnailConceptsRequest) -> KeyFields:
        """(video id, canonical hash of the analytics)."""
        return [
            ("video_id", request.video_id),
            (
                "analytics_hash",
                native.canonical_json_sha256_field(request.analytics_json, _ANALYTICS_FIELD),
            ),
        ]

    def normalise(self, answer: ThumbnailConcepts) -> ThumbnailConcepts:
        """Every palette colour as "#RRGGBB" (names, rgb() and short hex converted)."""
        return ThumbnailConcepts(
            tuple(
                dataclasses.replace(
                    concept,
                    palette=tuple(
                        css_hex(colour, f"$.concepts[{i}].palette[{j}]")
                        for j, colour in enumerate(concept.palette)
                    ),
                )
                for i, concept in enumerate(answer.concepts)
            )
        )

    def prompt_parts(self, request: SuggestThumbnailConceptsRequest) -> Sequence[Part]:
        """The video, then the (canonical) analytics as quoted data."""
        return (
            Part(file=FileRef(prompts.youtube_watch_url(request.video_id))),
            Part(
                text="Suggest thumbnail concepts for this YouTube video.\n"
                + prompts.creator_text("channel analytics JSON", request.analytics_json)
            ),
        )
