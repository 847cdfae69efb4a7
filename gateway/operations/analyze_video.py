"""AnalyzeVideo: a structured analysis of a YouTube video, for thumbnail design.

Gemini watches the video itself (the watch URL goes in as `fileData`); the creator's title and
description are optional hints. The cache key is (user, video id, title, description): the hints
shape the prompt, so they shape the analysis, and a key without them would answer a request with
new hints (a creator who fixed the title) with the analysis of the old ones for the whole TTL,
and under a `global` scope would serve one user's description-steered analysis to everyone.
Requests that repeat their hints, as a web app re-asking about one video does, still hit.

Hook moments reach the caller in timeline order whatever order the model listed them in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import InputBounds, Scope
from gateway.model import FileRef, Part
from gateway.operations import prompts
from gateway.operations import schema as s
from gateway.operations.base import DEFAULT_BOUNDS, StructuredOperation
from gateway.operations.keys import KeyFields
from gateway.operations.validation import Violations


@dataclass(frozen=True, slots=True)
class AnalyzeVideoRequest:
    """A video to analyse."""

    #: YouTube video id: 11 characters of `A-Z a-z 0-9 _ -`.
    video_id: str
    #: Optional context; "" when absent.
    title: str = ""
    description: str = ""


@dataclass(frozen=True, slots=True)
class HookMoment:
    """A moment that grabs viewers, with where it happens."""

    #: Seconds from the start of the video.
    timestamp_s: float
    description: str


@dataclass(frozen=True, slots=True)
class VideoAnalysis:
    """What the video is and what its thumbnail should show."""

    summary: str
    topics: tuple[str, ...]
    hook_moments: tuple[HookMoment, ...]
    #: Who the video is for.
    audience: str
    #: The video's tone, in a few words (e.g. "playful, fast-paced").
    tone: str
    #: Concrete things a thumbnail for this video should show.
    recommended_thumbnail_elements: tuple[str, ...]


RESPONSE_SCHEMA = s.obj(
    "An analysis of one YouTube video for designing its thumbnail.",
    {
        "summary": s.string("What happens in the video, in 2 to 5 sentences.", max_length=2000),
        "topics": s.array(
            "The main topics, most important first.",
            s.string("A topic in a few words.", max_length=100),
            min_items=1,
            max_items=10,
        ),
        "hook_moments": s.array(
            "The moments most likely to grab a viewer, in order of appearance.",
            s.obj(
                "One hook moment.",
                {
                    "timestamp_s": s.number(
                        "Seconds from the start of the video.", minimum=0, maximum=86400
                    ),
                    "description": s.string("What happens and why it hooks.", max_length=400),
                },
            ),
            min_items=1,
            max_items=8,
        ),
        "audience": s.string("Who the video is for.", max_length=400),
        "tone": s.string("The tone in a few words.", max_length=120),
        "recommended_thumbnail_elements": s.array(
            "Concrete elements a thumbnail for this video should show (subject, expression, "
            "object, text idea), best first.",
            s.string("One element.", max_length=200),
            min_items=1,
            max_items=8,
        ),
    },
)


class AnalyzeVideo(StructuredOperation[AnalyzeVideoRequest, VideoAnalysis, VideoAnalysis]):
    """The AnalyzeVideo operation spec."""

    name = "analyze_video"
    PROMPT_VERSION = "1"
    # 2: hook moments sorted by time, strings trimmed (results cached before are not served).
    SCHEMA_VERSION = "2"
    default_scope = Scope.USER
    request_type = AnalyzeVideoRequest
    result_type = VideoAnalysis
    answer_type = VideoAnalysis
    response_schema = RESPONSE_SCHEMA
    system_instruction = prompts.system_instruction(
        "You analyse YouTube videos for creators who are designing the video's thumbnail. Watch "
        "the whole video. Be specific to this video: name what is shown and said, and give hook "
        "moments with accurate timestamps in seconds.",
    )

    def validate(
        self, request: AnalyzeVideoRequest, bounds: InputBounds = DEFAULT_BOUNDS
    ) -> AnalyzeVideoRequest:
        """Checks the video id and the lengths of title and description."""
        v = Violations()
        video_id = v.video_id("video_id", request.video_id)
        title = v.text("title", request.title, max_chars=bounds.max_title_chars, required=False)
        description = v.text(
            "description",
            request.description,
            max_chars=bounds.max_description_chars,
            required=False,
        )
        v.raise_if_any()
        return AnalyzeVideoRequest(video_id, title, description)

    def key_fields(self, request: AnalyzeVideoRequest) -> KeyFields:
        """(video id, title, description): everything the prompt is made of. The user comes from
        the scope."""
        return [
            ("video_id", request.video_id),
            ("title", request.title),
            ("description", request.description),
        ]

    def normalise(self, answer: VideoAnalysis) -> VideoAnalysis:
        """Hook moments in timeline order (equal timestamps keep the model's order)."""
        moments = tuple(sorted(answer.hook_moments, key=lambda moment: moment.timestamp_s))
        return dataclasses.replace(answer, hook_moments=moments)

    def prompt_parts(self, request: AnalyzeVideoRequest) -> Sequence[Part]:
        """The video first (Gemini reads media best before the question), then the hints."""
        lines = ["Analyse this YouTube video for its thumbnail."]
        if request.title:
            lines.append(prompts.creator_text("title", request.title))
        if request.description:
            lines.append(prompts.creator_text("description", request.description))
        return (
            Part(file=FileRef(prompts.youtube_watch_url(request.video_id))),
            Part(text="\n".join(lines)),
        )
