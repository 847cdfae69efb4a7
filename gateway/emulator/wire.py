"""The Gemini REST wire format as the offline Gemini emulator (not Gemini) reads and writes it.

Requests: `GenerateContentRequest` JSON. Field names may be camelCase or snake_case at every
level (the google-genai SDK itself sends `inlineData` with a snake_case `mime_type` inside),
and bytes may be standard or URL-safe base64, padded or not, as Google's JSON parser allows.

Errors: Google's `{"error": {"code", "message", "status", "details"}}` body.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.emulator.png import ASPECT_RATIO_SIZES, IMAGE_SIZE_SCALE

#: HTTP status -> google.rpc.Code name, as Google's REST front end reports them.
STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
API_VERSIONS = frozenset({"v1", "v1beta", "v1alpha"})
#: Google's request size limit for generateContent (inline data included).
MAX_REQUEST_BYTES = 20 * 1024 * 1024
_TYPE = "type.googleapis.com/google.rpc."


class ApiError(Exception):
    """A request the emulator answers with a Google-format error."""

    def __init__(
        self, code: int, message: str, *, details: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return error_body(self.code, self.message, self.details)


def error_body(
    code: int, message: str, details: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """Google's error envelope for one HTTP status."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": STATUS_NAMES.get(code, "UNKNOWN"),
    }
    if details:
        error["details"] = list(details)
    return {"error": error}


def retry_info(delay_s: float) -> dict[str, Any]:
    """A google.rpc.RetryInfo detail; the delay is a protobuf Duration string ("2s", "0.5s")."""
    return {"@type": _TYPE + "RetryInfo", "retryDelay": f"{delay_s:g}s"}


