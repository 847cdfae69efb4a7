"""`inspect_image` must agree with Pillow on what Pillow writes, and reject anything incomplete.

Pillow is the reference decoder: for every file it encodes, the native sniffer has to report
the same format and size without decoding a pixel, hash the same bytes as hashlib, and turn
every truncation of it into `ImageError`.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gateway import native

# Encoding is the slow part of each example; a few dozen random sizes per variant suffice.
ENCODE_SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@dataclass(frozen=True)
class Variant:
    """One way of writing an image with Pillow."""

    name: str
    pillow_format: str
    mode: str
    options: dict[str, Any]
    frames: int = 1

    @property
    def format(self) -> str:
        return self.pillow_format.lower()


def _exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "ViewBait test camera"  # Make
    exif[0x0131] = "pytest"  # Software
    return exif


VARIANTS = [
    Variant("png-1", "PNG", "1", {}),
    Variant("png-L", "PNG", "L", {}),
    Variant("png-LA", "PNG", "LA", {}),
    Variant("png-P", "PNG", "P", {}),
    Variant("png-RGB", "PNG", "RGB", {}),
    Variant("png-RGBA", "PNG", "RGBA", {"compress_level": 1}),
    Variant("png-I16", "PNG", "I;16", {}),
    Variant("png-animated", "PNG", "RGBA", {}, frames=3),
    Variant("jpeg-baseline", "JPEG", "RGB", {"quality": 90}),
    Variant("jpeg-gray", "JPEG", "L", {}),
    Variant("jpeg-cmyk", "JPEG", "CMYK", {}),
    Variant("jpeg-optimized-444", "JPEG", "RGB", {"optimize": True, "subsampling": 0}),
    Variant("jpeg-progressive", "JPEG", "RGB", {"progressive": True}),
    Variant("jpeg-restart", "JPEG", "RGB", {"restart_marker_blocks": 1}),
    Variant("jpeg-exif", "JPEG", "RGB", {"exif": _exif()}),
    Variant("webp-lossy", "WEBP", "RGB", {"quality": 60}),
    Variant("webp-lossless", "WEBP", "RGB", {"lossless": True}),
    Variant("webp-alpha", "WEBP", "RGBA", {}),
    Variant("webp-lossless-alpha", "WEBP", "RGBA", {"lossless": True}),
    Variant("webp-exif", "WEBP", "RGB", {"exif": _exif()}),
    Variant("webp-animated", "WEBP", "RGB", {"duration": 80}, frames=3),
    Variant("gif", "GIF", "P", {}),
    Variant("gif-rgb", "GIF", "RGB", {"interlace": False}),
    Variant("gif-animated", "GIF", "RGB", {"duration": 50, "loop": 0}, frames=3),
]
VARIANT_IDS = [v.name for v in VARIANTS]


def encode(variant: Variant, width: int, height: int, seed: int) -> bytes:
    """Writes a `width` x `height` image of noise, which gives JPEG plenty of ff bytes."""
    rng = random.Random(seed)
    frames = []
    for _ in range(variant.frames):
        probe = Image.new(variant.mode, (1, 1))
        raw = rng.randbytes(len(probe.tobytes()) * width * height)
        frames.append(Image.frombytes(variant.mode, (width, height), raw))
    out = io.BytesIO()
    extra: dict[str, Any] = {}
    if variant.frames > 1:
        extra = {"save_all": True, "append_images": frames[1:]}
    frames[0].save(out, variant.pillow_format, **variant.options, **extra)
    return out.getvalue()


def pillow_view(data: bytes) -> tuple[str, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format is not None
        return im.format.lower(), im.size


sizes = st.integers(min_value=1, max_value=160)
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@ENCODE_SETTINGS
@given(width=sizes, height=sizes, seed=seeds)
def test_agrees_with_pillow_and_hashlib(
    variant: Variant, width: int, height: int, seed: int
) -> None:
    data = encode(variant, width, height, seed)
    info = native.inspect_image(data)
    assert pillow_view(data) == (variant.format, (width, height))
    assert (info.format, info.width, info.height) == (variant.format, width, height)
    assert info.sha256 == hashlib.sha256(data).digest()


MARKERS = {
    "png-animated": b"acTL",
    "jpeg-progressive": b"\xff\xc2",
    "jpeg-restart": b"\xff\xd0",
    "jpeg-exif": b"\xff\xe1",
    "webp-lossy": b"VP8 ",
    "webp-lossless": b"VP8L",
    "webp-alpha": b"ALPH",
    "webp-exif": b"EXIF",
    "webp-animated": b"ANMF",
    "gif-animated": b"NETSCAPE2.0",
}


@pytest.mark.parametrize(("name", "marker"), MARKERS.items())
def test_variants_exercise_the_structure_they_are_named_for(name: str, marker: bytes) -> None:
    # Guards the agreement tests above: a variant that silently fell back to a plain encoding
    # would leave that structure untested.
    assert marker in encode(VARIANTS[VARIANT_IDS.index(name)], 64, 48, seed=9)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_every_truncation_of_a_small_file_raises(variant: Variant) -> None:
    data = encode(variant, 5, 3, seed=7)
    for length in range(len(data)):
        with pytest.raises(native.ImageError):
            native.inspect_image(data[:length])


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
@ENCODE_SETTINGS
@given(width=sizes, height=sizes, seed=seeds, cut=st.floats(min_value=0.0, max_value=1.0))
def test_truncated_files_raise(
    variant: Variant, width: int, height: int, seed: int, cut: float
) -> None:
    data = encode(variant, width, height, seed)
    length = min(int(len(data) * cut), len(data) - 1)
    with pytest.raises(native.ImageError, match=r"^truncated "):
        native.inspect_image(data[:length] if length else data[:1])


def test_large_file_is_sniffed_and_hashed_with_the_gil_released() -> None:
    data = encode(VARIANTS[VARIANT_IDS.index("png-RGB")], 640, 560, seed=1)
    assert len(data) > 1024 * 1024
    info = native.inspect_image(data)
    assert (info.format, info.width, info.height) == ("png", 640, 560)
    assert info.sha256 == hashlib.sha256(data).digest()
    with pytest.raises(native.ImageError, match=r"^truncated PNG: chunk IDAT"):
        native.inspect_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("pillow_format", "width", "height"),
    [("PNG", 20_000, 1), ("PNG", 1, 16_385), ("JPEG", 16_400, 8), ("GIF", 8, 20_000)],
)
def test_sides_above_the_default_limit_raise(pillow_format: str, width: int, height: int) -> None:
    data = encode(Variant("big", pillow_format, "L", {}), width, height, seed=3)
    with pytest.raises(
        native.ImageError,
        match=rf"^image is {width}x{height}, larger than the {native.DEFAULT_MAX_IMAGE_SIDE}-pixel "
        r"limit per side$",
    ):
        native.inspect_image(data)


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_max_side_is_inclusive(variant: Variant) -> None:
    data = encode(variant, 40, 25, seed=5)
    assert native.inspect_image(data, max_side=40).width == 40
    with pytest.raises(native.ImageError, match=r"is 40x25, larger than the 39-pixel limit"):
        native.inspect_image(data, max_side=39)


def test_buffer_kinds_give_the_same_answer() -> None:
    data = encode(VARIANTS[VARIANT_IDS.index("jpeg-progressive")], 90, 70, seed=11)
    expected = native.inspect_image(data)
    padded = b"xx" + data + b"yy"
    for view in (bytearray(data), memoryview(data), memoryview(padded)[2:-2]):
        info = native.inspect_image(view)
        assert (info.format, info.width, info.height) == (expected.format, 90, 70)
        assert info.sha256 == expected.sha256


def test_text_and_non_buffers_raise_type_error() -> None:
    with pytest.raises(TypeError, match="got str"):
        native.inspect_image("\x89PNG")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        native.inspect_image(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"^unknown image format: .* \(the data is empty\)$"),
        (
            b"<html><body>hi</body></html>",
            r"^unknown image format: expected PNG, JPEG, WebP or GIF \(first bytes 3c 68 74 6d\)$",
        ),
        (b"BM\x00\x00", r"^unknown image format: .*first bytes 42 4d 00 00"),
        (b"\x89PNG\r\n", r"^truncated PNG: the data ends after 6 bytes, inside the signature$"),
    ],
)
def test_unknown_or_cut_signatures_raise(data: bytes, message: str) -> None:
    with pytest.raises(native.ImageError, match=message):
        native.inspect_image(data)


def test_image_error_is_a_value_error() -> None:
    assert issubclass(native.ImageError, ValueError)


def test_zero_sized_gif_screen_is_rejected() -> None:
    data = bytearray(encode(Variant("gif", "GIF", "P", {}), 4, 4, seed=2))
    data[6:8] = (0).to_bytes(2, "little")  # logical screen width
    with pytest.raises(native.ImageError, match=r"^image is 0x4: .*side of zero pixels"):
        native.inspect_image(bytes(data))


@settings(max_examples=300, deadline=None)
@given(variant=st.sampled_from(VARIANTS), flips=st.lists(st.tuples(seeds, st.integers(0, 255))))
def test_corrupted_files_raise_or_agree_never_crash(
    variant: Variant, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(encode(variant, 6, 4, seed=1))
    for position, value in flips:
        data[position % len(data)] = value
    try:
        info = native.inspect_image(bytes(data))
    except native.ImageError:
        return
    assert info.format in {"png", "jpeg", "webp", "gif"}
    assert 1 <= info.width <= native.DEFAULT_MAX_IMAGE_SIDE
    assert 1 <= info.height <= native.DEFAULT_MAX_IMAGE_SIDE
