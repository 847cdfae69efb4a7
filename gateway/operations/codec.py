"""Typed results to JSON and back, with image bytes kept out of the JSON.

Results are frozen dataclasses of plain fields (str, int, float, bool, StrEnum, tuples, nested
dataclasses) and `Image`s. In JSON an `Image` becomes a reference,
``{"sha256": hex, "mime_type": ..., "format": ..., "size": ..., "width": ..., "height": ...}``,
and its bytes travel separately as blobs keyed by SHA-256 digest:

    text = to_json(result)             # what the result cache stores
    blobs = collect_blobs(result)      # digest -> bytes, for the blob store
    same = from_json(ResultType, text, blobs)

Decoding is strict: a missing or unknown field, a wrong type, an unknown enum value or a blob whose
bytes do not hash to its reference is a `DecodeError`. The same decoder turns a model's validated
JSON answer into its typed form.

Validated requests go the same way (a job keeps its request to run it later): a validated
`ImageInput` is written as the reference of the image it was sniffed as, and decodes back into a
validated `ImageInput`.
"""

from __future__ import annotations

import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar

from gateway import native
from gateway.operations.images import Image, ImageInput, mime_type_of

T = TypeVar("T")

#: Blob digest (32-byte SHA-256) -> bytes.
Blobs = Mapping[bytes, bytes]


class DecodeError(ValueError):
    """JSON that does not fit the type it is decoded into; `path` says where."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@functools.cache
def _field_names(cls: type) -> tuple[str, ...] | None:
    """The fields of a dataclass type, in order; None for any other type. Looked up once per
    type: `dataclasses.fields` builds its answer anew on every call, once per value of every
    result encoded."""
    if not is_dataclass(cls):
        return None
    return tuple(f.name for f in fields(cls))


def to_jsonable(value: Any) -> Any:
    """The JSON-ready form of a result value (images become blob references)."""
    if isinstance(value, ImageInput):
        value = value.verified
    if isinstance(value, Image):
        return {
            "sha256": value.sha256.hex(),
            "mime_type": value.mime_type,
            "format": value.format,
            "size": value.size,
            "width": value.width,
            "height": value.height,
        }
    if isinstance(value, str):
        return value
    names = None if isinstance(value, type) else _field_names(value.__class__)
    if names is not None:
        return {name: to_jsonable(getattr(value, name)) for name in names}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [to_jsonable(item) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    # Raw bytes anywhere but inside an Image would bloat the JSON; that is a modelling bug.
    raise TypeError(f"{type(value).__name__} cannot go into result JSON")


def to_json(value: Any) -> str:
    """Compact, key-sorted JSON of a result (stable text for equal results)."""
    return json.dumps(
        to_jsonable(value),
        ensure_ascii=False,
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )


def collect_blobs(value: Any) -> dict[bytes, bytes]:
    """Every image's bytes in a result, keyed by SHA-256 digest."""
    found: dict[bytes, bytes] = {}
    _collect(value, found)
    return found


def _collect(value: Any, found: dict[bytes, bytes]) -> None:
    if isinstance(value, ImageInput):
        value = value.verified
    if isinstance(value, Image):
        found[value.sha256] = value.data
    elif (names := None if isinstance(value, type) else _field_names(value.__class__)) is not None:
        for name in names:
            _collect(getattr(value, name), found)
    elif isinstance(value, tuple | list):
        for item in value:
            _collect(item, found)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("an object repeats a key")
    return result


def loads_strict(text: str) -> Any:
    """`json.loads` that refuses NaN/Infinity and objects with repeated keys."""
    return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def from_json(cls: type[T], text: str, blobs: Blobs) -> T:
    """Decodes `to_json` output back into `cls`, taking image bytes from `blobs`."""
    try:
        data = loads_strict(text)
    except ValueError as exc:
        raise DecodeError("$", f"not JSON ({exc})") from None
    return from_jsonable(cls, data, blobs)


def from_jsonable(cls: type[T], data: Any, blobs: Blobs | None = None, path: str = "$") -> T:
    """Decodes parsed JSON into `cls`, strictly (see the module docstring)."""
    return typing.cast(T, _decode(cls, data, blobs or {}, path))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, data: Any, blobs: Blobs, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if data is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) != 1:
            raise TypeError(f"unsupported union {tp}")
        return _decode(options[0], data, blobs, path)
    if origin is tuple:
        item_type, ellipsis = typing.get_args(tp)
        if ellipsis is not Ellipsis:
            raise TypeError(f"only homogeneous tuples are supported, not {tp}")
        if not isinstance(data, list):
            raise DecodeError(path, "must be an array")
        return tuple(
            _decode(item_type, item, blobs, f"{path}[{index}]") for index, item in enumerate(data)
        )
    if tp is Image:
        return _decode_image(data, blobs, path)
    if tp is ImageInput:
        image = _decode_image(data, blobs, path)
        return ImageInput(image.data, image.mime_type, image)
    if isinstance(tp, type) and is_dataclass(tp):
        return _decode_dataclass(tp, data, blobs, path)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(data)
        except ValueError:
            raise DecodeError(path, f"must be one of {[m.value for m in tp]}") from None
    return _decode_scalar(tp, data, path)


def _decode_scalar(tp: Any, data: Any, path: str) -> Any:
    if tp is bool:
        if isinstance(data, bool):
            return data
        raise DecodeError(path, "must be a boolean")
    if tp is str:
        if isinstance(data, str):
            return data
        raise DecodeError(path, "must be a string")
    numeric = not isinstance(data, bool) and isinstance(data, int | float)
    if tp is int:
        if numeric and float(data).is_integer():
            return int(data)
        raise DecodeError(path, "must be an integer")
    if tp is float:
        if numeric:
            return float(data)
        raise DecodeError(path, "must be a number")
    raise TypeError(f"unsupported field type {tp!r}")


def _decode_dataclass(cls: type, data: Any, blobs: Blobs, path: str) -> Any:
    if not isinstance(data, dict):
        raise DecodeError(path, "must be an object")
    hints = _hints(cls)
    names = _field_names(cls)
    assert names is not None  # `_decode` sends dataclasses only
    unknown = data.keys() - names
    if unknown:
        raise DecodeError(f"{path}.{sorted(unknown)[0]}", "is not a known field")
    values = {}
    for name in names:
        if name not in data:
            raise DecodeError(f"{path}.{name}", "is missing")
        values[name] = _decode(hints[name], data[name], blobs, f"{path}.{name}")
    return cls(**values)


def _decode_image(data: Any, blobs: Blobs, path: str) -> Image:
    if not isinstance(data, dict):
        raise DecodeError(path, "must be an image reference object")
    try:
        digest = bytes.fromhex(data["sha256"])
        image_format = data["format"]
        size, width, height = int(data["size"]), int(data["width"]), int(data["height"])
        expected_mime = mime_type_of(image_format)
    except (KeyError, TypeError, ValueError):
        raise DecodeError(path, "is not a valid image reference") from None
    if data.get("mime_type") != expected_mime:
        raise DecodeError(f"{path}.mime_type", f"does not match format {image_format!r}")
    blob = blobs.get(digest)
    if blob is None:
        raise DecodeError(path, f"blob {digest.hex()} is missing")
    # A blob store that hands back other bytes under this name is corrupt; never serve them.
    if len(blob) != size or native.sha256(blob) != digest:
        raise DecodeError(path, f"blob {digest.hex()} does not match its reference")
    return Image(blob, image_format, width, height, digest)