def error_info(reason: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    """A google.rpc.ErrorInfo detail."""
    return {
        "@type": _TYPE + "ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": dict(metadata),
    }


def quota_failure(model: str) -> dict[str, Any]:
    """A google.rpc.QuotaFailure detail like Gemini's per-model request quota."""
    return {
        "@type": _TYPE + "QuotaFailure",
        "violations": [
            {
                "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                "quotaDimensions": {"location": "global", "model": model},
                "quotaValue": "60",
            }
        ],
    }


PartKind = Literal["text", "inline", "file"]


@dataclass(frozen=True, slots=True)
class InputPart:
    """One part of the request's contents (or system instruction)."""

    kind: PartKind
    text: str = ""
    mime_type: str = ""
    size: int = 0  # decoded bytes of inline data
    uri: str = ""


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """What the emulator needs from a generateContent / streamGenerateContent request."""

    api_version: str
    model: str
    stream: bool
    parts: list[InputPart]
    system_parts: list[InputPart] = field(default_factory=list)
    response_mime_type: str = "text/plain"
    #: `responseJsonSchema` or `responseSchema`, whichever was sent.
    response_schema: Mapping[str, Any] | None = None
    modalities: tuple[str, ...] = ("TEXT",)
    aspect_ratio: str | None = None
    image_size: str | None = None
    max_output_tokens: int | None = None

    @property
    def wants_image(self) -> bool:
        """Whether the caller asked for image output."""
        return "IMAGE" in self.modalities

    def summary(self) -> dict[str, Any]:
        """A compact, JSON-friendly description for the emulator's recent-requests log."""
        return {
            "api_version": self.api_version,
            "model": self.model,
            "stream": self.stream,
            "parts": [
                {"kind": p.kind, "mime_type": p.mime_type, "size": p.size, "uri": p.uri}
                if p.kind != "text"
                else {"kind": "text", "chars": len(p.text)}
                for p in self.parts
            ],
            "system_instruction": bool(self.system_parts),
            "response_mime_type": self.response_mime_type,
            "response_schema": self.response_schema,
            "modalities": list(self.modalities),
            "aspect_ratio": self.aspect_ratio,
            "max_output_tokens": self.max_output_tokens,
        }


def image_capable(model: str) -> bool:
    """Whether the emulator treats `model` as an image-output model (its name says "image")."""
    return "image" in model


def parse_generate_request(
    api_version: str, model: str, stream: bool, body: bytes
) -> GenerateRequest:
    """Validates and reads a request body the way Gemini would, or raises `ApiError` (400)."""
    payload = json_object(body)
    contents = get_field(payload, "contents")
    if not contents:
        raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified\n")
    if not isinstance(contents, list):
        raise ApiError(400, "Invalid value at 'contents': expected a list of Content.")
    parts: list[InputPart] = []
    for ci, content in enumerate(contents):
        parts += _parse_parts(content, f"contents[{ci}]")
    system = get_field(payload, "systemInstruction", "system_instruction")
    system_parts = _parse_parts(system, "system_instruction") if system else []

    config = get_field(payload, "generationConfig", "generation_config") or {}
    if not isinstance(config, dict):
        raise ApiError(400, "Invalid value at 'generation_config': expected an object.")
    json_schema = get_field(config, "responseJsonSchema", "response_json_schema")
    openapi_schema = get_field(config, "responseSchema", "response_schema")
    if json_schema is not None and openapi_schema is not None:
        raise ApiError(400, "Only one of response_schema and response_json_schema may be set.")
    schema = json_schema if json_schema is not None else openapi_schema
    mime = get_field(config, "responseMimeType", "response_mime_type") or "text/plain"
    if schema is not None:
        if not isinstance(schema, dict):
            raise ApiError(400, "Invalid value at 'generation_config.response_schema'.")
        if mime != "application/json":
            raise ApiError(
                400,
                "response_mime_type must be 'application/json' when a response schema is set.",
            )

    modalities = tuple(
        str(m).upper() for m in get_field(config, "responseModalities", "response_modalities") or []
    ) or ("TEXT",)
    for modality in modalities:
        if modality not in ("TEXT", "IMAGE"):
            raise ApiError(400, f"Unsupported response modality: {modality}.")
    if "IMAGE" in modalities and not image_capable(model):
        raise ApiError(400, "Model does not support the requested response modalities: image")

    image_config = get_field(config, "imageConfig", "image_config") or {}
    aspect_ratio = get_field(image_config, "aspectRatio", "aspect_ratio")
    if aspect_ratio is not None and aspect_ratio not in ASPECT_RATIO_SIZES:
        raise ApiError(
            400,
            f"Unsupported aspect ratio {aspect_ratio!r}; supported: "
            + ", ".join(ASPECT_RATIO_SIZES),
        )
    image_size = get_field(image_config, "imageSize", "image_size")
    if image_size is not None and image_size not in IMAGE_SIZE_SCALE:
        raise ApiError(400, f"Unsupported image size {image_size!r}; supported: 1K, 2K, 4K.")

    max_tokens = get_field(config, "maxOutputTokens", "max_output_tokens")
    return GenerateRequest(
        api_version=api_version,
        model=model,
        stream=stream,
        parts=parts,
        system_parts=system_parts,
        response_mime_type=mime,
        response_schema=schema,
        modalities=modalities,
        aspect_ratio=aspect_ratio,
        image_size=image_size,
        max_output_tokens=int(max_tokens) if max_tokens is not None else None,
    )


def json_object(body: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object, or the `ApiError` (400) Gemini answers."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"Invalid JSON payload received. {exc}.") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "Invalid JSON payload received. Expected an object.")
    return payload


def decode_bytes(text: Any, where: str) -> bytes:
    """Standard or URL-safe base64, padding optional, as proto3 JSON accepts for `bytes`."""
    if not isinstance(text, str):
        raise ApiError(400, f"Invalid value at '{where}' (TYPE_BYTES): expected a string.")
    compact = text.strip().translate(_URLSAFE_TO_STANDARD)
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"Invalid value at '{where}' (TYPE_BYTES), Base64 decoding failed."
        ) from None


_URLSAFE_TO_STANDARD = str.maketrans("-_", "+/")


def _parse_parts(content: Any, where: str) -> list[InputPart]:
    if not isinstance(content, dict):
        raise ApiError(400, f"Invalid value at '{where}': expected a Content object.")
    raw_parts = get_field(content, "parts")
    if not raw_parts or not isinstance(raw_parts, list):
        raise ApiError(
            400, f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n"
        )
    parts = []
    for pi, raw in enumerate(raw_parts):
        at = f"{where}.parts[{pi}]"
        if not isinstance(raw, dict):
            raise ApiError(400, f"Invalid value at '{at}': expected a Part object.")
        inline = get_field(raw, "inlineData", "inline_data")
        file = get_field(raw, "fileData", "file_data")
        text = get_field(raw, "text")
        if sum(x is not None for x in (inline, file, text)) != 1:
            raise ApiError(
                400,
                f"* GenerateContentRequest.{at}.data: required oneof field 'data' must "
                "have one initialized field\n",
            )
        if text is not None:
            parts.append(InputPart("text", text=str(text)))
        elif inline is not None:
            mime = get_field(inline, "mimeType", "mime_type")
            if not mime:
                raise ApiError(
                    400,
                    f"* GenerateContentRequest.{at}.inline_data.mime_type: "
                    "mime_type is not specified\n",
                )
            data = decode_bytes(get_field(inline, "data"), f"{at}.inline_data.data")
            if not data:
                raise ApiError(
                    400, f"* GenerateContentRequest.{at}.inline_data.data: data is empty\n"
                )
            parts.append(InputPart("inline", mime_type=str(mime), size=len(data)))
        else:
            uri = get_field(file, "fileUri", "file_uri")
            if not uri:
                raise ApiError(
                    400,
                    f"* GenerateContentRequest.{at}.file_data.file_uri: "
                    "file_uri is not specified\n",
                )
            mime = get_field(file, "mimeType", "mime_type") or ""
            parts.append(InputPart("file", mime_type=str(mime), uri=str(uri)))
    return parts


def get_field(obj: Any, camel: str, snake: str | None = None) -> Any:
    """`obj[camel]`, else `obj[snake]` (Google's JSON parser takes both); None when `obj` is
    not an object or has neither."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(camel)
    if value is None and snake is not None:
        value = obj.get(snake)
    return value
