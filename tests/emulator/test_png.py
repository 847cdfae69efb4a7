"""The emulator's synthetic PNGs are real images of Gemini's sizes."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gateway.emulator.png import ASPECT_RATIO_SIZES, image_size, synthetic_png


@pytest.mark.parametrize("ratio", sorted(ASPECT_RATIO_SIZES))
def test_each_aspect_ratio_decodes_at_its_size(ratio: str) -> None:
    width, height = image_size(ratio, None)
    assert abs(width / height - _ratio(ratio)) < 0.05
    image = Image.open(io.BytesIO(synthetic_png(width, height, seed=1)))
    image.load()  # decodes every pixel: a corrupt stream fails here
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (width, height))


def test_pixels_depend_on_the_seed_and_only_on_it() -> None:
    first = synthetic_png(64, 40, seed=5)
    assert synthetic_png(64, 40, seed=5) == first
    assert synthetic_png(64, 40, seed=6) != first
    colours = Image.open(io.BytesIO(first)).getcolors(maxcolors=10_000)
    assert colours is not None and len(colours) > 10  # a visible pattern, not a flat fill


def test_image_size_scales_and_rejects_unknown_values() -> None:
    assert image_size("16:9", "2K") == (2688, 1536)
    assert image_size(None, None) == (1024, 1024)
    with pytest.raises(KeyError):
        image_size("7:5", None)


def _ratio(text: str) -> float:
    w, h = text.split(":")
    return int(w) / int(h)
