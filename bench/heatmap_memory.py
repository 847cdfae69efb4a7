"""Heatmap overlay rendering: peak memory and speed, band by band in the render pool against the
whole field at once (the anchor, the renderer before it was banded), in one run.

Run: python bench/heatmap_memory.py
Peak memory is what tracemalloc sees numpy and zlib allocate (every thread): one render of a
1280x720 and of a 4096x4096 overlay, then four 4096x4096 renders started together (ours in
`render.in_pool`, the anchor each in `asyncio.to_thread`, as the heatmap operation ran it).
Both produce the same PNG bytes (checked). Target: the 4096x4096 render in at least 10x less
memory, at no less than 0.9x the anchor's speed.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import best_rate, report

from gateway.operations import render


@dataclass(frozen=True)
class Region:
    x: float
    y: float
    width: float
    height: float
    weight: float


#: Ten regions, as many as the model may name.
REGIONS = [Region(0.09 * i + 0.05, 0.3 + 0.04 * i, 0.2, 0.3, 0.08 + 0.01 * i) for i in range(10)]
MB = 1e6


def whole_field(width: int, height: int) -> bytes:
    """The anchor: the overlay's whole heat field at once, then the whole image encoded."""
    heat = render.heat_field(REGIONS, width, height)
    indices = np.rint(heat * 255.0).astype(np.uint8)
    return render.encode_indexed_png(indices, render._PALETTE_RGB, render._PALETTE_ALPHA)


def banded(width: int, height: int) -> bytes:
    """Ours."""
    return render.render_overlay_png(REGIONS, width, height)


def peak_of(work: Callable[[], object]) -> float:
    """Peak bytes tracemalloc saw while `work` ran (what was allocated before it excluded)."""
    tracemalloc.start()
    try:
        work()
        return float(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def concurrently(render_one: Callable[[], object], pooled: bool) -> Callable[[], object]:
    """Four renders started together, in the render pool or each in its own thread."""

    async def four() -> None:
        if pooled:
            await asyncio.gather(*(render.in_pool(render_one) for _ in range(4)))
        else:
            await asyncio.gather(*(asyncio.to_thread(render_one) for _ in range(4)))

    return lambda: asyncio.run(four())


def report_memory(name: str, ours: float, anchor: float, target: float | None = None) -> bool:
    """Prints our peak beside the anchor's and how many times less ours is; returns whether the
    target (if any) is met."""
    ratio = anchor / ours if ours else float("inf")
    met = target is None or ratio >= target
    verdict = "" if target is None else f"  target >= {target}x less: {'met' if met else 'MISSED'}"
    print(
        f"{name:<44} ours {ours / MB:>8,.1f} MB   whole field {anchor / MB:>8,.1f} MB"
        f"   {ratio:5.1f}x less{verdict}"
    )
    return met


def main() -> int:
    ok = True
    print(f"cores: {os.cpu_count()}; band: {render.BAND_PIXELS:,} pixels; pool: ", end="")
    print(f"{render.RENDER_WORKERS} threads")
    for width, height in [(1280, 720), (4096, 4096)]:
        assert banded(width, height) == whole_field(width, height), "the renders differ"
        ours = peak_of(lambda w=width, h=height: banded(w, h))
        anchor = peak_of(lambda w=width, h=height: whole_field(w, h))
        target = 10.0 if width == 4096 else None
        ok &= report_memory(f"peak memory, one {width}x{height} render", ours, anchor, target)
        seconds = 2.0 if width == 4096 else 1.0
        ours_rate = best_rate(lambda w=width, h=height: banded(w, h), 1, seconds=seconds)
        anchor_rate = best_rate(lambda w=width, h=height: whole_field(w, h), 1, seconds=seconds)
        ok &= report(
            f"renders/s, {width}x{height}",
            ours_rate,
            anchor_rate,
            "/s",
            "whole field",
            0.9 if width == 4096 else None,
        )
    ours = peak_of(concurrently(lambda: banded(4096, 4096), pooled=True))
    anchor = peak_of(concurrently(lambda: whole_field(4096, 4096), pooled=False))
    ok &= report_memory("peak memory, four 4096x4096 at once", ours, anchor)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
