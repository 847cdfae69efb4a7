"""GenerateThumbnail: 1 to 4 thumbnail images from a title or prompt, a style and references.

Each variation is its own image-model call (`responseModalities` IMAGE and TEXT, `imageConfig`
aspect ratio); the calls run concurrently and each reports STARTED and IMAGE_READY progress events
(the latter carrying the image) so a stream can show images as they land. Output is creative, so
nothing is cached: `cache_key` is None, and an idempotency key at the RPC layer makes retries free.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from gateway.config import InputBounds, Scope
from gateway.errors import UpstreamBadResponse
from gateway.model import Blob, ModelClient, ModelRequest, ModelResponse, Part
from gateway.operations import prompts
from gateway.operations.base import (
    DEFAULT_BOUNDS,
    OperationSpec,
    ProgressEvent,
    ProgressKind,
    RunContext,
    call_model,
)
from gateway.operations.images import Image, ImageInput, sniff_output
from gateway.operations.validation import Violations

#: Aspect ratios Gemini's image models can produce.
ASPECT_RATIOS: tuple[str, ...] = (
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
)
DEFAULT_ASPECT_RATIO = "16:9"

E = TypeVar("E", bound=StrEnum)


class StylePreset(StrEnum):
    """The fixed list of looks a caller may pick."""

    BOLD = "bold"
    MINIMAL = "minimal"
    CINEMATIC = "cinematic"
    ILLUSTRATED = "illustrated"
    PHOTOREALISTIC = "photorealistic"
    RETRO = "retro"
    NEON = "neon"
    DOCUMENTARY = "documentary"


_STYLE_DIRECTIONS: dict[StylePreset, str] = {
    StylePreset.BOLD: "bold, saturated colours, heavy outlines and large punchy text",
    StylePreset.MINIMAL: "a clean, minimal layout with one subject, flat background, little text",
    StylePreset.CINEMATIC: "a cinematic film still: dramatic lighting, shallow depth of field",
    StylePreset.ILLUSTRATED: "a vivid digital illustration with clean line work",
    StylePreset.PHOTOREALISTIC: "a photorealistic photograph with natural lighting",
    StylePreset.RETRO: "a retro look: film grain, faded warm tones, vintage typography",
    StylePreset.NEON: "dark backgrounds lit by glowing neon colours",
    StylePreset.DOCUMENTARY: "an authentic documentary photo: candid, natural, understated",
}


class ReferenceRole(StrEnum):
    """What a reference image is for."""

    #: A person whose likeness the thumbnail should show.
    FACE = "face"
    #: A look (palette, typography, mood) the thumbnail should match.
    STYLE = "style"


_ROLE_DIRECTIONS: dict[ReferenceRole, str] = {
    ReferenceRole.FACE: "a person to feature; keep their likeness faithfully",
    ReferenceRole.STYLE: "a style to match: palette, typography, lighting and mood",
}


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    """A reference image and its role."""

    image: ImageInput
    role: ReferenceRole


@dataclass(frozen=True, slots=True)
class GenerateThumbnailRequest:
    """What to generate."""

    #: The video title or a free-form prompt.
    prompt: str
    style_preset: StylePreset | None = None
    references: tuple[ReferenceImage, ...] = ()
    #: One of `ASPECT_RATIOS`.
    aspect_ratio: str = DEFAULT_ASPECT_RATIO
    variations: int = 1


@dataclass(frozen=True, slots=True)
class ThumbnailVariation:
    """One generated thumbnail."""

    #: 0-based, in request order.
    index: int
    image: Image
    #: Whatever text the model said alongside the image ("" if none).
    text: str


@dataclass(frozen=True, slots=True)
class GeneratedThumbnails:
    """All variations, by index."""

    variations: tuple[ThumbnailVariation, ...]


class GenerateThumbnail(OperationSpec[GenerateThumbnailRequest, GeneratedThumbnails]):
    """The GenerateThumbnail operation spec."""

    name = "generate_thumbnail"
    PROMPT_VERSION = "1"
    SCHEMA_VERSION = "1"
    default_scope = Scope.USER
    model_kind = "image"
    request_type = GenerateThumbnailRequest
    result_type = GeneratedThumbnails
    system_instruction = prompts.system_instruction(
        "You design YouTube thumbnails: one striking image that reads at a glance on a phone. "
        "Use strong contrast, one clear focal subject and at most a few large words of text. "
        "Never add watermarks, borders or fake play buttons.",
        json_answer=False,
    )

    def input_images(self, request: GenerateThumbnailRequest) -> list[tuple[str, ImageInput]]:
        """The reference images."""
        return [(f"references[{i}].image", ref.image) for i, ref in enumerate(request.references)]

    def validate(
        self, request: GenerateThumbnailRequest, bounds: InputBounds = DEFAULT_BOUNDS
    ) -> GenerateThumbnailRequest:
        """Checks text, style, references, aspect ratio and the variation count."""
        v = Violations()
        prompt = v.text("prompt", request.prompt, max_chars=bounds.max_prompt_chars, required=True)
        style = _member(v, "style_preset", StylePreset, request.style_preset, optional=True)
        if request.aspect_ratio not in ASPECT_RATIOS:
            v.add("aspect_ratio", f"must be one of {', '.join(ASPECT_RATIOS)}")
        if not 1 <= request.variations <= bounds.max_variations:
            v.add("variations", f"is {request.variations}; send 1 to {bounds.max_variations}")
        v.count("references", request.references, minimum=0, maximum=bounds.max_generate_references)
        roles = [
            _member(v, f"references[{i}].role", ReferenceRole, ref.role, optional=False)
            for i, ref in enumerate(request.references)
        ]
        images = v.images(self.input_images(request), bounds)
        v.raise_if_any()
        references = tuple(
            ReferenceImage(image, role)
            for image, role in zip(images, roles, strict=True)
            if role is not None
        )
        return GenerateThumbnailRequest(
            prompt, style, references, request.aspect_ratio, request.variations
        )

    def key_fields(self, request: GenerateThumbnailRequest) -> None:
        """Never cached: every run should give new images."""
        return None

    def upstream_calls(self, request: GenerateThumbnailRequest) -> int:
        """One image-model call per variation."""
        return request.variations

    def max_upstream_calls(self, bounds: InputBounds) -> int:
        """`bounds.max_variations`."""
        return bounds.max_variations

    def model_request(
        self, request: GenerateThumbnailRequest, model: str, index: int
    ) -> ModelRequest:
        """The image-model request of one variation."""
        return ModelRequest(
            model=model,
            parts=tuple(self.prompt_parts(request, index)),
            system_instruction=self.system_instruction,
            response_modalities=("IMAGE", "TEXT"),
            image_aspect_ratio=request.aspect_ratio,
        )

    def prompt_parts(self, request: GenerateThumbnailRequest, index: int) -> Sequence[Part]:
        """Brief, references with their roles, then the variation's own nudge."""
        lines = [
            f"Create a YouTube thumbnail with aspect ratio {request.aspect_ratio}.",
            prompts.creator_text("title or prompt", request.prompt),
        ]
        if request.style_preset is not None:
            lines.append(f"Style: {_STYLE_DIRECTIONS[request.style_preset]}.")
        parts = [Part(text="\n".join(lines))]
        for number, ref in enumerate(request.references, start=1):
            image = ref.image.verified
            parts += (
                Part(text=f"Reference image {number}: {_ROLE_DIRECTIONS[ref.role]}."),
                Part(blob=Blob(image.data, image.mime_type)),
            )
        if request.variations > 1:
            # Identical requests would give near-identical images; each variation gets its own
            # direction so the set is worth choosing from.
            parts.append(
                Part(
                    text=f"This is variation {index + 1} of {request.variations}: take a "
                    "composition clearly different from the other variations."
                )
            )
        return parts

    async def run(
        self, request: GenerateThumbnailRequest, client: ModelClient, ctx: RunContext
    ) -> GeneratedThumbnails:
        """One concurrent image-model call per variation; the first failure cancels the rest."""
        tasks = [
            asyncio.create_task(self._variation(request, index, client, ctx))
            for index in range(request.variations)
        ]
        try:
            variations = await asyncio.gather(*tasks)
        finally:
            # On failure, calls still in flight are abandoned: their images would be discarded.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return GeneratedThumbnails(tuple(variations))

    async def _variation(
        self, request: GenerateThumbnailRequest, index: int, client: ModelClient, ctx: RunContext
    ) -> ThumbnailVariation:
        total = request.variations
        await ctx.emit(ProgressEvent(ProgressKind.STARTED, index=index, total=total))
        variation = await call_model(
            client,
            self.model_request(request, ctx.model, index),
            ctx,
            lambda response: self.parse_variation(response, index),
        )
        await ctx.emit(
            ProgressEvent(ProgressKind.IMAGE_READY, index=index, total=total, image=variation.image)
        )
        return variation

    def parse_variation(self, response: ModelResponse, index: int) -> ThumbnailVariation:
        """The first image of an answer, sniffed, with the answer's text.

        An answer without an image (the model only talked) or with unreadable image bytes is
        `UpstreamBadResponse`.
        """
        if not response.images:
            raise UpstreamBadResponse(
                f"the image model returned no image for variation {index + 1}"
                + (f" (finish reason {response.finish_reason})" if response.finish_reason else "")
            )
        image = sniff_output(response.images[0].data, f"variation {index + 1}")
        return ThumbnailVariation(index, image, response.text.strip())


def _member(v: Violations, field: str, enum: type[E], value: object, *, optional: bool) -> E | None:
    """`value` as a member of `enum` (members and their string values both accepted)."""
    if value is None and optional:
        return None
    # StrEnum members are str, so members pass as well as their values.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return enum(value)
    v.add(field, f"must be one of {', '.join(member.value for member in enum)}")
    return None
