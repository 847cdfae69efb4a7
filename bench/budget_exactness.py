"""Budget exactness: one user hammering a 3-replica fleet whose budget covers K requests.

    python bench/budget_exactness.py [--budget-requests 20] [--concurrency 16] [--latency 0.2]

What runs: the offline Gemini emulator (its own process, `--latency` seconds per call, its usage
and prices deterministic per request), a fresh schema on the shared PostgreSQL (results, jobs and
the usage ledger), the shared test Redis under a fresh key prefix, and three `viewbait-gateway
serve` replicas, each with its own working directory and settings. First one request's cost c is
measured (three probe requests through a replica without budgets, averaged); then the user
`hammer` gets a daily budget of K x c and `--concurrency` clients, round robin over the
replicas, send distinct GenerateThumbnail requests (one image each, never cached) until each is
refused with BUDGET_EXCEEDED.

Printed per configuration: requests allowed and refused, the total spend (from the usage ledger,
after the replicas stopped), the budget, the overrun, and the bound stated in docs/budgets.md:
the overrun is at most the sum over the attempts in flight at the budget's last admission of
(actual cost - estimate), so at most C x max(actual - estimate, 0) with C the attempts in flight
(one per client here); also C x the largest attempt cost, the looser form.

Configurations:
- reserve, default estimate: the estimate covers each attempt (no overrun possible);
- reserve, no text output estimated (`estimate.output_tokens` 0): each attempt costs a little
  more than its estimate, which the bound covers;
- reserve, image output estimated at half (`estimate.image_output_tokens` 645 as well): each
  attempt costs about twice its estimate, so up to twice as many fit at once, and the bound is
  what they overrun by;
- anchor, charge after the fact: estimates cut to almost nothing (no output, no images, text at
  16 characters a token), so a request is admitted while anything is left and paid for
  afterwards, as gateways that check spend after the call do; it overruns by up to the attempts
  in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from viewbait.ai.v1 import gateway_service_pb2_grpc, operations_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    CHANNEL_OPTIONS,
    DEFAULT_DATABASE_URL,
    SERVICE_TOKEN,
    Fleet,
    fresh_schema,
    store_env,
)

from gateway import operations
from gateway.budgets.estimate import NANO_PER_USD, Estimator
from gateway.config import CostEstimate, Settings
from gateway.operations.generate_thumbnail import GenerateThumbnailRequest
from gateway.usage import PriceBook

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REPLICAS = ("a", "b", "c")
USER = "hammer"
#: name -> the estimate settings of the configuration.
CONFIGS: dict[str, CostEstimate] = {
    "reserve, default estimate": CostEstimate(),
    "reserve, no text output estimated": CostEstimate(output_tokens=0),
    "reserve, image output estimated at half": CostEstimate(
        output_tokens=0, image_output_tokens=645
    ),
    "anchor: charge after the fact": CostEstimate(
        chars_per_token=16,
        image_input_tokens=0,
        file_input_tokens=0,
        output_tokens=0,
        image_output_tokens=0,
    ),
}


def prompt(n: int) -> str:
    """Distinct prompts of one length (so one estimate fits them all)."""
    return f"A treehouse at dusk, take {n:06d}"


def metadata(user: str) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {SERVICE_TOKEN}"),
        ("x-viewbait-user-id", user),
        ("x-viewbait-tier", "pro"),
    )


def estimate_nano(estimate: CostEstimate) -> int:
    """The estimate of one request of this run (all prompts have one length), in nano-USD."""
    settings = Settings()
    spec: Any = operations.get("generate_thumbnail")
    request = spec.validate(
        GenerateThumbnailRequest(prompt=prompt(0), variations=1), settings.bounds
    )
    model_request = spec.model_request(request, settings.gemini.image_model, 0)
    return Estimator(estimate, PriceBook(settings.gemini.prices)).nano_usd(model_request)


def reason_of(error: aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


async def generate(channel: aio.Channel, n: int, user: str) -> float | None:
    """One request; its cost, or None when a budget refused it."""
    stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    request = operations_pb2.GenerateThumbnailRequest(prompt=prompt(n), variations=1)
    try:
        last: Any = None
        async for message in stub.GenerateThumbnail(request, metadata=metadata(user), timeout=120):
            last = message
    except aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and reason_of(error) == (
            "BUDGET_EXCEEDED"
        ):
            return None
        raise
    return float(last.summary.metadata.usage.cost_usd)


@dataclass
class Result:
    allowed: int
    refused: int
    budget_usd: float
    spend_usd: float
    attempts: int
    max_attempt_usd: float
    max_excess_usd: float
    concurrency: int
    periods: int

    @property
    def overrun_usd(self) -> float:
        return self.spend_usd - self.budget_usd

    @property
    def bound_usd(self) -> float:
        """C x max(actual - estimate, 0): the stated bound."""
        return self.concurrency * self.max_excess_usd


async def ledger(database_url: str, schema: str, user: str) -> tuple[int, float, float]:
    """(attempts, total cost, largest attempt cost) of `user` in the usage ledger."""
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow(
            f"SELECT count(*) AS n, coalesce(sum(cost_usd), 0) AS total, "
            f'coalesce(max(cost_usd), 0) AS most FROM "{schema}".ai_usage WHERE user_id = $1',
            user,
        )
    finally:
        await connection.close()
    assert row is not None
    return int(row["n"]), float(row["total"]), float(row["most"])


async def probe_cost(workdir: Path, emulator_url: str) -> float:
    """The mean cost of one request, through a replica of its own without budgets."""
    async with Fleet(workdir / "probe") as fleet:
        port = await fleet.gateway("probe", emulator_url)
        async with aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as channel:
            costs = [await generate(channel, 900_000 + i, "probe") for i in range(3)]
    assert all(c is not None for c in costs)
    return sum(c for c in costs if c is not None) / len(costs)


async def run_config(
    workdir: Path,
    emulator_url: str,
    estimate: CostEstimate,
    budget_usd: float,
    concurrency: int,
) -> Result:
    async with fresh_schema(DEFAULT_DATABASE_URL) as schema:
        env = {
            **store_env(DEFAULT_DATABASE_URL, schema),
            "VIEWBAIT_LIMITER__REDIS_URL": REDIS_URL,
            "VIEWBAIT_LIMITER__KEY_PREFIX": f"bench-budget-{uuid.uuid4().hex[:8]}",
            "VIEWBAIT_BUDGETS__USERS": json.dumps({USER: {"day_usd": budget_usd}}),
            "VIEWBAIT_BUDGETS__ESTIMATE": estimate.model_dump_json(),
        }
        async with Fleet(workdir) as fleet:
            ports = [await fleet.gateway(name, emulator_url, env) for name in REPLICAS]
            channels = [
                aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) for port in ports
            ]
            counter = iter(range(10**9))
            allowed = refused = 0
            day_before = datetime.now(UTC).date()

            async def client(index: int) -> None:
                nonlocal allowed, refused
                while True:
                    n = next(counter)
                    cost = await generate(channels[n % len(channels)], n, USER)
                    if cost is None:
                        refused += 1
                        return
                    allowed += 1

            await asyncio.gather(*(client(i) for i in range(concurrency)))
            periods = 1 + (datetime.now(UTC).date() != day_before)
            for channel in channels:
                await channel.close()
        # The replicas have stopped: whatever their ledger had in flight is written.
        attempts, spend, most = await ledger(DEFAULT_DATABASE_URL, schema, USER)
    excess = max(0.0, most - estimate_nano(estimate) / NANO_PER_USD)
    return Result(allowed, refused, budget_usd, spend, attempts, most, excess, concurrency, periods)


async def main(budget_requests: int, concurrency: int, latency_s: float) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="viewbait-budget-"))
    async with Fleet(workdir / "emulator") as emulators:
        emulator_url = await emulators.emulator(latency_s)
        cost = await probe_cost(workdir, emulator_url)
        budget = round(budget_requests * cost, 9)
        print(
            f"one request costs ${cost:.6f} at the emulator's usage; budget = "
            f"{budget_requests} x that = ${budget:.6f}; {concurrency} clients, "
            f"{len(REPLICAS)} replicas, emulator latency {latency_s:g} s"
        )
        print(
            f"{'configuration':<40} {'allowed':>7} {'refused':>7} {'spend $':>10} "
            f"{'overrun $':>10} {'overrun/req':>11} {'bound $':>9} {'C x max $':>9}  within"
        )
        for index, (name, estimate) in enumerate(CONFIGS.items()):
            started = time.perf_counter()
            r = await run_config(
                workdir / f"run-{index}", emulator_url, estimate, budget, concurrency
            )
            within = r.spend_usd <= r.periods * (r.budget_usd + r.bound_usd) + 1e-9
            print(
                f"{name:<40} {r.allowed:>7} {r.refused:>7} {r.spend_usd:>10.6f} "
                f"{r.overrun_usd:>10.6f} {r.overrun_usd / cost:>11.3f} {r.bound_usd:>9.6f} "
                f"{r.concurrency * r.max_attempt_usd:>9.6f}  {'yes' if within else 'NO'}"
                f"   ({r.attempts} attempts, {time.perf_counter() - started:.1f} s"
                f"{', across a UTC midnight' if r.periods > 1 else ''})"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-requests", type=int, default=20, help="K: the budget in requests")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once")
    parser.add_argument("--latency", type=float, default=0.2, help="emulator latency per call (s)")
    args = parser.parse_args()
    asyncio.run(main(args.budget_requests, args.concurrency, args.latency))
