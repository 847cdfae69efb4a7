"""ComputeAttentionHeatmap: where viewers will look on a thumbnail, as regions and an overlay PNG.

Gemini names the regions that draw attention (weighted, in normalized coordinates); the gateway
renders the overlay itself (`gateway.operations.render`) at the thumbnail's pixel size. The result
depends only on the image, so the key is global: (image SHA-256, width, height).

Weights are shares of the viewer's attention: the caller gets them summing to at most 1.0 (scaled
down in proportion when the model's add up to more), as float32 values, and regions strongest
first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway import native
from gateway.config import InputBounds, Scope
from gateway.model import Blob, Part
from gateway.operations import prompts
from gateway.operations import schema as s
from gateway.operations.base import DEFAULT_BOUNDS, StructuredOperation
from gateway.operations.images import Image, ImageInput
from gateway.operations.keys import KeyFields
from gateway.operations.normalise import shares
from gateway.operations.validation import Violations


@dataclass(frozen=True, slots=True)
class ComputeAttentionHeatmapRequest:
    """A thumbnail to score."""

    image: ImageInput


class AttentionElement(StrEnum):
    """What kind of thing draws the eye."""

    FACE = "face"
    TEXT = "text"
    OBJECT = "object"
    LOGO = "logo"
    BACKGROUND = "background"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class AttentionRegion:
    """One area that draws attention.

    Coordinates are fractions of the thumbnail's width (x) and height (y), from the top-left
    corner. (x, y) is where attention peaks; the region's box is centred there with the given
    width and height, and may run past an edge where the element does (a face cut by the frame).
    """

    label: str
    element: AttentionElement
    #: Share of attention, 0..1; the weights of one answer sum to at most 1.0.
    weight: float
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class AttentionAnswer:
    """The model's answer: the regions, most attention first (once normalised)."""

    regions: tuple[AttentionRegion, ...]


@dataclass(frozen=True, slots=True)
class AttentionHeatmap:
    """The regions and the overlay rendered from them."""

    regions: tuple[AttentionRegion, ...]
    #: A transparent PNG at the thumbnail's size, to draw over it.
    overlay: Image


def _fraction(description: str, *, minimum: float = 0.0) -> dict[str, object]:
    return s.number(description, minimum=minimum, maximum=1.0)


RESPONSE_SCHEMA = s.obj(
    "Where a viewer's eye goes on this thumbnail in the first second.",
    {
        "regions": s.array(
            "Regions that draw attention, most attention first.",
            s.obj(
                "One region. Coordinates are fractions of the image width (x) and height (y) "
                "measured from the top-left corner.",
                {
                    "label": s.string("What is there, in a few words.", max_length=80),
                    "element": s.enum("The kind of element.", [e.value for e in AttentionElement]),
                    "weight": _fraction(
                        "Share of the viewer's attention, 0 to 1; the weights of all regions "
                        "add up to at most 1."
                    ),
                    "x": _fraction("Horizontal position of the attention peak."),
                    "y": _fraction("Vertical position of the attention peak."),
                    "width": _fraction("Width of the region's box.", minimum=0.01),
                    "height": _fraction("Height of the region's box.", minimum=0.01),
                },
            ),
            min_items=1,
            max_items=10,
        ),
    },
)


class ComputeAttentionHeatmap(
    StructuredOperation[ComputeAttentionHeatmapRequest, AttentionAnswer, AttentionHeatmap]
):
    """The ComputeAttentionHeatmap operation spec."""

    name = "compute_attention_heatmap"
    PROMPT_VERSION = "1"
    # 2: weights scaled to sum to at most 1.0, regions sorted, strings trimmed.
    SCHEMA_VERSION = "2"
    default_scope = Scope.GLOBAL
    request_type = ComputeAttentionHeatmapRequest
    result_type = AttentionHeatmap
    answer_type = AttentionAnswer
    response_schema = RESPONSE_SCHEMA
    system_instruction = prompts.system_instruction(
        "You predict visual attention on YouTube thumbnails as a viewer scrolling a feed sees "
        "them. Identify the regions that draw the eye (faces and eyes, large text, high-contrast "
        "objects, logos) with their share of attention and their position in the image.",
    )

    def input_images(self, request: ComputeAttentionHeatmapRequest) -> list[tuple[str, ImageInput]]:
        """The thumbnail."""
        return [("image", request.image)]

    def validate(
        self, request: ComputeAttentionHeatmapRequest, bounds: InputBounds = DEFAULT_BOUNDS
    ) -> ComputeAttentionHeatmapRequest:
        """Sniffs and bounds the thumbnail."""
        v = Violations()
        (image,) = v.images(self.input_images(request), bounds)
        v.raise_if_any()
        return ComputeAttentionHeatmapRequest(image)

    def key_fields(self, request: ComputeAttentionHeatmapRequest) -> KeyFields:
        """(image SHA-256, width, height): nothing about who asked."""
        image = request.image.verified
        return [("image_sha256", image.sha256), ("width", image.width), ("height", image.height)]

    def prompt_parts(self, request: ComputeAttentionHeatmapRequest) -> Sequence[Part]:
        """The thumbnail, then the question."""
        image = request.image.verified
        return (
            Part(blob=Blob(image.data, image.mime_type)),
            Part(text=f"Where will viewers look on this {image.width}x{image.height} thumbnail?"),
        )

    def normalise(self, answer: AttentionAnswer) -> AttentionAnswer:
        """Regions strongest first (equal weights keep the model's order), their weights as
        shares summing to at most 1.0 in that order (`normalise.shares`, which keeps it)."""
        regions = sorted(answer.regions, key=lambda region: -region.weight)
        weights = shares([region.weight for region in regions], "$.regions[{}].weight")
        return AttentionAnswer(
            tuple(
                dataclasses.replace(region, weight=weight)
                for region, weight in zip(regions, weights, strict=True)
            )
        )

    async def complete(
        self, request: ComputeAttentionHeatmapRequest, answer: AttentionAnswer
    ) -> AttentionHeatmap:
        """Renders the overlay off the event loop, in the renderer's bounded pool."""
        # Milliseconds of numpy and zlib for a 1280x720 thumbnail, which release the GIL.
        # Imported on first use: numpy is heavy, and only this operation needs it.
        from gateway.operations import render

        return await render.in_pool(self.finish, request, answer)

    def finish(
        self, request: ComputeAttentionHeatmapRequest, answer: AttentionAnswer
    ) -> AttentionHeatmap:
        """Renders the overlay at the thumbnail's size."""
        from gateway.operations import render

        image = request.image.verified
        png = render.render_overlay_png(answer.regions, image.width, image.height)
        overlay = Image(png, "png", image.width, image.height, native.sha256(png))
        return AttentionHeatmap(answer.regions, overlay)
