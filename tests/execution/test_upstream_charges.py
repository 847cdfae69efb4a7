"""Every upstream attempt, retries included, is charged to the upstream and model limits.

The real adapter calls the emulator, which answers 429 (RESOURCE_EXHAUSTED with a tiny
RetryInfo) as often as a test injects it: N attempts must charge N. A retry the limits refuse is
not made; the call ends with the upstream failure it would have retried, asking the caller to
wait at least as long as the limit does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.auth import Principal
from gateway.config import LimiterSettings, RateLimit, Settings, Tier
from gateway.emulator import EmulatorServer
from gateway.errors import RateLimited, UpstreamUnavailable
from gateway.execution import Executor, Pipeline
from gateway.gemini import GeminiClient
from gateway.limiter import RateLimiter
from gateway.operations.analyze_video import AnalyzeVideoRequest
from gateway.operations.generate_thumbnail import GenerateThumbnailRequest
from gateway.store.blobs import LocalBlobStore
from gateway.store.memory import MemoryStore
from tests.fixtures.usage import UsageCollector

from .conftest import ask

VIDEO = AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="I built a treehouse")
ALICE = Principal(user_id="alice", tier=Tier.PRO, via="service")
#: A fixed, large clock: hour-long limits then read the same whenever the machine booted.
CLOCK_NS = 1_700_000_000 * 1_000_000_000


def _limited(
    client: GeminiClient, burst: int, blob_dir: Path, *, image: bool = False
) -> tuple[Pipeline, RateLimiter, str]:
    """A pipeline whose text (or `image`) model may be called `burst` times an hour, its
    limiter and model.

    Its executor runs over the embedded store with AnalyzeVideo uncached, so every request
    goes upstream."""
    settings = Settings()
    model = settings.gemini.image_model if image else settings.gemini.text_model
    policies = dict(settings.policies)
    policies["analyze_video"] = policies["analyze_video"].model_copy(update={"ttl_s": 0})
    settings = settings.model_copy(
        update={
            "limiter": LimiterSettings(
                models={model: RateLimit(rate=burst, period_s=3600, burst=burst)},
                model_default=None,
            ),
            "policies": policies,
        }
    )
    limiter = RateLimiter(settings, clock=lambda: CLOCK_NS)
    executor = Executor(settings.execution, MemoryStore(), LocalBlobStore(blob_dir))
    return Pipeline(settings, client, limiter, executor), limiter, model


async def _calls_left(limiter: RateLimiter, model: str, operation: str = "analyze_video") -> int:
    """Upstream calls the model's fleet-wide limit still allows (spending them)."""
    left = 0
    while True:
        try:
            await limiter.check_upstream(operation, f"probe-{left}", Tier.PRO, model)
        except RateLimited:
            return left
        left += 1


async def test_every_attempt_is_charged_to_the_model_limit(
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    usage_sink: UsageCollector,
    tmp_path: Path,
) -> None:
    pipeline, limiter, model = _limited(gemini_client, burst=10, blob_dir=tmp_path)
    emulator.inject("rate_limited", count=2, retry_delay_s=0.01)

    outcome = await ask(pipeline, "analyze_video", VIDEO, ALICE, deadline=None)

    assert outcome.spend.upstream_calls == 3
    assert emulator.stats().count(model) == 3
    assert len(usage_sink.records) == 3
    # Three attempts, three charges: 7 of the 10 are left.
    assert await _calls_left(limiter, model) == 7


async def test_a_retry_the_limit_refuses_is_not_made(
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    usage_sink: UsageCollector,
    tmp_path: Path,
) -> None:
    pipeline, limiter, model = _limited(gemini_client, burst=2, blob_dir=tmp_path)
    emulator.inject("rate_limited", count=5, retry_delay_s=0.01)

    with pytest.raises(UpstreamUnavailable) as failed:
        await ask(pipeline, "analyze_video", VIDEO, ALICE, deadline=None)

    # Two attempts were charged and made; the third was refused before Gemini was asked.
    assert emulator.stats().count(model) == 2
    assert [r.attempt for r in usage_sink.records] == [1, 2]
    error = failed.value
    assert error.metadata["retry_refused_by"] == RateLimited.reason
    assert "not retried now: rate limit exceeded" in error.message
    # The limit refills one call per 1,800 s: the caller is told to wait that long, not 10 ms.
    assert error.retry_after_s is not None and error.retry_after_s > 1000
    assert await _calls_left(limiter, model) == 0


async def test_a_first_attempt_the_limit_refuses_costs_nothing(
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    usage_sink: UsageCollector,
    tmp_path: Path,
) -> None:
    pipeline, _, _ = _limited(gemini_client, burst=1, blob_dir=tmp_path)
    await ask(pipeline, "analyze_video", VIDEO, ALICE, deadline=None)
    with pytest.raises(RateLimited):
        await ask(pipeline, "analyze_video", VIDEO, ALICE, deadline=None)
    assert emulator.stats().requests == 1
    assert len(usage_sink.records) == 1


async def test_the_calls_of_one_run_are_admitted_together_or_not_at_all(
    emulator: EmulatorServer,
    gemini_client: GeminiClient,
    usage_sink: UsageCollector,
    tmp_path: Path,
) -> None:
    # Two variations are two image-model calls; three calls an hour are allowed.
    pipeline, limiter, model = _limited(gemini_client, burst=3, blob_dir=tmp_path, image=True)
    two = GenerateThumbnailRequest(prompt="A treehouse at dusk", variations=2)
    outcome = await ask(pipeline, "generate_thumbnail", two, ALICE, deadline=None)
    assert outcome.spend.upstream_calls == 2

    # One call is left, two are needed: refused before either is made or charged (charged one
    # by one, the first would be paid for and the second refused, on every retry).
    with pytest.raises(RateLimited) as refused:
        await ask(pipeline, "generate_thumbnail", two, ALICE, deadline=None)
    assert emulator.stats().count(model) == 2
    assert len(usage_sink.records) == 2
    # Told to come back when both calls fit (one more refill at 1,200 s apiece), not sooner.
    assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 1000
    assert await _calls_left(limiter, model, "generate_thumbnail") == 1
