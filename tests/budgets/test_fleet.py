"""Budget exactness across three real replica processes (`python -m gateway serve`, each its own
working directory and settings) sharing PostgreSQL and Redis: one user hammers them
concurrently with distinct GenerateThumbnail requests until refused, and the spend the usage
ledger records stays within the budget plus the stated bound (docs/budgets.md): the attempts in
flight at the last admission, each by what it cost above its estimate.

The estimate here leaves out the answer's text, so every attempt costs a little more than it
reserved and the bound is not zero. The replicas read the real wall clock; should the run cross
a UTC midnight, the day's budget is counted once per day it touched.
"""

from __future__ import annotations

import asyncio
import json
import signal
from datetime import UTC, datetime
from typing import Any

import asyncpg
import grpc
from grpc import aio
from viewbait.ai.v1 import gateway_service_pb2_grpc, operations_pb2

from gateway.config import BudgetSettings, CostEstimate, Settings
from gateway.emulator import EmulatorServer
from gateway.operations.generate_thumbnail import GenerateThumbnailRequest
from tests.fixtures.gateways import SERVICE_TOKEN, as_user
from tests.fixtures.stores import DATABASE_URL

from .conftest import estimate

USER = "hammer"
CLIENTS = 6
#: The budget, in requests' estimates.
K = 4
ESTIMATE = CostEstimate(output_tokens=0)


def prompt(n: int) -> str:
    """Distinct prompts of one length: one estimate fits them all."""
    return f"A treehouse at dusk, take {n:06d}"


async def generate(channel: aio.Channel, n: int) -> bool:
    """One request: True when it ran, False when a budget refused it."""
    stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
    request = operations_pb2.GenerateThumbnailRequest(prompt=prompt(n), variations=1)
    try:
        async for _ in stub.GenerateThumbnail(request, metadata=as_user(USER), timeout=60):
            pass
    except aio.AioRpcError as error:
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error
        assert "spend budget exceeded" in (error.details() or ""), error
        return False
    return True


async def test_spend_stays_within_the_budget_and_the_bound_across_three_replicas(
    # The schema first: fixtures end in reverse order, so it is dropped after the processes.
    pg_schema: str,
    spawn_gateway: Any,
    emulator: EmulatorServer,
    redis_url: str,
    key_prefix: str,
) -> None:
    settings = Settings(budgets=BudgetSettings(estimate=ESTIMATE))
    each = estimate(settings, "generate_thumbnail", GenerateThumbnailRequest(prompt(0)), 0)
    budget_nano = K * each
    env = {
        "VIEWBAIT_GEMINI__API_KEY": emulator.api_key,
        "VIEWBAIT_GEMINI__BASE_URL": emulator.base_url,
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": pg_schema,
        "VIEWBAIT_STORE__MIGRATE_ON_START": "true",
        "VIEWBAIT_LIMITER__REDIS_URL": redis_url,
        "VIEWBAIT_LIMITER__KEY_PREFIX": key_prefix,
        "VIEWBAIT_AUTH__SERVICE_TOKEN": SERVICE_TOKEN,
        "VIEWBAIT_BUDGETS__USERS": json.dumps({USER: {"day_usd": budget_nano / 1e9}}),
        "VIEWBAIT_BUDGETS__ESTIMATE": ESTIMATE.model_dump_json(),
        "VIEWBAIT_SERVER__LOG_LEVEL": "WARNING",
    }
    replicas = [spawn_gateway(**env) for _ in range(3)]
    channels = [aio.insecure_channel(r.address) for r in replicas]
    # Calls overlap: several are in flight whenever the budget runs out.
    emulator.set_knobs(latency_s=0.2)
    numbers = iter(range(10**6))
    outcomes: list[bool] = []

    async def client() -> None:
        while True:
            n = next(numbers)
            ran = await generate(channels[n % len(channels)], n)
            outcomes.append(ran)
            if not ran:
                return

    day = datetime.now(UTC).date()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    days = 1 + (datetime.now(UTC).date() != day)
    for channel in channels:
        await channel.close()
    # Stopped cleanly: the ledger holds every attempt.
    for replica in replicas:
        replica.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(replica.process.wait, 30) == 0, replica.log()

    connection = await asyncpg.connect(DATABASE_URL)
    try:
        rows = await connection.fetch(
            f'SELECT cost_usd FROM "{pg_schema}".ai_usage WHERE user_id = $1', USER
        )
    finally:
        await connection.close()
    costs = [round(float(row["cost_usd"]) * 1e9) for row in rows]
    spend = sum(costs)
    # At most one attempt per client is in flight; each overruns by what it cost above its
    # estimate.
    bound = CLIENTS * max(0, max(costs) - each)

    assert outcomes.count(False) == CLIENTS
    assert len(costs) == outcomes.count(True) == emulator.stats().requests
    assert spend <= days * (budget_nano + bound)
    if days == 1:
        # Refused only once what was left could not cover another estimate.
        assert spend > budget_nano - each
    assert bound < each, "the bound is the few tokens of text per attempt, not whole requests"
