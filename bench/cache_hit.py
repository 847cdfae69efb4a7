"""Cache-hit unary RPC: the gateway answering AnalyzeVideo from its result cache vs a bare
grpc.aio server answering the same response message from memory (the anchor: the physical limit
of this stack), driven by the same client in one run.

The gateway does everything a hit needs: authentication, validation, the admission check (with
the per-user limits lifted: one benchmark user sends far more than any limit allows), the cache
key (native SHA-256), the lookup and the response. It runs once with the embedded store and once
with PostgreSQL (a fresh schema), where the in-process hot copy answers repeated hits without a
database round trip. A third gateway (embedded store) runs with OpenTelemetry tracing on, its
OTLP endpoint a loopback port where no collector listens: every span is made and queued for
export, and the export fails (the worst case: spans cost their making and are then dropped).

Targets: closed-loop throughput at concurrency 64 >= 0.7x the anchor; open loop at 1,000
requests/s: p99 within 1 ms of the anchor's p99.

    python bench/cache_hit.py [--seconds 4] [--rate 1000] [--concurrency 64] [--database-url URL]

Each measurement runs 3 rounds of `--seconds`, alternating between the gateway and the anchor.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    DEFAULT_DATABASE_URL,
    Fleet,
    call_once,
    closed_loop,
    fresh_schema,
    open_loop,
    percentile,
    store_env,
    tracing_env,
    unlimited_policies_env,
)

#: Rounds of each measurement, alternating between the gateway and the anchor.
ROUNDS = 3


async def _measure(
    name: str, port: int, bare_port: int, seconds: float, rate: float, concurrency: int
) -> bool:
    """Prints one store's comparison with the anchor; returns whether both targets are met."""
    # Alternating rounds, so machine noise (a shared 2-core box) hits both alike: the best
    # closed-loop round of each, and the open-loop latencies of all rounds pooled.
    ours_rps = bare_rps = 0.0
    ours_open: list[float] = []
    bare_open: list[float] = []
    for _ in range(ROUNDS):
        ours_rps = max(ours_rps, (await closed_loop(port, seconds, concurrency))[0])
        bare_rps = max(bare_rps, (await closed_loop(bare_port, seconds, concurrency))[0])
    for _ in range(ROUNDS):
        ours_open += await open_loop(port, rate, seconds)
        bare_open += await open_loop(bare_port, rate, seconds)
    ratio = ours_rps / bare_rps
    ours_p99, bare_p99 = percentile(ours_open, 0.99), percentile(bare_open, 0.99)
    throughput_met = ratio >= 0.7
    latency_met = ours_p99 <= bare_p99 + 1.0
    print(f"\n{name}")
    print(
        f"  closed loop, concurrency {concurrency}: ours {ours_rps:,.0f} req/s, "
        f"bare {bare_rps:,.0f} req/s, ratio {ratio:.2f}x  target >= 0.7x: "
        f"{'met' if throughput_met else 'MISSED'}"
    )
    print(
        f"  open loop, {rate:,.0f} req/s: ours p50 {percentile(ours_open, 0.5):.2f} ms "
        f"p99 {ours_p99:.2f} ms; bare p50 {percentile(bare_open, 0.5):.2f} ms "
        f"p99 {bare_p99:.2f} ms; p99 difference {ours_p99 - bare_p99:+.2f} ms  "
        f"target <= +1 ms: {'met' if latency_met else 'MISSED'}"
    )
    return throughput_met and latency_met


async def main(seconds: float, rate: float, concurrency: int, database_url: str) -> int:
    print(
        f"AnalyzeVideo cache hits vs bare grpc.aio, {seconds:.0f} s per round, "
        f"cores {os.cpu_count()}"
    )
    met = True
    with tempfile.TemporaryDirectory() as tmp_name:
        async with Fleet(Path(tmp_name)) as fleet, fresh_schema(database_url) as schema:
            url = await fleet.emulator()
            embedded = await fleet.gateway("embedded", url, unlimited_policies_env())
            shared = await fleet.gateway(
                "postgres", url, {**unlimited_policies_env(), **store_env(database_url, schema)}
            )
            traced = await fleet.gateway(
                "tracing", url, {**unlimited_policies_env(), **tracing_env()}
            )
            for port in (embedded, shared, traced):
                await call_once(port)  # the miss that fills the cache
                hit = await call_once(port)
                assert hit.metadata.cached, "the second call should be a cache hit"
            bare = await fleet.bare_server(hit)
            for name, port in (
                ("embedded store", embedded),
                ("PostgreSQL store", shared),
                ("embedded store, tracing on, no collector reachable", traced),
            ):
                met = await _measure(name, port, bare, seconds, rate, concurrency) and met
    return 0 if met else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    args = parser.parse_args()
    raise SystemExit(
        asyncio.run(main(args.seconds, args.rate, args.concurrency, args.database_url))
    )
