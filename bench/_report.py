"""Shared helpers for the benchmarks: timing and one uniform line per comparison."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_rate(fn: Callable[[], object], units_per_call: float, *, seconds: float = 1.0) -> float:
    """Best units/second over several timed rounds of about `seconds / 5` each."""
    fn()  # warm up
    best = 0.0
    for _ in range(5):
        calls = 0
        start = time.perf_counter()
        deadline = start + seconds / 5
        while True:
            fn()
            calls += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, calls * units_per_call / (now - start))
    return best


def report(
    name: str, ours: float, anchor: float, unit: str, anchor_name: str, target: float | None = None
) -> bool:
    """Prints ours beside the anchor and the ratio; returns whether the target (if any) is met."""
    ratio = ours / anchor if anchor else float("inf")
    met = target is None or ratio >= target
    verdict = "" if target is None else (f"  target >= {target}x: {'met' if met else 'MISSED'}")
    print(
        f"{name:<44} ours {ours:>12,.1f} {unit}   {anchor_name} {anchor:>12,.1f} {unit}"
        f"   ratio {ratio:5.2f}x{verdict}"
    )
    return met
