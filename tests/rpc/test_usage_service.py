"""UsageService.GetUsage over real gRPC: in-process gateways on 127.0.0.1:0 calling the emulator,
on the embedded store (answering repeats from its hot copy) and on PostgreSQL (the hot copy off,
so repeats are answered from the result cache's rows). What the answers' metadata said they
cost is what GetUsage reports; what the cache and coalescing saved is the cost of the upstream
work behind the results they took."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from grpc import aio
from pydantic import SecretStr
from viewbait.ai.v1 import (
    common_pb2,
    gateway_service_pb2_grpc,
    operations_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from gateway.auth import mint_dev_jwt
from gateway.budgets import BudgetState
from gateway.config import AuthSettings, ExecutionSettings, Settings, Tier
from gateway.emulator import EmulatorServer
from gateway.rpc.usage_service import budget_status
from gateway.usage_report import DEFAULT_RANGE
from tests.fixtures.gateways import SERVICE_TOKEN, as_user, eventually, gateway_settings
from tests.fixtures.stores import store_settings
from tests.fixtures.usage import written

from .conftest import RichStatus

JWT_SECRET = "usage-tests-hs256-secret-of-at-least-32-bytes"
TIMEOUT_S = 30
ANALYZE = common_pb2.OPERATION_ANALYZE_VIDEO
SUGGEST = common_pb2.OPERATION_SUGGEST_THUMBNAIL_CONCEPTS


def jwt_user(user_id: str) -> tuple[tuple[str, str], ...]:
    """Metadata of an end user with a JWT: they may see only their own usage."""
    return (("authorization", f"Bearer {mint_dev_jwt(JWT_SECRET, user_id, Tier.PRO)}"),)


def vid(name: str) -> str:
    """A YouTube-shaped video id (11 characters) of its own for each name."""
    return f"{name:_<11}"[:11]


def timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


class Client:
    """GatewayService and UsageService stubs on one channel to a started gateway."""

    def __init__(self, running: Any) -> None:
        self.running = running
        self.gateway = gateway_service_pb2_grpc.GatewayServiceStub(running.channel)
        self.usage = usage_service_pb2_grpc.UsageServiceStub(running.channel)

    async def analyze(self, video_id: str, metadata: Any) -> Any:
        request = operations_pb2.AnalyzeVideoRequest(video_id=vid(video_id), title="A treehouse")
        return await self.gateway.AnalyzeVideo(request, metadata=metadata, timeout=TIMEOUT_S)

    async def suggest(self, video_id: str, metadata: Any) -> Any:
        request = operations_pb2.SuggestThumbnailConceptsRequest(
            video_id=vid(video_id), analytics_json='{"views": 1200}'
        )
        return await self.gateway.SuggestThumbnailConcepts(
            request, metadata=metadata, timeout=TIMEOUT_S
        )

    async def get_usage(self, metadata: Any, **fields: Any) -> usage_service_pb2.GetUsageResponse:
        """GetUsage, once the gateway has written the usage it has queued."""
        await written(self.running.server.usage)
        answer: usage_service_pb2.GetUsageResponse = await self.usage.GetUsage(
            usage_service_pb2.GetUsageRequest(**fields), metadata=metadata, timeout=TIMEOUT_S
        )
        return answer

    async def refused(self, metadata: Any, **fields: Any) -> RichStatus:
        with pytest.raises(aio.AioRpcError) as caught:
            await self.get_usage(metadata, **fields)
        return RichStatus.of(caught.value)


@pytest.fixture(params=["memory", "postgres"])
async def client(
    request: pytest.FixtureRequest,
    emulator: EmulatorServer,
    tmp_path: Path,
    pg_schema: str,
    start_gateway: Callable[[Settings], Any],
) -> AsyncIterator[Client]:
    """A gateway accepting the service token and user JWTs, on each store."""
    if request.param == "memory":
        settings = gateway_settings(emulator, tmp_path)
    else:
        settings = gateway_settings(
            emulator,
            tmp_path,
            store=store_settings(pg_schema, migrate_on_start=True),
            execution=ExecutionSettings(hot_cache_entries=0),
        )
    auth = AuthSettings(service_token=SecretStr(SERVICE_TOKEN), jwt_secret=SecretStr(JWT_SECRET))
    yield Client(await start_gateway(settings.model_copy(update={"auth": auth})))


def spent(*answers: Any) -> tuple[float, int, int]:
    """(cost, upstream calls, total tokens) the answers' metadata report."""
    usages = [answer.metadata.usage for answer in answers]
    return (
        sum(u.cost_usd for u in usages),
        sum(u.upstream_calls for u in usages),
        sum(u.total_tokens for u in usages),
    )


