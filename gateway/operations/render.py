"""Attention heatmap overlays: Gaussian heat from weighted regions, written as a palette PNG.

The overlay is a transparent image at the thumbnail's own pixel size, meant to be drawn over the
thumbnail: cold areas are fully transparent, hot ones opaque-ish red. It never decodes the
thumbnail, so any input format works and the renderer touches no untrusted pixels.

Each region adds `weight * exp(-(dx^2 / 2 sx^2 + dy^2 / 2 sy^2))` around its centre, with the
standard deviations a quarter of the region's box (the box holds +-2 sigma). Heat is divided by
max(1, peak): weights keep their absolute meaning, and overlapping regions cannot overflow. The
Gaussians are separable, so any band of rows is one small product of per-axis profiles.

Memory does not grow with the thumbnail's declared size: the overlay is rendered, filtered and
compressed `BAND_PIXELS` pixels at a time (about 12 MB at the peak for a 4096x4096 overlay,
where the whole field at once took 200 MB: `bench/heatmap_memory.py`), with the same bytes as a
render of the whole field. Renders run in a pool of their own of `RENDER_WORKERS` threads
(`in_pool`), so concurrent heatmaps cannot multiply that either.

The PNG is 8-bit indexed (one byte per pixel, 256-entry palette with per-entry alpha in `tRNS`),
four times less data to compress than RGBA; rows use the "Up" filter, which turns smooth heat into
runs of zeros that zlib packs quickly (level 4: about 6 ms and 70 KB for a 1280x720 overlay, where
level 6 takes four times as long for a 20% smaller file).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_UP = 2
# Cold to hot: (position, red, green, blue, alpha).
_STOPS = np.array(
    [
        (0.00, 0, 0, 255, 0),
        (0.15, 0, 150, 255, 90),
        (0.35, 0, 220, 120, 140),
        (0.55, 255, 230, 0, 175),
        (0.75, 255, 120, 0, 190),
        (1.00, 220, 0, 0, 205),
    ],
    dtype=np.float64,
)
_SIGMAS_PER_BOX = 4.0
#: Overlays rendered at once in this process: renders run in a pool of threads of their own,
#: so a burst of heatmaps waits its turn there instead of taking every thread of the default
#: executor, and the process never holds more than this many renders' working memory.
RENDER_WORKERS = 2
_POOL = ThreadPoolExecutor(RENDER_WORKERS, thread_name_prefix="viewbait-render")

P = ParamSpec("P")
T = TypeVar("T")
#: Most pixels of an overlay rendered at once. A band's working memory is about 11 bytes a pixel
#: (its float32 heat, the heat scaled, its indices, its filtered rows).
BAND_PIXELS = 1 << 20


class HeatSource(Protocol):
    """A weighted region in normalized coordinates (0..1 of the image's width and height)."""

    @property
    def x(self) -> float: ...
    @property
    def y(self) -> float: ...
    @property
    def width(self) -> float: ...
    @property
    def height(self) -> float: ...
    @property
    def weight(self) -> float: ...


async def in_pool(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """`function(*args, **kwargs)` in the render pool (with the caller's context variables)."""
    call = functools.partial(contextvars.copy_context().run, function, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_POOL, call)


def _palette() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    positions = np.linspace(0.0, 1.0, 256)
    channels = [
        np.interp(positions, _STOPS[:, 0], _STOPS[:, column]).round().astype(np.uint8)
        for column in range(1, 5)
    ]
    rgb = np.stack(channels[:3], axis=1)
    return rgb, channels[3]


_PALETTE_RGB, _PALETTE_ALPHA = _palette()


def heat_field(sources: Sequence[HeatSource], width: int, height: int) -> npt.NDArray[np.float32]:
    """The heat of every pixel (rows x columns), scaled into 0..1 (the whole field at once:
    `render_overlay_png` renders band by band instead)."""
    field = _HeatField(sources, width, height)
    return field.rows(0, height)


class _HeatField:
    """The heat of an overlay, computed a band of rows at a time.

    Each Gaussian is separable (an outer product of two profiles), so the heat of rows a..b is
    one (rows x R) by (R x width) product over the R live regions, and a band costs only its
    own pixels. Heat is divided by max(1, peak): each Gaussian peaks at 1, so the field's peak is
    at most the sum of the weights, and only when that exceeds 1 is the peak found (one extra
    pass, band by band).
    """

    def __init__(self, sources: Sequence[HeatSource], width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError("heatmap dimensions must be positive")
        self.width, self.height = width, height
        live = [source for source in sources if source.weight > 0]
        self._live = bool(live)
        if not live:
            return
        weights = np.array([source.weight for source in live], dtype=np.float32)
        self._across = _profiles([s.x for s in live], [s.width for s in live], width)
        down = _profiles([s.y for s in live], [s.height for s in live], height)
        self._down = down * weights[:, None]
        self._peak = 1.0
        if float(weights.sum(dtype=np.float64)) > 1.0:
            step = band_rows(width)
            self._peak = max(
                float(self._raw(top, min(top + step, height)).max())
                for top in range(0, height, step)
            )

    def _raw(self, top: int, bottom: int) -> npt.NDArray[np.float32]:
        # einsum without BLAS: multi-threaded BLAS spinning on a busy host was 10-30x slower
        # than this for R of about 10.
        heat: npt.NDArray[np.float32] = np.einsum(
            "rh,rw->hw", self._down[:, top:bottom], self._across, optimize=False
        )
        return heat

    def rows(self, top: int, bottom: int) -> npt.NDArray[np.float32]:
        """The heat of rows `top` to `bottom` (exclusive), scaled into 0..1."""
        if not self._live:
            return np.zeros((bottom - top, self.width), dtype=np.float32)
        heat = self._raw(top, bottom)
        if self._peak > 1.0:
            heat /= self._peak
        return heat


def band_rows(width: int) -> int:
    """Rows of a `width`-pixel overlay rendered at once: `BAND_PIXELS` pixels, at least a row."""
    return max(1, BAND_PIXELS // width)


def _profiles(centres: list[float], extents: list[float], size: int) -> npt.NDArray[np.float32]:
    """One Gaussian profile per region along an axis of `size` pixels (regions x pixels)."""
    centre_px = np.array(centres, dtype=np.float32)[:, None] * size
    # At least half a pixel, so a vanishing box still marks its point.
    sigma_px = np.maximum(
        np.array(extents, dtype=np.float32)[:, None] * size / _SIGMAS_PER_BOX, 0.5
    )
    # Pixel centres sit at +0.5.
    offsets = (np.arange(size, dtype=np.float32)[None, :] + 0.5 - centre_px) / sigma_px
    profiles: npt.NDArray[np.float32] = np.exp(-0.5 * offsets * offsets)
    return profiles


def render_overlay_png(sources: Sequence[HeatSource], width: int, height: int) -> bytes:
    """The heatmap of `sources` as a transparent PNG of `width` x `height` pixels, rendered and
    compressed `BAND_PIXELS` at a time (the memory it takes does not grow with the image)."""
    field = _HeatField(sources, width, height)
    step = band_rows(width)
    bands = (
        np.rint(field.rows(top, min(top + step, height)) * 255.0).astype(np.uint8)
        for top in range(0, height, step)
    )
    return _encode_bands(bands, width, height, _PALETTE_RGB, _PALETTE_ALPHA)


def encode_indexed_png(
    indices: npt.NDArray[np.uint8],
    palette_rgb: npt.NDArray[np.uint8],
    palette_alpha: npt.NDArray[np.uint8],
    *,
    level: int = 4,
) -> bytes:
    """An 8-bit indexed PNG of `indices` (rows x columns) with an RGB palette and its alpha."""
    if indices.ndim != 2 or indices.dtype != np.uint8:
        raise ValueError("indices must be a 2-D uint8 array")
    height, width = indices.shape
    return _encode_bands([indices], width, height, palette_rgb, palette_alpha, level=level)


def _encode_bands(
    bands: Iterable[npt.NDArray[np.uint8]],
    width: int,
    height: int,
    palette_rgb: npt.NDArray[np.uint8],
    palette_alpha: npt.NDArray[np.uint8],
    *,
    level: int = 4,
) -> bytes:
    """An 8-bit indexed PNG of `height` rows of `width` indices, given as consecutive bands of
    rows, each filtered and compressed as it comes."""
    if palette_rgb.shape != (len(palette_alpha), 3) or not 1 <= len(palette_alpha) <= 256:
        raise ValueError("the palette needs 1 to 256 RGB entries and one alpha per entry")
    compressor = zlib.compressobj(level)
    compressed = []
    above: npt.NDArray[np.uint8] | None = None
    for band in bands:
        if int(band.max(initial=0)) >= len(palette_alpha):
            raise ValueError("an index points past the end of the palette")
        rows = np.empty((band.shape[0], width + 1), dtype=np.uint8)
        rows[:, 0] = _FILTER_UP
        # "Up": each byte minus the one above it, modulo 256 (uint8 arithmetic wraps); the
        # first row of the image has none above it.
        if above is None:
            rows[0, 1:] = band[0]
        else:
            np.subtract(band[0], above, out=rows[0, 1:])
        np.subtract(band[1:], band[:-1], out=rows[1:, 1:])
        compressed.append(compressor.compress(rows.data))
        above = band[-1]
    compressed.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return b"".join(
        (
            _SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"PLTE", palette_rgb.astype(np.uint8).tobytes()),
            _chunk(b"tRNS", palette_alpha.astype(np.uint8).tobytes()),
            _chunk(b"IDAT", b"".join(compressed)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind)) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
