"""Synthetic `GenerateContentResponse` bodies of the offline Gemini emulator (not Gemini).

Answers are a pure function of the request (a hash of model and body seeds every draw): text or
schema-satisfying JSON, PNG images for image-output models, and `usageMetadata` with counts
shaped like Gemini's (about 4 characters per text token, 258 tokens per input image, 1290 per
generated image, video at 258 + 32 tokens per second, thinking tokens for text models).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.emulator.png import image_size, synthetic_png
from gateway.emulator.synth import value_for_schema, words
from gateway.emulator.wire import GenerateRequest, InputPart, image_capable

IMAGE_INPUT_TOKENS = 258
IMAGE_OUTPUT_TOKENS = 1290
VIDEO_TOKENS_PER_SECOND = 258
AUDIO_TOKENS_PER_SECOND = 32
#: About how many characters of text one streamed chunk carries (`Knobs.stream_chunk_chars`).
STREAM_CHUNK_CHARS = 300

_SAFETY_CATEGORIES = (
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
)


def request_seed(model: str, body: bytes) -> int:
    """The seed of every synthetic draw for one request: same model and request, same answer.

    The request is `body` read as JSON and written canonically (sorted keys, no spaces), so a
    request answered alone and the same request as a line of a batch (whose JSON the client
    lays out differently) get the same answer."""
    canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(model.encode() + b"\0" + canonical.encode()).digest()
    return int.from_bytes(digest[:8], "big")


def text_tokens(text: str) -> int:
    """Gemini's rule of thumb: about four characters per token."""
    return math.ceil(len(text) / 4) if text else 0


