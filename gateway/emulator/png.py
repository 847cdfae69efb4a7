"""Synthetic PNG images for the offline Gemini emulator (not Gemini).

The pictures are real, decodable PNGs (zlib + struct, no imaging library) of the sizes Gemini's
image models produce for each aspect ratio: a coloured checkerboard over a horizontal gradient,
seeded so different requests get different pixels. Only the first row of each checker band is
stored literally; the others use PNG's "Up" filter (all zero bytes), which keeps a 1344x768 image
at a few milliseconds and a few tens of kilobytes.
"""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np

#: Width x height of a 1K image per aspect ratio, as Gemini's image models return them.
ASPECT_RATIO_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
#: Multiplier on the 1K size for `imageConfig.imageSize`.
IMAGE_SIZE_SCALE: dict[str, int] = {"1K": 1, "2K": 2, "4K": 4}

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_NONE = b"\x00"
_FILTER_UP = b"\x02"


def image_size(aspect_ratio: str | None, size: str | None) -> tuple[int, int]:
    """Pixel size for an aspect ratio ("16:9") and image size ("1K"); defaults 1:1 and 1K.

    Raises KeyError for values Gemini does not support.
    """
    width, height = ASPECT_RATIO_SIZES[aspect_ratio or "1:1"]
    scale = IMAGE_SIZE_SCALE[size or "1K"]
    return width * scale, height * scale


def synthetic_png(width: int, height: int, seed: int) -> bytes:
    """An RGB PNG of the given size whose pixels are a function of `seed`."""
    if width <= 0 or height <= 0:
        raise ValueError("image dimensions must be positive")
    rng = random.Random(seed)
    left = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    right = np.array([rng.randrange(256) for _ in range(3)], dtype=np.float32)
    band = rng.choice((32, 48, 64, 96))
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[:, None]
    gradient = left * (1.0 - x) + right * x
    columns = np.arange(width) // band

    unchanged_row = _FILTER_UP + bytes(width * 3)
    chunks: list[bytes] = []
    for index, top in enumerate(range(0, height, band)):
        shade = 0.55 + 0.45 * abs(2.0 * top / height - 1.0)
        lit = ((columns + index) % 2 == 0)[:, None]
        row = np.where(lit, gradient * shade, gradient * (shade * 0.7))
        chunks.append(_FILTER_NONE + row.clip(0, 255).astype(np.uint8).tobytes())
        chunks.append(unchanged_row * (min(band, height - top) - 1))
    pixels = zlib.compress(b"".join(chunks), 1)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        (_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", pixels), _chunk(b"IEND", b""))
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
