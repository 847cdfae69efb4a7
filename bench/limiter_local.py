"""In-process limiter decisions per second from Python: native GCRA vs the `limits` package's
in-memory moving window (the anchor), same keys, same run.

Run: python bench/limiter_local.py
Target: >= 5x.
"""

from __future__ import annotations

import sys
from pathlib import Path

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import best_rate, report

from gateway import native

KEYS = [f"user:{i}:thumbnail-heatmap" for i in range(1000)]
BATCH = 1000


def main() -> int:
    limiter = native.GcraLimiter()

    def ours() -> None:
        check = limiter.check
        for key in KEYS:
            check(key, 100, 1.0, 100)

    storage = MemoryStorage()
    moving = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(100)

    def anchor() -> None:
        hit = moving.hit
        for key in KEYS:
            hit(item, key)

    ours_rate = best_rate(ours, BATCH, seconds=2.0)
    anchor_rate = best_rate(anchor, BATCH, seconds=2.0)
    ok = report(
        "local limiter decisions", ours_rate, anchor_rate, "dec/s", "limits moving window", 5.0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
