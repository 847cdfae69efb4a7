"""Heatmap overlays: real PNGs (decoded by Pillow) at the thumbnail's size, hot at the regions."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import tracemalloc
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image as PILImage

from gateway import native
from gateway.operations.render import (
    BAND_PIXELS,
    RENDER_WORKERS,
    band_rows,
    encode_indexed_png,
    heat_field,
    in_pool,
    render_overlay_png,
)


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


def palette_indices(png: bytes) -> npt.NDArray[np.uint8]:
    """The palette index of every pixel of an indexed PNG."""
    with PILImage.open(io.BytesIO(png)) as picture:
        assert picture.mode == "P"
        return np.asarray(picture)


@pytest.mark.parametrize("weight", [0.4, 1.7])
def test_a_banded_overlay_is_the_whole_field_rendered(weight: float) -> None:
    # 3000 columns: 349 rows a band, so 1000 rows are 3 bands, the last one short. With weights
    # summing past 1 the peak (in the last band) scales every band.
    width, height = 3000, 1000
    assert band_rows(width) < height
    spots = [Spot(0.3, 0.1, 0.2, 0.2, weight), Spot(0.7, 0.9, 0.3, 0.1, weight)]
    expected = np.rint(heat_field(spots, width, height) * 255.0).astype(np.uint8)
    rendered = palette_indices(render_overlay_png(spots, width, height))
    assert np.array_equal(rendered, expected)
    assert rendered.max() == (255 if weight > 1 else round(weight * 255))


def test_a_4096_square_overlay_renders_in_bounded_memory() -> None:
    # The whole field at once took about 200 MB of numpy arrays for this overlay; band by band
    # it takes a few bands' worth whatever the thumbnail's size.
    spots = [Spot(0.1 * i + 0.05, 0.5, 0.2, 0.3, 0.1 * (i + 1)) for i in range(10)]
    tracemalloc.start()
    try:
        png = render_overlay_png(spots, 4096, 4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decode(png).size == (4096, 4096)
    assert peak < 16 * BAND_PIXELS + 2 * len(png), f"peak {peak / 1e6:.1f} MB"


async def test_renders_run_in_a_bounded_pool_of_their_own() -> None:
    seen: set[str] = set()
    running = 0
    most = 0
    lock = threading.Lock()

    def render() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            seen.add(threading.current_thread().name)
        time.sleep(0.02)
        with lock:
            running -= 1

    await asyncio.gather(*(in_pool(render) for _ in range(4 * RENDER_WORKERS)))
    assert most <= RENDER_WORKERS
    assert seen and all(name.startswith("viewbait-render") for name in seen)
