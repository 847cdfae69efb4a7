"""CheckChannelConsistency: does a thumbnail fit the look of the channel's other thumbnails?

The caller sends the target thumbnail and 1 to 12 reference thumbnails as bytes. The key carries
`refs_hash`, a digest of the sorted reference digests, so reordering references changes neither
the key nor (because validation sorts them the same way) the prompt.

The summary reaches the caller as one line (the proto promises a one-line judgement).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.config import InputBounds, Scope
from gateway.model import Blob, Part
from gateway.operations import prompts
from gateway.operations import schema as s
from gateway.operations.base import DEFAULT_BOUNDS, StructuredOperation
from gateway.operations.images import ImageInput
from gateway.operations.keys import KeyFields, multiset_digest
from gateway.operations.normalise import one_line
from gateway.operations.validation import Violations


@dataclass(frozen=True, slots=True)
class CheckChannelConsistencyRequest:
    """A thumbnail and the channel thumbnails it should match."""

    target: ImageInput
    references: tuple[ImageInput, ...]
    #: The video the target thumbnail is for, if it exists yet ("" otherwise).
    video_id: str = ""


class Verdict(StrEnum):
    """The overall call."""

    CONSISTENT = "consistent"
    PARTLY_CONSISTENT = "partly_consistent"
    INCONSISTENT = "inconsistent"


@dataclass(frozen=True, slots=True)
class DimensionFinding:
    """How the target compares on one dimension."""

    #: 0 (nothing in common) to 100 (indistinguishable style).
    score: int
    #: What matches and what differs.
    finding: str
    #: What to change to fit the channel ("" when nothing needs to change).
    suggestion: str


@dataclass(frozen=True, slots=True)
class ConsistencyFindings:
    """One finding per dimension."""

    palette: DimensionFinding
    typography: DimensionFinding
    faces: DimensionFinding
    composition: DimensionFinding
    branding: DimensionFinding


@dataclass(frozen=True, slots=True)
class ChannelConsistency:
    """The verdict on the target thumbnail."""

    #: 0 to 100.
    score: int
    verdict: Verdict
    #: One line.
    summary: str
    findings: ConsistencyFindings


def _finding(dimension: str) -> dict[str, object]:
    return s.obj(
        f"How the target compares with the references on {dimension}.",
        {
            "score": s.integer("0: nothing in common; 100: same style.", minimum=0, maximum=100),
            "finding": s.string("What matches and what differs.", max_length=500),
            "suggestion": s.string(
                "What to change to fit the channel; empty if nothing.", min_length=0, max_length=500
            ),
        },
    )


# An object with one required property per dimension (rather than a list of findings) lets the
# schema itself demand every dimension exactly once.
RESPONSE_SCHEMA = s.obj(
    "How consistent the target thumbnail is with the channel's reference thumbnails.",
    {
        "score": s.integer("Overall consistency, 0 to 100.", minimum=0, maximum=100),
        "verdict": s.enum("The overall call.", [v.value for v in Verdict]),
        "summary": s.string("The verdict in one or two sentences.", max_length=600),
        "findings": s.obj(
            "One finding per dimension.",
            {
                "palette": _finding("colour palette"),
                "typography": _finding("typography (fonts, sizes, text treatment)"),
                "faces": _finding("faces (presence, expressions, framing)"),
                "composition": _finding("composition and layout"),
                "branding": _finding("branding (logos, recurring marks, series styling)"),
            },
        ),
    },
)


class CheckChannelConsistency(
    StructuredOperation[CheckChannelConsistencyRequest, ChannelConsistency, ChannelConsistency]
):
    """The CheckChannelConsistency operation spec."""

    name = "check_channel_consistency"
    PROMPT_VERSION = "1"
    # 2: the summary is one line, strings trimmed.
    SCHEMA_VERSION = "2"
    default_scope = Scope.USER
    request_type = CheckChannelConsistencyRequest
    result_type = ChannelConsistency
    answer_type = ChannelConsistency
    response_schema = RESPONSE_SCHEMA
    system_instruction = prompts.system_instruction(
        "You review YouTube thumbnails for brand consistency. Compare the target thumbnail with "
        "the channel's reference thumbnails on palette, typography, faces, composition and "
        "branding. Judge the channel's recurring style, not the subject matter of each video, "
        "and make every suggestion concrete.",
    )

    def input_images(self, request: CheckChannelConsistencyRequest) -> list[tuple[str, ImageInput]]:
        """The target, then the references."""
        return [
            ("target", request.target),
            *((f"references[{i}]", ref) for i, ref in enumerate(request.references)),
        ]

    def validate(
        self, request: CheckChannelConsistencyRequest, bounds: InputBounds = DEFAULT_BOUNDS
    ) -> CheckChannelConsistencyRequest:
        """Checks the video id (if any), the reference count and every image."""
        v = Violations()
        video_id = v.video_id("video_id", request.video_id, required=False)
        v.count(
            "references",
            request.references,
            minimum=1,
            maximum=bounds.max_consistency_references,
        )
        target, *references = v.images(self.input_images(request), bounds)
        v.raise_if_any()
        # The key ignores reference order, so the prompt must too.
        ordered = tuple(sorted(references, key=lambda ref: ref.verified.sha256))
        return CheckChannelConsistencyRequest(target, ordered, video_id)

    def key_fields(self, request: CheckChannelConsistencyRequest) -> KeyFields:
        """(video id, target hash, order-independent hash of the references)."""
        return [
            ("video_id", request.video_id),
            ("target_hash", request.target.verified.sha256),
            ("refs_hash", multiset_digest([ref.verified.sha256 for ref in request.references])),
        ]

    def normalise(self, answer: ChannelConsistency) -> ChannelConsistency:
        """The summary on one line (line breaks and runs of spaces become one space)."""
        return dataclasses.replace(answer, summary=one_line(answer.summary))

    def prompt_parts(self, request: CheckChannelConsistencyRequest) -> Sequence[Part]:
        """Each reference under a label, then the target, then the question."""
        count = len(request.references)
        parts: list[Part] = []
        for number, ref in enumerate(request.references, start=1):
            image = ref.verified
            parts += (
                Part(text=f"Reference thumbnail {number} of {count}:"),
                Part(blob=Blob(image.data, image.mime_type)),
            )
        target = request.target.verified
        parts += (
            Part(text="Target thumbnail:"),
            Part(blob=Blob(target.data, target.mime_type)),
            Part(text="How consistent is the target with the channel's reference thumbnails?"),
        )
        return parts
