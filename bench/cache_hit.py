"""Cache-hit unary RPC: the gateway answering AnalyzeVideo from its result cache vs a bare
grpc.aio server answering the same response message from memory (the anchor: the physical limit
of this stack), driven by the same client in one run.

The gateway does everything a hit needs: authentication, validation, the admission check (with
the per-user limits lifted: one benchmark user sends far more than any limit allows), the cache
key (native SHA-256), the lookup and the response. It runs once with the embedded store and once
with PostgreSQL (a fresh schema), where the in-process hot copy answers repeated hits without a
database round trip, then with the embedded store and the observability a deployment turns on:
Prometheus metrics (every RPC, cache hit and limiter decision counted, scraped every
`--scrape-interval` seconds while measured, as Prometheus would), OpenTelemetry tracing with its
OTLP endpoint a loopback port where no collector listens (every span made and queued for export,
the export failing: spans cost their making and are then dropped), and both at once.

Targets: closed-loop throughput at concurrency 64 >= 0.7x the anchor; open loop at 1,000
requests/s: p99 within 1 ms of the anchor's p99.

    python bench/cache_hit.py [--seconds 4] [--rate 1000] [--concurrency 64] [--database-url URL]
        [--scrape-interval 1]

Each measurement runs 3 rounds of `--seconds`, alternating between the gateway and the anchor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

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

from gateway.testing.postgres import free_port

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


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Side:
    """One gateway of a like-with-like comparison: its best closed-loop round, and the CPU
    time it spent per request over all rounds."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self.rps = 0.0
        self._cpu_s = 0.0
        self._requests = 0

    async def measure(self, port: int, seconds: float, concurrency: int) -> None:
        cpu = _cpu_seconds(self._pid)
        rps, latencies = await closed_loop(port, seconds, concurrency)
        # Its 50 warm-up calls spend CPU but are not counted: under 1 % more, on both sides.
        self._cpu_s += _cpu_seconds(self._pid) - cpu
        self._requests += len(latencies)
        self.rps = max(self.rps, rps)

    @property
    def cpu_us(self) -> float:
        return self._cpu_s / self._requests * 1e6


@contextlib.asynccontextmanager
async def _scraping(port: int | None, interval_s: float) -> AsyncIterator[list[int]]:
    """GET /metrics of `port` every `interval_s` while the block runs (nothing for None); yields
    the sizes of the expositions fetched."""
    sizes: list[int] = []
    if port is None:
        yield sizes
        return

    async def scrape(session: aiohttp.ClientSession) -> None:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                sizes.append(len(await response.read()))
            await asyncio.sleep(interval_s)

    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(scrape(session))
        try:
            yield sizes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def main(
    seconds: float, rate: float, concurrency: int, database_url: str, scrape_interval_s: float
) -> int:
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
            metrics_port, both_port = free_port(), free_port()
            metered = await fleet.gateway(
                "metrics",
                url,
                {**unlimited_policies_env(), "VIEWBAIT_METRICS__PORT": str(metrics_port)},
            )
            traced = await fleet.gateway(
                "tracing", url, {**unlimited_policies_env(), **tracing_env()}
            )
            observed = await fleet.gateway(
                "metrics+tracing",
                url,
                {
                    **unlimited_policies_env(),
                    **tracing_env(),
                    "VIEWBAIT_METRICS__PORT": str(both_port),
                },
            )
            for port in (embedded, shared, metered, traced, observed):
                await call_once(port)  # the miss that fills the cache
                hit = await call_once(port)
                assert hit.metadata.cached, "the second call should be a cache hit"
            bare = await fleet.bare_server(hit)
            configurations = (
                ("embedded store", embedded, None),
                ("PostgreSQL store", shared, None),
                ("embedded store, metrics on", metered, metrics_port),
                ("embedded store, tracing on, no collector reachable", traced, None),
                (
                    "embedded store, metrics + tracing on, no collector reachable",
                    observed,
                    both_port,
                ),
            )
            for name, port, scraped in configurations:
                async with _scraping(scraped, scrape_interval_s) as sizes:
                    met = await _measure(name, port, bare, seconds, rate, concurrency) and met
                if sizes:
                    print(
                        f"  /metrics scraped {len(sizes)} times while measured (every "
                        f"{scrape_interval_s:g} s), {max(sizes):,} bytes at most"
                    )
            # Like with like: the same store, metrics + tracing off and on, in alternating
            # rounds; the server's CPU time per request moves less with the machine's load
            # than req/s.
            on, off = _Side(fleet.pids[observed]), _Side(fleet.pids[embedded])
            async with _scraping(both_port, scrape_interval_s):
                for _ in range(ROUNDS):
                    for side, port in ((on, observed), (off, embedded)):
                        await side.measure(port, seconds, concurrency)
            print(
                f"\nmetrics + tracing on vs off (embedded store), closed loop, concurrency "
                f"{concurrency}: on {on.rps:,.0f} req/s, off {off.rps:,.0f} req/s, ratio "
                f"{on.rps / off.rps:.2f}x; server CPU per request: on {on.cpu_us:.0f} µs, "
                f"off {off.cpu_us:.0f} µs"
            )
    return 0 if met else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    args = parser.parse_args()
    raise SystemExit(
        asyncio.run(
            main(
                args.seconds,
                args.rate,
                args.concurrency,
                args.database_url,
                args.scrape_interval,
            )
        )
    )