async def test_a_user_sees_what_they_spent_and_what_the_cache_and_coalescing_saved(
    client: Client, emulator: EmulatorServer
) -> None:
    alice = jwt_user("user-alice")
    first_day = datetime.now(UTC).date().isoformat()
    analysis = await client.analyze("vid-a", alice)
    await client.running.server.executor.flush()  # the cache row is written
    repeat = await client.analyze("vid-a", alice)
    # The first asks Gemini, slowly; the other two join it while it is in flight.
    emulator.set_knobs(latency_s=3.0)
    asked = emulator.stats().requests
    first = asyncio.create_task(client.suggest("vid-b", alice))
    await eventually(lambda: emulator.stats().requests > asked, "the first call upstream")
    joined = await asyncio.gather(*(client.suggest("vid-b", alice) for _ in range(2)))
    concepts = [await first, *joined]
    emulator.set_knobs(latency_s=0.0)
    await client.analyze("vid-c", as_user("user-bob"))  # someone else's

    assert repeat.metadata.cached and repeat.metadata.usage == common_pb2.Usage()
    (paid,) = [c for c in concepts if not c.metadata.coalesced]
    assert sum(c.metadata.coalesced for c in concepts) == 2
    report = await client.get_usage(alice)

    assert report.user_id == "user-alice" and not report.fleet
    cost, calls, tokens = spent(analysis, paid)
    assert report.totals.cost_usd == pytest.approx(cost, abs=1e-9) and cost > 0
    assert (report.totals.upstream_calls, report.totals.total_tokens) == (calls, tokens)
    assert (report.totals.cache_hits, report.totals.coalesced_joins) == (1, 2)
    analysis_cost, concepts_cost = spent(analysis)[0], spent(paid)[0]
    saved = analysis_cost + 2 * concepts_cost
    assert report.totals.saved_usd == pytest.approx(saved, abs=1e-9)
    # One row per day, operation and model (two days if the test ran across midnight UTC).
    days = {first_day, datetime.now(UTC).date().isoformat()}
    assert {row.date for row in report.rows} <= days
    assert {row.model for row in report.rows if row.operation == ANALYZE} == {
        analysis.metadata.model
    }
    analyzed = [row.totals for row in report.rows if row.operation == ANALYZE]
    suggested = [row.totals for row in report.rows if row.operation == SUGGEST]
    assert len(analyzed) + len(suggested) == len(report.rows) <= 2 * len(days)
    assert sum(t.cost_usd for t in analyzed) == pytest.approx(analysis_cost, abs=1e-9)
    assert sum(t.upstream_calls for t in suggested) == paid.metadata.usage.upstream_calls
    savings = {s.operation: s for s in report.savings}
    assert (savings[ANALYZE].cache_hits, savings[ANALYZE].coalesced_joins) == (1, 0)
    assert (savings[SUGGEST].cache_hits, savings[SUGGEST].coalesced_joins) == (0, 2)
    assert savings[SUGGEST].saved_usd == pytest.approx(2 * concepts_cost, abs=1e-9)
    assert list(report.budgets) == []  # no budget configured

    fleet = await client.get_usage(as_user("user-ops"), fleet=True)

    assert fleet.fleet and fleet.user_id == ""
    assert fleet.totals.upstream_calls > report.totals.upstream_calls  # Bob's call too
    assert fleet.totals.saved_usd == pytest.approx(saved, abs=1e-9)


