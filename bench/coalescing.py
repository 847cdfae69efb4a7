"""Coalescing: identical work costs one upstream call, across requests, users and replicas.

The upstream calls are counted by the offline Gemini emulator (its own process), so whatever the
gateways believe, the number printed is what Gemini would have billed.

(a) Thundering herd: `--herd` (1,000) concurrent identical AnalyzeVideo requests, spread round
    robin over `--replicas` (3) gateway processes sharing one PostgreSQL (a fresh schema), the
    emulator holding every answer `--latency` (2) seconds. Target: exactly 1 upstream call (an
    uncoalesced gateway pays one per request), and the slowest caller answered within the
    latency + 250 ms. The same herd then hits one gateway with the embedded store.
(b) Zipf mixed workload: `--zipf-requests` (2,000) AnalyzeVideo requests over `--zipf-keys`
    (200) video ids drawn from a Zipf distribution (P(rank k) ~ 1/k^s, `--zipf-s` 1.1, seed
    `--seed` 7), replayed with `--concurrency` (64) in flight, round robin over the PostgreSQL
    replicas, emulator latency `--zipf-latency` (0.2) seconds. Target: upstream calls equal to
    the number of distinct video ids drawn (the distinct cache keys).

Per-user rate limits are lifted (the benchmark is one user far past any limit).

    python bench/coalescing.py [--herd 1000] [--replicas 3] [--latency 2] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from grpc import aio
from viewbait.ai.v1 import gateway_service_pb2_grpc, operations_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    CHANNEL_OPTIONS,
    DEFAULT_DATABASE_URL,
    METADATA,
    Fleet,
    emulator_calls,
    fresh_schema,
    set_emulator_latency,
    store_env,
    unlimited_policies_env,
)

#: How late the slowest herd caller may be answered, beyond the upstream latency.
HERD_SLACK_S = 0.25
CALL_TIMEOUT_S = 60


def video(name: str) -> operations_pb2.AnalyzeVideoRequest:
    """An AnalyzeVideo request for an 11-character video id made from `name`."""
    return operations_pb2.AnalyzeVideoRequest(video_id=name[:11].ljust(11, "x"), title="Bench")


@dataclass
class Answers:
    """What a batch of calls got back."""

    latencies_s: list[float]
    cached: int
    coalesced: int
    results: set[bytes]


async def _stubs(ports: list[int]) -> tuple[list[aio.Channel], list[object]]:
    channels = [aio.insecure_channel(f"127.0.0.1:{p}", options=CHANNEL_OPTIONS) for p in ports]
    return channels, [gateway_service_pb2_grpc.GatewayServiceStub(c) for c in channels]


async def _call(stub: object, request: operations_pb2.AnalyzeVideoRequest) -> tuple[float, object]:
    started = time.perf_counter()
    response = await stub.AnalyzeVideo(  # type: ignore[attr-defined]
        request, metadata=METADATA, timeout=CALL_TIMEOUT_S
    )
    if response.WhichOneof("outcome") != "result":
        raise RuntimeError(f"expected a result, got {response.WhichOneof('outcome')}")
    return time.perf_counter() - started, response


def _collect(done: list[tuple[float, object]]) -> Answers:
    return Answers(
        latencies_s=[latency for latency, _ in done],
        cached=sum(r.metadata.cached for _, r in done),  # type: ignore[attr-defined]
        coalesced=sum(r.metadata.coalesced for _, r in done),  # type: ignore[attr-defined]
        results={r.result.SerializeToString() for _, r in done},  # type: ignore[attr-defined]
    )


async def herd(ports: list[int], emulator_url: str, size: int, name: str) -> tuple[int, Answers]:
    """`size` concurrent identical requests over `ports`; returns (upstream calls, answers)."""
    request = video(name)
    channels, stubs = await _stubs(ports)
    try:
        for stub in stubs:  # connections up before the herd, on a key of their own
            await _call(stub, video(f"w{name}"))
        before = emulator_calls(emulator_url)
        done = await asyncio.gather(*(_call(stubs[i % len(stubs)], request) for i in range(size)))
        return emulator_calls(emulator_url) - before, _collect(done)
    finally:
        for channel in channels:
            await channel.close()


async def zipf(
    ports: list[int],
    emulator_url: str,
    *,
    requests: int,
    keys: int,
    s: float,
    seed: int,
    concurrency: int,
) -> tuple[int, int, Answers, float]:
    """Replays a Zipf stream; returns (upstream calls, distinct keys, answers, seconds)."""
    rng = random.Random(seed)
    weights = [1 / rank**s for rank in range(1, keys + 1)]
    ranks = rng.choices(range(1, keys + 1), weights=weights, k=requests)
    stream = [video(f"z{seed % 10}{rank:09d}") for rank in ranks]
    channels, stubs = await _stubs(ports)
    done: list[tuple[float, object]] = []
    try:
        before = emulator_calls(emulator_url)
        queue = iter(enumerate(stream))

        async def worker() -> None:
            for i, request in queue:
                done.append(await _call(stubs[i % len(stubs)], request))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        return emulator_calls(emulator_url) - before, len(set(ranks)), _collect(done), elapsed
    finally:
        for channel in channels:
            await channel.close()


def _report_herd(name: str, calls: int, answers: Answers, size: int, latency_s: float) -> bool:
    slowest = max(answers.latencies_s)
    met_calls = calls == 1 and len(answers.results) == 1
    met_latency = slowest <= latency_s + HERD_SLACK_S
    print(f"\n(a) thundering herd, {name}: {size:,} concurrent identical requests")
    print(
        f"  upstream calls {calls} (uncoalesced gateway: {size:,}), distinct answers "
        f"{len(answers.results)}, coalesced {answers.coalesced:,}, cached {answers.cached:,}"
        f"  target exactly 1: {'met' if met_calls else 'MISSED'}"
    )
    print(
        f"  slowest caller {slowest:.3f} s, median {sorted(answers.latencies_s)[size // 2]:.3f} s"
        f"  target <= {latency_s + HERD_SLACK_S:.2f} s: {'met' if met_latency else 'MISSED'}"
    )
    return met_calls and met_latency


async def main(args: argparse.Namespace) -> int:
    print(
        f"cores {os.cpu_count()}, emulator latency {args.latency} s, "
        f"{args.replicas} replicas on PostgreSQL"
    )
    met = True
    limits = unlimited_policies_env()
    with tempfile.TemporaryDirectory() as tmp_name:
        async with Fleet(Path(tmp_name)) as fleet, fresh_schema(args.database_url) as schema:
            url = await fleet.emulator(args.latency)
            shared = store_env(args.database_url, schema)
            replicas = []
            for i in range(args.replicas):
                replicas.append(await fleet.gateway(f"replica-{i}", url, {**limits, **shared}))
            embedded = await fleet.gateway("embedded", url, limits)

            for name, ports, key in (
                ("PostgreSQL replicas", replicas, "herdpg"),
                ("embedded store, 1 replica", [embedded], "herdem"),
            ):
                calls, answers = await herd(ports, url, args.herd, key)
                met = _report_herd(name, calls, answers, args.herd, args.latency) and met

            set_emulator_latency(url, args.zipf_latency)
            calls, distinct, answers, elapsed = await zipf(
                replicas,
                url,
                requests=args.zipf_requests,
                keys=args.zipf_keys,
                s=args.zipf_s,
                seed=args.seed,
                concurrency=args.concurrency,
            )
    ok = calls == distinct
    print(
        f"\n(b) Zipf workload: {args.zipf_requests:,} requests over {args.zipf_keys} video ids, "
        f"s={args.zipf_s}, seed {args.seed}, concurrency {args.concurrency}, "
        f"emulator latency {args.zipf_latency} s, {args.replicas} PostgreSQL replicas"
    )
    print(
        f"  distinct keys {distinct}, upstream calls {calls}  target equal: "
        f"{'met' if ok else 'MISSED'}"
    )
    print(
        f"  answered {len(answers.latencies_s):,} in {elapsed:.2f} s "
        f"({len(answers.latencies_s) / elapsed:,.0f} req/s): cached {answers.cached:,}, "
        f"coalesced {answers.coalesced:,}"
    )
    return 0 if met and ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--herd", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--zipf-requests", type=int, default=2000)
    parser.add_argument("--zipf-keys", type=int, default=200)
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--zipf-latency", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    raise SystemExit(asyncio.run(main(parser.parse_args())))
