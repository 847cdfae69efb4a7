"""Heatmap overlays: real PNGs (decoded by Pillow) at the thumbnail's size, hot at the regions."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image as PILImage

from gateway import native
from gateway.operations.render import encode_indexed_png, heat_field, render_overlay_png


@dataclass(frozen=True)
class Spot:
    x: float
    y: float
    width: float
    height: float
    weight: float


def decode(png: bytes) -> PILImage.Image:
    picture = PILImage.open(io.BytesIO(png))
    picture.load()
    return picture.convert("RGBA")


@pytest.mark.parametrize("size", [(1280, 720), (720, 1280), (1, 1), (333, 77)])
def test_overlay_decodes_at_the_requested_size(size: tuple[int, int]) -> None:
    png = render_overlay_png([Spot(0.5, 0.5, 0.3, 0.3, 0.8)], *size)
    assert decode(png).size == size
    info = native.inspect_image(png)
    assert (info.format, info.width, info.height) == ("png", *size)


def test_overlay_is_hot_at_regions_and_clear_elsewhere() -> None:
    face = Spot(0.25, 0.5, 0.2, 0.3, 0.9)
    text = Spot(0.8, 0.2, 0.3, 0.1, 0.3)
    pixels = np.asarray(decode(render_overlay_png([face, text], 1280, 720)))
    alpha = pixels[..., 3].astype(int)
    at_face, at_text = alpha[360, 320], alpha[144, 1024]
    assert at_face > at_text > 0
    assert alpha[700, 1260] == 0 and alpha[10, 10] == 0
    # The strongest region is drawn in the hottest colour: red dominates there.
    red, green, blue, _ = pixels[360, 320]
    assert red > green and red > blue


def test_no_regions_gives_a_fully_transparent_overlay() -> None:
    alpha = np.asarray(decode(render_overlay_png([], 64, 36)))[..., 3]
    assert not alpha.any()


def test_overlapping_regions_never_overflow_and_weights_keep_meaning() -> None:
    heat = heat_field([Spot(0.5, 0.5, 0.5, 0.5, 1.0)] * 3, 100, 100)
    assert heat.max() == pytest.approx(1.0)
    faint = heat_field([Spot(0.5, 0.5, 0.5, 0.5, 0.25)], 100, 100)
    assert faint.max() == pytest.approx(0.25, abs=0.01)


def test_regions_past_the_edge_and_tiny_regions_render() -> None:
    heat = heat_field([Spot(1.0, 0.0, 1.0, 1.0, 0.5), Spot(0.5, 0.5, 0.0, 0.0, 1.0)], 200, 100)
    assert heat[0, 199] > 0.3
    assert heat[50, 100] > heat[50, 110]


def test_encoder_round_trips_arbitrary_indices() -> None:
    rng = np.random.default_rng(7)
    indices = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    rgb = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, size=256, dtype=np.uint8)
    decoded = np.asarray(decode(encode_indexed_png(indices, rgb, alpha)))
    expected = np.concatenate([rgb[indices], alpha[indices][..., None]], axis=2)
    assert np.array_equal(decoded, expected)


def test_encoder_refuses_bad_input() -> None:
    rgb = np.zeros((4, 3), np.uint8)
    alpha = np.zeros(4, np.uint8)
    with pytest.raises(ValueError):
        encode_indexed_png(np.full((2, 2), 4, np.uint8), rgb, alpha)
    with pytest.raises(ValueError):
        encode_indexed_png(np.zeros((2, 2, 2), np.uint8), rgb, alpha)
    with pytest.raises(ValueError):
        heat_field([], 0, 10)