async def test_a_user_sees_only_their_own_usage(client: Client) -> None:
    await client.analyze("vid-own", as_user("user-bob"))

    mine = await client.get_usage(jwt_user("user-alice"), user_id="user-alice")
    assert mine.user_id == "user-alice" and mine.totals.upstream_calls == 0
    for fields in ({"user_id": "user-bob"}, {"fleet": True}):
        refused = await client.refused(jwt_user("user-alice"), **fields)
        assert refused.code is grpc.StatusCode.PERMISSION_DENIED, fields
        assert refused.error_info is not None
        assert refused.error_info.reason == "PERMISSION_DENIED"
    # The service token may ask for anyone, whomever it acts for.
    bobs = await client.get_usage(as_user("user-ops"), user_id="user-bob")
    assert bobs.user_id == "user-bob" and bobs.totals.upstream_calls >= 1


async def test_bad_requests_name_the_field(client: Client) -> None:
    now = datetime.now(UTC)
    cases = [
        ({"start_time": timestamp(now), "end_time": timestamp(now)}, "start_time"),
        (
            {"end_time": timestamp(now - timedelta(days=90)), "start_time": timestamp(now)},
            "start_time",
        ),
        ({"user_id": "user-bob", "fleet": True}, "user_id"),
        ({"user_id": "not a user id"}, "user_id"),
        ({"start_time": timestamp_pb2.Timestamp(seconds=1, nanos=-5)}, "start_time"),
        ({"end_time": timestamp_pb2.Timestamp(seconds=10**12)}, "end_time"),
    ]
    for fields, field in cases:
        refused = await client.refused(as_user("user-ops"), **fields)
        assert refused.code is grpc.StatusCode.INVALID_ARGUMENT, fields
        assert [v[0] for v in refused.violations] == [field], refused.violations


async def test_an_open_range_is_the_last_30_days_and_a_past_one_is_empty(client: Client) -> None:
    await client.analyze("vid-range", as_user("user-alice"))
    before = datetime.now(UTC)

    report = await client.get_usage(as_user("user-alice"))

    end = report.end_time.ToDatetime(tzinfo=UTC)
    assert before <= end <= datetime.now(UTC)
    assert end - report.start_time.ToDatetime(tzinfo=UTC) == DEFAULT_RANGE
    assert report.totals.upstream_calls >= 1
    past = await client.get_usage(
        as_user("user-alice"), end_time=timestamp(before - timedelta(days=60))
    )
    assert list(past.rows) == [] and past.totals == usage_service_pb2.UsageTotals()


def test_a_budget_is_reported_with_what_remains_and_when_it_resets() -> None:
    resets = datetime(2031, 3, 15, tzinfo=UTC)

    overrun = budget_status(BudgetState("user_day", "user-alice", 5.0, 5.25, resets))
    capped = budget_status(BudgetState("model_day", "gemini-3.6-flash", 100.0, 40.0, resets))

    assert overrun.kind == usage_service_pb2.BUDGET_KIND_USER_DAY
    assert (overrun.subject, overrun.limit_usd, overrun.spent_usd) == ("user-alice", 5.0, 5.25)
    assert overrun.remaining_usd == 0.0  # in-flight attempts may overrun; never negative
    assert overrun.reset_time.ToDatetime(tzinfo=UTC) == resets
    assert capped.kind == usage_service_pb2.BUDGET_KIND_MODEL_DAY and capped.remaining_usd == 60.0
    unknown = budget_status(BudgetState("team_week", "t", 1.0, 0.0, resets))
    assert unknown.kind == usage_service_pb2.BUDGET_KIND_UNSPECIFIED
