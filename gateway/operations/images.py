"""Images as operations see them: caller uploads (sniffed, never trusted) and model output.

Every image's format and size come from its own headers via the native sniffer; a declared MIME type
is only ever compared against that, never believed. Bytes live in memory on `Image.data`; results
put only an `Image`'s content hash, format and size into JSON (see `gateway.operations.codec`), so
a blob store can hold the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway import native
from gateway.errors import InvalidArgument, UpstreamBadResponse

#: Formats Gemini accepts as image input. The sniffer also knows GIF, which Gemini refuses.
INPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

_MIME_BY_FORMAT = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "gif": "image/gif",
}
# Spellings callers commonly declare for the same format.
_MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}


def mime_type_of(image_format: str) -> str:
    """The MIME type of a sniffed format name (`"png"` -> `"image/png"`)."""
    return _MIME_BY_FORMAT[image_format]


@dataclass(frozen=True, slots=True)
class Image:
    """Image bytes with what their headers say: format, pixel size and SHA-256 of the bytes."""

    data: bytes
    #: Sniffed container format: "png", "jpeg", "webp" or "gif".
    format: str
    width: int
    height: int
    #: SHA-256 of `data` (32 bytes); also the image's name in a blob store.
    sha256: bytes

    @property
    def mime_type(self) -> str:
        """The MIME type matching the sniffed format."""
        return mime_type_of(self.format)

    @property
    def size(self) -> int:
        """Length of `data` in bytes."""
        return len(self.data)

    @classmethod
    def from_info(cls, data: bytes, info: native.ImageInfo) -> Image:
        """Pairs bytes with the native sniffer's report on them."""
        return cls(data, info.format, info.width, info.height, info.sha256)


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image a caller sent.

    `mime_type` is what the caller declared ("" when nothing was declared); validation sniffs the
    bytes, refuses a declaration that disagrees, and fills `sniffed`. Operations read images only
    through `verified`, so an unvalidated request cannot reach key derivation or the model.
    """

    data: bytes
    mime_type: str = ""
    #: Set by validation: the same bytes with their sniffed format, size and hash.
    sniffed: Image | None = None

    @property
    def verified(self) -> Image:
        """The sniffed image; a programming error before validation."""
        if self.sniffed is None:
            raise RuntimeError("image input used before the request was validated")
        return self.sniffed


def image_too_large(size: int, max_bytes: int) -> str:
    """What is wrong with an image of `size` bytes, over the limit of `max_bytes`."""
    return f"image is {size} bytes; the limit is {max_bytes} bytes"


def sniff_input(item: ImageInput, field: str, *, max_bytes: int, max_side: int) -> ImageInput:
    """Checks one uploaded image and returns it with `sniffed` filled.

    Raises `InvalidArgument` naming `field` (the image's path, e.g. `references[2]`) when the bytes
    are empty, too large, not a supported image, larger than `max_side` pixels on a side, in a
    format Gemini does not take, or when the declared MIME type disagrees with the bytes.
    """
    data_field = f"{field}.data"
    if len(item.data) > max_bytes:
        raise InvalidArgument.field(data_field, image_too_large(len(item.data), max_bytes))
    image = Image.from_info(
        item.data, native.inspect_image_field(item.data, data_field, max_side=max_side)
    )
    if image.format not in INPUT_FORMATS:
        raise InvalidArgument.field(
            data_field,
            f"image is {image.format.upper()}; send PNG, JPEG or WebP",
        )
    declared = item.mime_type.strip().lower()
    declared = _MIME_ALIASES.get(declared, declared)
    if declared and declared != image.mime_type:
        raise InvalidArgument.field(
            f"{field}.mime_type",
            f"declared {item.mime_type!r} but the bytes are {image.mime_type}; "
            "fix the declared type or leave it empty",
        )
    return ImageInput(item.data, item.mime_type, image)


def sniff_output(data: bytes, what: str) -> Image:
    """Sniffs an image the model produced; unreadable output is the model's fault.

    `what` names the output in the error (e.g. "variation 2").
    """
    try:
        return Image.from_info(data, native.inspect_image(data))
    except native.ImageError as exc:
        raise UpstreamBadResponse(
            f"the model returned an unreadable image for {what}: {exc}"
        ) from None
