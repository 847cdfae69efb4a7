"""The one module that imports the Rust extension `gateway._native`.

Everything else in the gateway goes through here, so the native surface stays small and its
errors are translated into domain errors in one place.
"""

from __future__ import annotations

from gateway._native import (
    DEFAULT_MAX_IMAGE_SIDE,
    MAX_JSON_DEPTH,
    Decision,
    GcraLimiter,
    ImageError,
    ImageInfo,
    canonical_json,
    canonical_json_sha256,
    inspect_image,
    monotonic_ns,
    sha256,
    sha256_many,
)
from gateway.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_IMAGE_SIDE",
    "MAX_JSON_DEPTH",
    "Decision",
    "GcraLimiter",
    "ImageError",
    "ImageInfo",
    "canonical_json",
    "canonical_json_field",
    "canonical_json_sha256",
    "canonical_json_sha256_field",
    "inspect_image",
    "inspect_image_field",
    "monotonic_ns",
    "sha256",
    "sha256_many",
]


def inspect_image_field(
    data: bytes, field: str, *, max_side: int = DEFAULT_MAX_IMAGE_SIDE
) -> ImageInfo:
    """`inspect_image` for a request field: a bad image becomes `InvalidArgument` naming it."""
    if not data:
        raise InvalidArgument.field(field, "image is empty")
    try:
        return inspect_image(data, max_side)
    except ImageError as exc:
        raise InvalidArgument.field(field, str(exc)) from None


def canonical_json_field(text: str | bytes, field: str) -> str:
    """`canonical_json` for a request field: bad JSON becomes `InvalidArgument` naming it."""
    try:
        return canonical_json(text)
    except ValueError as exc:
        raise InvalidArgument.field(field, f"not acceptable JSON: {exc}") from None


def canonical_json_sha256_field(text: str | bytes, field: str) -> bytes:
    """`canonical_json_sha256` for a request field: bad JSON becomes `InvalidArgument` naming it."""
    return sha256(canonical_json_field(text, field).encode("utf-8"))