@dataclass(slots=True)
class Answer:
    """One complete synthetic answer, ready to be sent whole or as SSE chunks."""

    model_version: str
    response_id: str
    prompt_tokens: int
    prompt_details: list[dict[str, Any]]
    text: str = ""
    images: list[bytes] = field(default_factory=list)
    thoughts_tokens: int = 0
    finish_reason: str = "STOP"
    #: promptFeedback.blockReason; when set there are no candidates.
    block_reason: str | None = None

    def usage(self, *, text_so_far: str | None = None, final: bool = True) -> dict[str, Any]:
        """`usageMetadata`; intermediate stream chunks carry the prompt count only."""
        usage: dict[str, Any] = {
            "promptTokenCount": self.prompt_tokens,
            "promptTokensDetails": self.prompt_details,
        }
        if not final:
            usage["totalTokenCount"] = self.prompt_tokens
            return usage
        text_count = text_tokens(self.text if text_so_far is None else text_so_far)
        image_count = IMAGE_OUTPUT_TOKENS * len(self.images)
        candidates = text_count + image_count
        if self.block_reason is None and candidates:
            usage["candidatesTokenCount"] = candidates
        if image_count:
            details = [{"modality": "IMAGE", "tokenCount": image_count}]
            if text_count:
                details.insert(0, {"modality": "TEXT", "tokenCount": text_count})
            usage["candidatesTokensDetails"] = details
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        usage["totalTokenCount"] = self.prompt_tokens + candidates + self.thoughts_tokens
        return usage

    def body(self) -> dict[str, Any]:
        """The unary `generateContent` response."""
        return self._envelope(self._parts(self.text, self.images), final=True)

    def chunks(self, chunk_chars: int = STREAM_CHUNK_CHARS) -> list[dict[str, Any]]:
        """The `streamGenerateContent` events: text in pieces of about `chunk_chars` characters
        (cut at a space where there is one), then images, usage at the end."""
        if self.block_reason is not None or (self.finish_reason != "STOP" and not self.text):
            return [self.body()]
        pieces = _split(self.text, chunk_chars) if self.text else []
        events: list[dict[str, Any]] = [
            self._envelope(self._parts(piece, []), final=False) for piece in pieces
        ]
        events += [self._envelope(self._parts("", [image]), final=False) for image in self.images]
        if not events:
            return [self.body()]
        last = events[-1]
        last["candidates"][0]["finishReason"] = self.finish_reason
        last["usageMetadata"] = self.usage()
        return events

    def _parts(self, text: str, images: Sequence[bytes]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [{"text": text}] if text else []
        parts += [
            {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(i).decode()}}
            for i in images
        ]
        return parts

    def _envelope(self, parts: list[dict[str, Any]], *, final: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.block_reason is not None:
            body["promptFeedback"] = {
                "blockReason": self.block_reason,
                "safetyRatings": _safety_ratings(blocked=True),
            }
        else:
            candidate: dict[str, Any] = {"index": 0}
            if parts:
                candidate["content"] = {"parts": parts, "role": "model"}
            if final:
                candidate["finishReason"] = self.finish_reason
                if self.finish_reason in ("SAFETY", "IMAGE_SAFETY"):
                    candidate["safetyRatings"] = _safety_ratings(blocked=True)
            body["candidates"] = [candidate]
        body["usageMetadata"] = self.usage(final=final)
        body["modelVersion"] = self.model_version
        body["responseId"] = self.response_id
        return body


def synthesize(
    request: GenerateRequest,
    seed: int,
    *,
    image_bytes: Sequence[bytes] = (),
    invalid: bool = False,
    scripted: str | None = None,
) -> Answer:
    """The answer to `request`. `image_bytes` are the PNGs to return (see `image_plan`);
    `invalid` makes the text deliberately fail the response schema (a truncated JSON document);
    `scripted` is the answer text to send instead of a synthetic one.
    """
    rng = random.Random(seed)
    prompt_tokens, prompt_details = prompt_usage(request, seed)
    answer = Answer(
        model_version=request.model,
        response_id=base64.urlsafe_b64encode(seed.to_bytes(8, "big") + rng.randbytes(8))
        .decode()
        .rstrip("="),
        prompt_tokens=prompt_tokens,
        prompt_details=prompt_details,
        images=list(image_bytes),
    )
    if not image_capable(request.model):
        answer.thoughts_tokens = rng.randint(40, 400)

    if scripted is not None:
        text = scripted
    elif request.response_schema is not None or invalid:
        schema = request.response_schema or {"type": "object", "properties": {"answer": {}}}
        text = json.dumps(value_for_schema(schema, rng), ensure_ascii=False)
        if invalid:
            text = text[: max(1, len(text) // 2)]
    elif image_bytes:
        text = (
            f"Here is the image ({words(rng, 3)}), synthesized by the offline Gemini emulator."
            if "TEXT" in request.modalities
            else ""
        )
    else:
        text = (
            "This answer was synthesized by the offline Gemini emulator, not by Gemini: "
            f"{words(rng, rng.randint(24, 60))}."
        )

    limit = request.max_output_tokens
    if limit is not None and text_tokens(text) > limit:
        text = text[: limit * 4]
        answer.finish_reason = "MAX_TOKENS"
    answer.text = text
    return answer


def image_plan(request: GenerateRequest, seed: int) -> tuple[int, int, int] | None:
    """(width, height, seed) of the one image an image request gets, or None."""
    if not request.wants_image:
        return None
    width, height = image_size(request.aspect_ratio, request.image_size)
    return width, height, seed


def render_image(plan: tuple[int, int, int]) -> bytes:
    """The PNG for an `image_plan` (CPU-bound: run it off the event loop)."""
    width, height, seed = plan
    return synthetic_png(width, height, seed)


def blocked(request: GenerateRequest, seed: int, block_reason: str) -> Answer:
    """A prompt rejected by the safety filters: promptFeedback, no candidates."""
    prompt_tokens, details = prompt_usage(request, seed)
    return Answer(
        model_version=request.model,
        response_id=f"blocked-{seed:016x}",
        prompt_tokens=prompt_tokens,
        prompt_details=details,
        block_reason=block_reason,
    )


def refused(request: GenerateRequest, seed: int, finish_reason: str) -> Answer:
    """A candidate stopped by the safety filters: no content, finishReason SAFETY/IMAGE_SAFETY."""
    prompt_tokens, details = prompt_usage(request, seed)
    return Answer(
        model_version=request.model,
        response_id=f"refused-{seed:016x}",
        prompt_tokens=prompt_tokens,
        prompt_details=details,
        finish_reason=finish_reason,
    )


def prompt_usage(request: GenerateRequest, seed: int) -> tuple[int, list[dict[str, Any]]]:
    """promptTokenCount and promptTokensDetails (by modality) for the request's inputs."""
    counts: dict[str, int] = {}
    for part in [*request.system_parts, *request.parts]:
        for modality, tokens in _part_tokens(part, seed):
            counts[modality] = counts.get(modality, 0) + tokens
    details = [{"modality": m, "tokenCount": n} for m, n in counts.items() if n]
    return sum(counts.values()), details


def _part_tokens(part: InputPart, seed: int) -> list[tuple[str, int]]:
    if part.kind == "text":
        return [("TEXT", text_tokens(part.text))]
    mime = part.mime_type
    if mime.startswith("image/"):
        return [("IMAGE", IMAGE_INPUT_TOKENS)]
    if part.kind == "file" or mime.startswith("video/"):
        # A video's length is unknown offline; derive a stable 2 to 12 minutes from its identity.
        identity = (part.uri or str(part.size)).encode()
        seconds = 120 + int.from_bytes(hashlib.sha256(identity).digest()[:2], "big") % 600
        return [
            ("VIDEO", VIDEO_TOKENS_PER_SECOND * seconds),
            ("AUDIO", AUDIO_TOKENS_PER_SECOND * seconds),
        ]
    if mime.startswith("audio/"):
        return [("AUDIO", AUDIO_TOKENS_PER_SECOND * max(1, part.size // 16000))]
    return [("DOCUMENT", IMAGE_INPUT_TOKENS)]


def _split(text: str, chunk_chars: int) -> list[str]:
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        space = text.rfind(" ", start + 1, end)
        if end < len(text) and space > start:
            end = space
        pieces.append(text[start:end])
        start = end
    return pieces


def _safety_ratings(*, blocked: bool) -> list[dict[str, Any]]:
    ratings: list[dict[str, Any]] = [
        {"category": c, "probability": "NEGLIGIBLE"} for c in _SAFETY_CATEGORIES[:-1]
    ]
    ratings.append({"category": _SAFETY_CATEGORIES[-1], "probability": "HIGH", "blocked": blocked})
    return ratings
