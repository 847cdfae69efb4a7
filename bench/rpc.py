"""Unary RPC throughput and latency: the gateway vs a bare grpc.aio server (the anchor).

The gateway serves AnalyzeVideo for real: auth, validation, the prompt, a google-genai call to
the offline emulator (zero latency, its own process) and the parse, with the result cache turned
off for the route (`bench/cache_hit.py` measures cache hits) and the per-user rate limits lifted
(one benchmark user sends far more than any limit allows). The anchor is a bare grpc.aio server
in its own process answering the same AnalyzeVideoResponse from memory: the physical limit of
this stack. One client process drives both with the same concurrency; the ratio is printed.
Target: >= 0.5x.

    python bench/rpc.py [--seconds 8] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import Fleet, call_once, closed_loop, percentile, unlimited_policies_env


async def main(seconds: float, concurrency: int) -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        async with Fleet(Path(tmp_name)) as fleet:
            url = await fleet.emulator()
            env = unlimited_policies_env(analyze_video=0)
            gateway_port = await fleet.gateway("gateway", url, env)
            bare_port = await fleet.bare_server(await call_once(gateway_port))
            ours_rps, ours_lat = await closed_loop(gateway_port, seconds, concurrency)
            bare_rps, bare_lat = await closed_loop(bare_port, seconds, concurrency)
    ratio = ours_rps / bare_rps
    print(f"AnalyzeVideo, concurrency {concurrency}, {seconds:.0f} s each, cores {os.cpu_count()}")
    print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, rps, lat in (
        ("gateway (emulator, 0 s)", ours_rps, ours_lat),
        ("bare grpc.aio", bare_rps, bare_lat),
    ):
        print(f"{name:24}{rps:10.0f}{percentile(lat, 0.5):10.2f}{percentile(lat, 0.99):10.2f}")
    print(f"throughput ratio {ratio:.2f}x  target >= 0.5x: {'met' if ratio >= 0.5 else 'MISSED'}")
    return 0 if ratio >= 0.5 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main(args.seconds, args.concurrency)))
