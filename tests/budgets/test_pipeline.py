"""Budgets on the request path: the real adapter calls the emulator, every attempt reserves its
estimate first and settles at what its `usageMetadata` cost, and the request's `Spend` counts
every attempt the budget and the usage ledger count."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.auth import Principal
from gateway.budgets.enforcement import Budgets
from gateway.config import BudgetSettings, LimiterSettings, PeriodBudgets, Settings, Tier
from gateway.emulator import EmulatorServer
from gateway.errors import BudgetExceeded, UpstreamUnavailable
from gateway.execution import Executor, Pipeline
from gateway.gemini import GeminiClient
from gateway.limiter import RateLimiter
from gateway.operations.analyze_video import AnalyzeVideoRequest
from gateway.operations.compute_attention_heatmap import ComputeAttentionHeatmapRequest
from gateway.operations.generate_thumbnail import GenerateThumbnailRequest
from gateway.operations.images import ImageInput
from gateway.store.blobs import LocalBlobStore
from gateway.store.memory import MemoryStore
from tests.fixtures.gateways import encode_png, eventually
from tests.fixtures.usage import UsageCollector

from .conftest import WallClock, at, estimate

ALICE = Principal(user_id="alice", tier=Tier.PRO, via="service")


def video(n: int) -> AnalyzeVideoRequest:
    """A distinct AnalyzeVideo request (distinct video ids of one length)."""
    return AnalyzeVideoRequest(video_id=f"video{n:06d}", title="I built a treehouse")


class Harness:
    """A pipeline over the embedded store and limiter, with budgets on a fixed wall clock."""

    def __init__(self, client: GeminiClient, blob_dir: Path, budgets: BudgetSettings) -> None:
        self.settings = Settings(
            budgets=budgets, limiter=LimiterSettings(models={}, model_default=None)
        )
        self.budgets = Budgets(self.settings, clock=WallClock(at(2026, 7, 14, 9)))
        self.executor = Executor(self.settings.execution, MemoryStore(), LocalBlobStore(blob_dir))
        self.pipeline = Pipeline(
            self.settings, client, RateLimiter(self.settings), self.executor, self.budgets
        )

    async def ask(self, operation: str, request: Any, who: Principal = ALICE) -> Any:
        prepared = self.pipeline.prepare(operation, request, who)
        return await self.pipeline.run(prepared, deadline=None, long_poll=False)

    async def spent_usd(self) -> float:
        (day,) = await self.budgets.user_budgets("alice", "pro")
        return day.spent_usd


@pytest.fixture
async def harness(gemini_client: GeminiClient, tmp_path: Path) -> Any:
    made: list[Harness] = []

    def make(**budgets: Any) -> Harness:
        made.append(Harness(gemini_client, tmp_path / "blobs", BudgetSettings(**budgets)))
        return made[-1]

    yield make
    for h in made:
        await h.executor.aclose()


def day_budget(usd: float) -> dict[str, Any]:
    return {"tiers": {Tier.PRO: PeriodBudgets(day_usd=usd)}}


async def test_every_attempt_counts_and_the_budget_settles_at_what_they_cost(
    harness: Any, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    h = harness(**day_budget(10.0))
    # A 429, then an answer that does not fit the schema (paid for, asked again), then a good one.
    emulator.inject("rate_limited", count=1, retry_delay_s=0.01)
    emulator.inject("invalid_answer", count=1)

    outcome = await h.ask("analyze_video", video(1))

    assert usage_sink.outcomes() == ["UPSTREAM_UNAVAILABLE", "ok", "ok"]
    assert outcome.spend.upstream_calls == 3
    assert outcome.spend.cost_usd == pytest.approx(usage_sink.total_cost_usd(), abs=1e-12)
    assert outcome.spend.usage.prompt_tokens == sum(
        r.usage.prompt_tokens for r in usage_sink.records
    )
    # Both paid answers are in the budget, nothing else is held.
    assert await h.spent_usd() == pytest.approx(usage_sink.total_cost_usd(), abs=1e-9)


async def test_an_attempt_that_fails_without_charge_is_refunded(
    harness: Any, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    h = harness(**day_budget(10.0))
    emulator.inject("unavailable", count=4)
    with pytest.raises(UpstreamUnavailable):
        await h.ask("analyze_video", video(1))
    assert len(usage_sink.records) == 4
    assert await h.spent_usd() == 0


async def test_a_request_the_budget_cannot_cover_makes_no_upstream_call(
    harness: Any, emulator: EmulatorServer
) -> None:
    one = estimate(Settings(), "analyze_video", video(1))
    # Room for exactly one estimate: the first request fits, then what it left does not.
    h = harness(**day_budget(one / 1e9))
    first = await h.ask("analyze_video", video(1))
    assert await h.spent_usd() == pytest.approx(first.spend.cost_usd, abs=1e-9)

    with pytest.raises(BudgetExceeded) as refused:
        await h.ask("analyze_video", video(2))

    assert emulator.stats().requests == 1
    assert refused.value.metadata["budget"] == "user_day"
    # From 09:00 UTC on the wall clock to midnight.
    assert refused.value.retry_after_s == 15 * 3600
    assert await h.spent_usd() == pytest.approx(first.spend.cost_usd, abs=1e-9)


async def test_the_first_calls_of_one_run_are_reserved_together(
    harness: Any, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    three = GenerateThumbnailRequest(prompt="A treehouse at dusk", variations=3)
    two = GenerateThumbnailRequest(prompt="A treehouse at dusk", variations=2)
    each = estimate(Settings(), "generate_thumbnail", three, 0)
    h = harness(**day_budget(2.5 * each / 1e9))

    # Three calls do not fit: refused before any is made, nothing held.
    with pytest.raises(BudgetExceeded) as refused:
        await h.ask("generate_thumbnail", three)
    assert refused.value.metadata["estimate_usd"] == f"{3 * each / 1e9:.9f}".rstrip("0")
    assert emulator.stats().requests == 0
    assert await h.spent_usd() == 0

    outcome = await h.ask("generate_thumbnail", two)
    assert outcome.spend.upstream_calls == 2
    assert await h.spent_usd() == pytest.approx(usage_sink.total_cost_usd(), abs=1e-9)


async def test_a_cancelled_attempt_gives_its_reservation_back(
    harness: Any, emulator: EmulatorServer, usage_sink: UsageCollector
) -> None:
    h = harness(**day_budget(10.0))
    emulator.set_knobs(latency_s=30.0)
    task = asyncio.create_task(h.ask("analyze_video", video(1)))
    await eventually(lambda: emulator.stats().requests == 1, "the attempt to reach the emulator")
    assert await h.spent_usd() > 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert usage_sink.outcomes() == ["CANCELLED"]
    # Settled in a shielded task of its own: the cancelled call does not wait for it.
    for _ in range(500):
        if await h.spent_usd() == 0:
            break
        await asyncio.sleep(0.01)
    assert await h.spent_usd() == 0


async def test_a_caller_joining_work_another_users_budget_refused_runs_on_its_own(
    harness: Any, emulator: EmulatorServer
) -> None:
    h = harness(users={"broke": PeriodBudgets(day_usd=0.0)})
    broke = Principal(user_id="broke", tier=Tier.PRO, via="service")
    heatmap = ComputeAttentionHeatmapRequest(image=ImageInput(encode_png(), "image/png"))

    # One global-scope request from both: the first caller starts the shared work, the second
    # joins it; the starter's budget refuses it.
    refused, answered = await asyncio.gather(
        h.ask("compute_attention_heatmap", heatmap, broke),
        h.ask("compute_attention_heatmap", heatmap),
        return_exceptions=True,
    )

    assert isinstance(refused, BudgetExceeded) and refused.user_id == "broke"
    # Not the starter's refusal: a run of its own, on its own budgets.
    assert not isinstance(answered, BaseException) and not answered.coalesced
    assert answered.spend.upstream_calls == 1 and emulator.stats().requests == 1
