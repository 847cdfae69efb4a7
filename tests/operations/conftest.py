"""Fixtures for the operation spec tests: real image bytes in every format the sniffer knows."""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import pytest
from PIL import Image as PILImage

MakeImage = Callable[..., bytes]


def encode_image(
    fmt: str = "PNG",
    size: tuple[int, int] = (64, 36),
    color: tuple[int, int, int] = (200, 30, 30),
    *,
    noise_seed: int | None = None,
) -> bytes:
    """A real image file of `size` pixels, encoded by Pillow in `fmt`.

    With `noise_seed`, pixels are pseudo-random (incompressible, so the file is large).
    """
    if noise_seed is None:
        picture = PILImage.new("RGB", size, color)
    else:
        rng = random.Random(noise_seed)
        picture = PILImage.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def make_image() -> MakeImage:
    """`encode_image` as a fixture: `make_image("JPEG", (1280, 720), (1, 2, 3))`."""
    return encode_image
