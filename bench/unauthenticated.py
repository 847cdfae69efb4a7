"""What a caller without credentials costs a replica when it sends a 60 MiB request: the
gateway that authenticates at the edge (from the metadata, before grpc reads the message:
`gateway.rpc.edge`) vs the gateway that authenticated inside the wrapped handler, after grpc
had received and parsed the whole message.

Anchor ("before"): the gateway as of `--before` (default 361f0b4, the last commit of the old
path), extracted with `git archive` into a temporary directory and run with this checkout's
native module (the Rust side is the same). Ours ("after"): this checkout. Both are
`python -m gateway serve` in processes of their own with the same settings (embedded store,
service token, the emulator in a process of its own, the default 64 MiB receive limit), driven
by the same client in alternating rounds.

Each request is a ComputeAttentionHeatmapRequest of `--mib` MiB, serialized once and sent as
raw bytes (the client does no protobuf work per call), with no credentials; both sides must
answer UNAUTHENTICATED. Per request: the server's CPU time (user + system, /proc/<pid>/stat),
the client's wall time until the status arrives, and the server's peak RSS (VmHWM) over its RSS
before the first such request; then the ratios, before / after.

Then the change's cost on the path every RPC takes: authenticated AnalyzeVideo cache hits in a
closed loop at `--concurrency`, server CPU time per request on each side, in `--hit-rounds`
pairs of rounds (which side goes first alternates); the median of the pairs' ratios is printed,
as the load of a shared machine drifts between pairs (CPU per request moves less with it than
requests per second, but still moves).

    python bench/unauthenticated.py [--before REV] [--requests 8] [--mib 60] [--seconds 3]
        [--concurrency 16] [--hit-rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio
from viewbait.ai.v1 import common_pb2, operations_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    UNLIMITED_EDGE_ENV,
    Fleet,
    call_once,
    closed_loop,
    unlimited_policies_env,
)

ROOT = Path(__file__).resolve().parent.parent
#: The last commit that authenticated inside the wrapped handler.
DEFAULT_BEFORE = "361f0b4"
METHOD = "/viewbait.ai.v1.GatewayService/ComputeAttentionHeatmap"
#: Rounds of each measurement, alternating between the two gateways.
ROUNDS = 3


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _extract(rev: str, into: Path) -> Path:
    """The Python side of the gateway at `rev` (with this checkout's native module)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "gateway", "clients/python/src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    for native in (ROOT / "gateway").glob("_native*.so"):
        shutil.copy2(native, into / "gateway" / native.name)
    return into


@dataclass
class Side:
    """One gateway: its port, its process, and what its large refusals cost."""

    name: str
    port: int
    pid: int
    rss_before_kib: int = 0
    peak_kib: int = 0
    cpu_s: float = 0.0
    wall_s: list[float] = field(default_factory=list)
    #: Server CPU µs per cache hit, one per round.
    hit_us: list[float] = field(default_factory=list)

    async def refuse(self, payload: bytes, requests: int) -> None:
        """Sends `requests` unauthenticated `payload`s; each must answer UNAUTHENTICATED."""
        options = [("grpc.max_send_message_length", len(payload) + 1024)]
        async with aio.insecure_channel(f"127.0.0.1:{self.port}", options=options) as channel:
            call = channel.unary_unary(METHOD)
            cpu = _cpu_seconds(self.pid)
            for _ in range(requests):
                started = time.perf_counter()
                try:
                    await call(payload, timeout=120)
                except aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.UNAUTHENTICATED:
                        raise
                else:
                    raise AssertionError(f"{self.name} answered a call without credentials")
                self.wall_s.append(time.perf_counter() - started)
            self.cpu_s += _cpu_seconds(self.pid) - cpu

    @property
    def peak_growth_mib(self) -> float:
        return (self.peak_kib - self.rss_before_kib) / 1024

    async def hit(self, seconds: float, concurrency: int) -> None:
        cpu = _cpu_seconds(self.pid)
        _, latencies = await closed_loop(self.port, seconds, concurrency)
        # Its 50 warm-up calls spend CPU but are not counted: under 1 % more, on both sides.
        self.hit_us.append((_cpu_seconds(self.pid) - cpu) / len(latencies) * 1e6)


async def main(args: argparse.Namespace) -> None:
    payload = operations_pb2.ComputeAttentionHeatmapRequest(
        image=common_pb2.Image(data=os.urandom(args.mib * 1024 * 1024))
    ).SerializeToString()
    print(
        f"unauthenticated {len(payload) / 2**20:.0f} MiB ComputeAttentionHeatmap requests, "
        f"{args.requests} per side per round, {ROUNDS} rounds; before = {args.before}, after = "
        f"this checkout; cores {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        old_tree = _extract(args.before, tmp / "before-tree")
        async with Fleet(tmp) as fleet:
            url = await fleet.emulator()
            env = unlimited_policies_env()
            after = await fleet.gateway("after", url, env)
            # The anchor predates the settings of the edge caps: it would refuse them.
            old_env = {k: v for k, v in env.items() if k not in UNLIMITED_EDGE_ENV}
            path = f"{old_tree}{os.pathsep}{old_tree / 'clients' / 'python' / 'src'}"
            # PYTHONSAFEPATH: `-m gateway` must not import this checkout from the working dir.
            old_env |= {"PYTHONPATH": path, "PYTHONSAFEPATH": "1"}
            before = await fleet.gateway("before", url, old_env)
            sides = [
                Side("before", before, fleet.pids[before]),
                Side("after", after, fleet.pids[after]),
            ]
            for side in sides:
                await call_once(side.port)  # the miss that fills the cache
                assert (await call_once(side.port)).metadata.cached
                side.rss_before_kib = _status_kib(side.pid, "VmRSS")
            for _ in range(ROUNDS):
                for side in sides:
                    await side.refuse(payload, args.requests)
            for side in sides:
                side.peak_kib = _status_kib(side.pid, "VmHWM")
            for round_ in range(args.hit_rounds):
                for side in sides if round_ % 2 else sides[::-1]:
                    await side.hit(args.seconds, args.concurrency)
    old, new = sides
    count = ROUNDS * args.requests
    print(f"\n{'':<8} {'server CPU/request':>20} {'wall/request':>14} {'peak RSS growth':>17}")
    for side in sides:
        print(
            f"{side.name:<8} {side.cpu_s / count * 1000:>17.1f} ms "
            f"{sum(side.wall_s) / count * 1000:>11.1f} ms {side.peak_growth_mib:>13.0f} MiB"
        )
    print(
        f"ratio before/after: CPU {old.cpu_s / new.cpu_s:.1f}x, wall "
        f"{sum(old.wall_s) / sum(new.wall_s):.1f}x, peak RSS growth "
        f"{old.peak_growth_mib:.0f} MiB vs {new.peak_growth_mib:.0f} MiB"
    )
    ratios = sorted(n / o for o, n in zip(old.hit_us, new.hit_us, strict=True))
    print(
        f"\nauthenticated AnalyzeVideo cache hits, closed loop at concurrency {args.concurrency}, "
        f"server CPU per request (median of {args.hit_rounds} rounds): before "
        f"{statistics.median(old.hit_us):.0f} µs, after {statistics.median(new.hit_us):.0f} µs; "
        f"ratio after/before per pair of rounds: median {statistics.median(ratios):.2f}x "
        f"(from {ratios[0]:.2f}x to {ratios[-1]:.2f}x)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--mib", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--hit-rounds", type=int, default=8)
    asyncio.run(main(parser.parse_args()))
