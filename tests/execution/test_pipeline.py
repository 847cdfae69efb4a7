"""Cache-aside, single-flight and coalescing through the pipeline, on both stores.

Real pieces throughout: the pipeline and executor over `MemoryStore` and `PostgresStore` (a fresh
schema per test), a blob directory, the real google-genai adapter calling the offline emulator
over HTTP. "Upstream calls" are what the emulator counted.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import time
from typing import Any

import pytest
from pydantic import SecretStr

from gateway import errors, operations
from gateway.config import Settings, Tier
from gateway.emulator import EmulatorServer
from gateway.execution import Outcome, Pending, Pipeline
from gateway.operations.analyze_video import AnalyzeVideoRequest, VideoAnalysis
from gateway.operations.compute_attention_heatmap import ComputeAttentionHeatmapRequest
from gateway.operations.generate_thumbnail import GenerateThumbnailRequest
from gateway.operations.images import ImageInput
from gateway.store import JobStatus, NewJob, Store
from gateway.store.maintenance import purge_expired
from tests.fixtures.gateways import encode_png, eventually

from .conftest import MakePipeline, ask, principal

VIDEO = AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="I built a treehouse")
#: Upstream latency that keeps concurrent callers overlapping.
SLOW_S = 0.6


def heatmap(color: tuple[int, int, int] = (10, 200, 30)) -> ComputeAttentionHeatmapRequest:
    return ComputeAttentionHeatmapRequest(ImageInput(encode_png((320, 180), color)))


async def analyze(pipeline: Pipeline, user: str = "user-a", **kwargs: Any) -> Any:
    return await ask(pipeline, "analyze_video", VIDEO, principal(user), deadline=None, **kwargs)


def calls(emulator: EmulatorServer) -> int:
    return emulator.stats().requests


async def flush(pipeline: Pipeline) -> None:
    """Waits for the pipeline's background result writes (they follow the answer)."""
    await pipeline.executor.flush()


def stats(pipeline: Pipeline) -> Any:
    return pipeline.executor.stats


def with_ttl(operation: str, ttl_s: int) -> Settings:
    settings = Settings()
    policies = dict(settings.policies)
    policies[operation] = policies[operation].model_copy(update={"ttl_s": ttl_s})
    return settings.model_copy(update={"policies": policies})


async def test_a_repeat_is_a_hit_with_the_producing_model_and_no_usage(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    pipeline = make_pipeline(store)

    first = await analyze(pipeline)
    second = await analyze(pipeline)

    assert isinstance(first, Outcome) and not first.cached and first.spend.upstream_calls == 1
    assert isinstance(second, Outcome) and second.cached
    assert second.result == first.result and isinstance(second.result, VideoAnalysis)
    assert second.model == first.model == Settings().gemini.text_model
    assert second.spend.upstream_calls == 0 and second.spend.cost_usd == 0
    assert calls(emulator) == 1


async def test_a_hit_comes_from_the_store_on_a_replica_that_never_saw_it(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    first = make_pipeline(store)
    await analyze(first)
    await flush(first)
    other = make_pipeline(store)  # an empty hot copy: only the store can answer

    again = await analyze(other)

    assert again.cached and calls(emulator) == 1
    assert (stats(other).store_hits, stats(other).hot_hits) == (1, 0)


async def test_a_result_is_encoded_once_and_a_store_hit_decoded_once(
    store: Store, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec_type = type(operations.get("compute_attention_heatmap"))
    counts: collections.Counter[str] = collections.Counter()
    to_json, from_json = spec_type.result_to_json, spec_type.result_from_json

    def counted_to_json(self: Any, result: Any) -> str:
        counts["encoded"] += 1
        return to_json(self, result)

    def counted_from_json(self: Any, text: str, blobs: Any) -> Any:
        counts["decoded"] += 1
        return from_json(self, text, blobs)

    monkeypatch.setattr(spec_type, "result_to_json", counted_to_json)
    monkeypatch.setattr(spec_type, "result_from_json", counted_from_json)
    running, other = make_pipeline(store), make_pipeline(store)
    request = heatmap((90, 60, 30))

    first = await ask(running, "compute_attention_heatmap", request, principal(), deadline=None)
    await flush(running)
    # Sized for the hot copy and stored from one encoding.
    assert not first.cached and counts == {"encoded": 1}
    from_store = await ask(other, "compute_attention_heatmap", request, principal(), deadline=None)
    from_hot = await ask(other, "compute_attention_heatmap", request, principal(), deadline=None)
    await flush(other)

    assert from_store.cached and from_hot.cached and from_hot.result == first.result
    # The store hit is decoded once and sized from what was read; the hot hit costs nothing.
    assert counts == {"encoded": 1, "decoded": 1}


async def test_an_expired_entry_is_a_miss_and_cleanup_deletes_it(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    pipeline = make_pipeline(store, with_ttl("analyze_video", 1))
    await analyze(pipeline)
    assert (await analyze(pipeline)).cached

    await asyncio.sleep(1.1)
    assert await purge_expired(store, 100) == (1, {})
    after = await analyze(pipeline)

    assert not after.cached and calls(emulator) == 2


async def test_a_prompt_or_model_bump_never_serves_the_old_result(
    store: Store,
    make_pipeline: MakePipeline,
    emulator: EmulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pipeline = make_pipeline(store)
    await analyze(pipeline)

    monkeypatch.setattr(operations.get("analyze_video"), "prompt_version", "next-prompt")
    bumped = await analyze(pipeline)
    monkeypatch.undo()
    settings = Settings()
    other_model = settings.model_copy(
        update={"gemini": settings.gemini.model_copy(update={"text_model": "gemini-next"})}
    )
    remodelled = await analyze(make_pipeline(store, other_model))

    assert not bumped.cached and not remodelled.cached
    assert remodelled.model == "gemini-next"
    assert calls(emulator) == 3
    assert (await analyze(pipeline)).cached  # the original entry is still there for its version


async def test_user_results_stay_private_and_the_heatmap_is_shared(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    pipeline = make_pipeline(store)
    await analyze(pipeline, "user-a")
    for_b = await analyze(pipeline, "user-b")

    request = heatmap()
    run = functools.partial(ask, pipeline)
    first = await run("compute_attention_heatmap", request, principal("user-a"), deadline=None)
    shared = await run("compute_attention_heatmap", request, principal("user-b"), deadline=None)

    assert not for_b.cached  # user A's analysis is never served to user B
    assert not first.cached and shared.cached and shared.result == first.result
    assert calls(emulator) == 3


async def test_concurrent_identical_requests_cost_one_upstream_call(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    pipeline = make_pipeline(store)

    outcomes = await asyncio.gather(*(analyze(pipeline) for _ in range(20)))

    assert calls(emulator) == 1
    assert len({o.result for o in outcomes}) == 1
    paying = [o for o in outcomes if o.spend.upstream_calls]
    assert len(paying) == 1 and not paying[0].coalesced
    assert sum(o.coalesced for o in outcomes) == 19


async def test_callers_on_two_replicas_share_one_execution(
    store_kind: str, make_store: Any, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    first_store = await make_store(store_kind)
    second_store = first_store if store_kind == "memory" else await make_store(store_kind)
    replicas = [make_pipeline(first_store), make_pipeline(second_store)]

    outcomes = await asyncio.gather(*(analyze(replicas[i % 2]) for i in range(20)))

    assert calls(emulator) == 1
    assert len({o.result for o in outcomes}) == 1
    assert sum(stats(r).runs for r in replicas) == 1
    assert sum(stats(r).followed for r in replicas) == 1  # the other replica's single flight


async def test_a_long_call_answers_pending_and_asking_again_joins_the_same_job(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=1.0)
    pipeline = make_pipeline(store, long_poll_s=0.2)

    first = await analyze(pipeline)
    again = await analyze(pipeline)
    assert isinstance(first, Pending) and isinstance(again, Pending)
    assert first.job_id == again.job_id
    assert first.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    done = await store.wait_for_job_change(first.job_id, "user-a", 10**9, 10)
    assert done.status is JobStatus.SUCCEEDED
    final = await analyze(pipeline)
    assert isinstance(final, Outcome) and final.cached
    assert calls(emulator) == 1


async def test_a_short_deadline_bounds_the_wait_not_the_work(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=1.0)
    pipeline = make_pipeline(store)

    answer = await ask(
        pipeline, "analyze_video", VIDEO, principal(), deadline=time.monotonic() + 0.5
    )

    assert isinstance(answer, Pending)
    done = await store.wait_for_job_change(answer.job_id, "user-a", 10**9, 10)
    assert done.status is JobStatus.SUCCEEDED and calls(emulator) == 1


async def test_shared_work_gives_each_user_a_handle_of_their_own(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=1.0)
    pipeline = make_pipeline(store, long_poll_s=0.3)
    request = heatmap((1, 2, 3))

    answers = await asyncio.gather(
        *(
            ask(pipeline, "compute_attention_heatmap", request, principal(user), deadline=None)
            for user in ("user-a", "user-b")
        )
    )

    a, b = answers
    assert isinstance(a, Pending) and isinstance(b, Pending) and a.job_id != b.job_id
    with pytest.raises(errors.NotFound):
        await store.get_job(b.job_id, "user-a")
    handle = await store.get_job(b.job_id, "user-b")
    assert handle.user_id == "user-b" and handle.follows is not None
    done = await store.wait_for_job_change(b.job_id, "user-b", 10**9, 10)
    assert done.status is JobStatus.SUCCEEDED and calls(emulator) == 1


async def test_the_leaders_failure_reaches_every_caller_and_is_not_cached(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    emulator.inject("safety", count=1)
    pipeline = make_pipeline(store)

    outcomes = await asyncio.gather(*(analyze(pipeline) for _ in range(5)), return_exceptions=True)

    assert all(isinstance(o, errors.SafetyBlocked) for o in outcomes), outcomes
    assert calls(emulator) == 1
    emulator.set_knobs(latency_s=0)
    assert not (await analyze(pipeline)).cached and calls(emulator) == 2


async def test_a_cancelled_caller_leaves_the_work_to_the_others(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    pipeline = make_pipeline(store)
    leaving = asyncio.create_task(analyze(pipeline))
    staying = asyncio.create_task(analyze(pipeline))
    await asyncio.sleep(SLOW_S / 2)

    leaving.cancel()
    outcome = await staying

    assert isinstance(outcome, Outcome) and calls(emulator) == 1
    assert leaving.cancelled()


async def test_work_nobody_waits_for_is_cancelled_and_its_job_ends(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=5.0)
    pipeline = make_pipeline(store)
    alone = asyncio.create_task(analyze(pipeline))
    await eventually(lambda: calls(emulator) == 1, "the upstream call")

    alone.cancel()
    await asyncio.gather(alone, return_exceptions=True)
    await flush(pipeline)  # the abandoned execution is recorded in the background

    # No execution is left active for the key: joining it creates a new one.
    spec = operations.get("analyze_video")
    key = spec.cache_key(spec.validate(VIDEO), "user-a", Settings().gemini.text_model)
    probe = await store.join_or_create_active_job(
        NewJob(user_id="user-a", op="analyze_video", input_json="{}", dedupe_key=key)
    )
    assert probe.created
    await store.cancel_job(probe.job.id, "user-a")


async def test_a_lapsed_lease_is_taken_over_by_a_waiter(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    # A runner that claimed the execution and died: its lease lapses after 0.5 s.
    spec = operations.get("analyze_video")
    key = spec.cache_key(spec.validate(VIDEO), "user-a", Settings().gemini.text_model)
    dead = await store.join_or_create_active_job(
        NewJob(user_id="user-a", op="analyze_video", input_json="{}", dedupe_key=key)
    )
    assert await store.claim_job(dead.job.id, "dead-replica", 0.5) is not None
    pipeline = make_pipeline(store, lease_s=0.6)

    outcome = await analyze(pipeline)
    await flush(pipeline)

    assert isinstance(outcome, Outcome) and calls(emulator) == 1
    job = await store.get_job(dead.job.id, "user-a")
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 2
    assert stats(pipeline).takeovers == 1


async def test_a_replica_shutting_down_hands_its_running_work_to_another(
    store_kind: str, make_store: Any, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=1.0)
    first_store = await make_store(store_kind)
    second_store = first_store if store_kind == "memory" else await make_store(store_kind)
    leaving, staying = make_pipeline(first_store), make_pipeline(second_store)
    cut_short = asyncio.create_task(analyze(leaving))
    await eventually(lambda: calls(emulator) == 1, "the leaving replica's upstream call")
    follower = asyncio.create_task(analyze(staying))
    await eventually(lambda: stats(staying).misses == 1, "the follower")
    await asyncio.sleep(0.1)  # it has joined the execution and waits for it

    await leaving.executor.aclose()
    outcome = await follower

    assert isinstance(outcome, Outcome) and not outcome.cached
    assert stats(staying).takeovers == 1 and calls(emulator) == 2
    with pytest.raises(errors.Cancelled):
        await cut_short


# -- idempotency keys (GenerateThumbnail) -----------------------------------------------------


async def generate(pipeline: Pipeline, prompt: str, key: str) -> Outcome[Any]:
    return await ask(
        pipeline,
        "generate_thumbnail",
        GenerateThumbnailRequest(prompt=prompt),
        principal(),
        deadline=None,
        idempotency_key=key,
        long_poll=False,
    )


async def test_an_idempotency_key_replays_the_first_generation(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    pipeline = make_pipeline(store)

    first = await generate(pipeline, "a treehouse at dusk", "retry-1")
    await flush(pipeline)
    again = await generate(make_pipeline(store), "a treehouse at dusk", "retry-1")
    await generate(pipeline, "a treehouse at dusk", "retry-2")

    assert again.result == first.result and again.spend.upstream_calls == 0
    assert calls(emulator) == 2
    with pytest.raises(errors.AlreadyExists):
        await generate(pipeline, "a different prompt", "retry-1")


async def test_one_idempotency_key_sent_at_once_with_two_requests_answers_the_second_already_exists(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    pipeline = make_pipeline(store)
    first = asyncio.create_task(generate(pipeline, "a treehouse at dusk", "both-1"))
    await eventually(lambda: calls(emulator) == 1, "the first upstream call")

    with pytest.raises(errors.AlreadyExists):
        await generate(pipeline, "a different prompt", "both-1")
    same = await generate(pipeline, "a treehouse at dusk", "both-1")

    assert (await first).result == same.result
    assert calls(emulator) == 1


async def test_a_retry_joins_the_generation_its_lost_caller_started(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    emulator.set_knobs(latency_s=SLOW_S)
    pipeline = make_pipeline(store)
    lost = asyncio.create_task(generate(pipeline, "a treehouse at dusk", "retry-3"))
    await eventually(lambda: calls(emulator) == 1, "the upstream call")

    lost.cancel()  # the connection dropped; the generation goes on for the retry
    retry = await generate(pipeline, "a treehouse at dusk", "retry-3")

    assert len(retry.result.variations) == 1
    assert calls(emulator) == 1


# -- the store failing -------------------------------------------------------------------------


async def test_a_blackholed_database_does_not_stop_requests_and_caching_resumes(
    make_store: Any, tcp_proxy: Any, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    await make_store("postgres")  # migrates the test's schema
    proxied = await make_store(
        "postgres", database_url=SecretStr(tcp_proxy.url), reconnect_interval_s=0.2
    )
    pipeline = make_pipeline(proxied)
    tcp_proxy.blackhole()

    down = await analyze(pipeline)
    assert isinstance(down, Outcome) and not down.cached and calls(emulator) == 1
    strict = make_pipeline(proxied, run_uncached_on_store_failure=False)
    with pytest.raises(errors.Unavailable):
        await analyze(strict, "user-b")

    await tcp_proxy.restore()
    await asyncio.sleep(0.3)  # past the circuit's reconnect interval
    recovered = make_pipeline(proxied)
    up = await analyze(recovered, "user-c")
    await flush(recovered)
    cached = await analyze(make_pipeline(proxied), "user-c")
    assert not up.cached and cached.cached and calls(emulator) == 2


# --- recalling a request checked before --------------------------------------------------


async def _prepared_run(pipeline: Pipeline, encoded: bytes, who: Any, request: Any = VIDEO) -> Any:
    """As the servicer runs a request it may recall: the checks of an identical earlier one,
    else prepared with its encoding."""
    prepared = pipeline.recall("analyze_video", encoded, who)
    if prepared is None:
        prepared = pipeline.prepare("analyze_video", request, who, encoded=encoded)
    return await pipeline.run(prepared, deadline=None)


async def test_a_request_checked_once_is_recalled_and_still_admitted(
    store: Store, make_pipeline: MakePipeline, emulator: EmulatorServer
) -> None:
    pipeline = make_pipeline(store)
    who = principal()
    assert pipeline.recall("analyze_video", b"encoded", who) is None

    first = await _prepared_run(pipeline, b"encoded", who)
    recalled = pipeline.recall("analyze_video", b"encoded", who)
    assert recalled is not None and recalled.prepared.principal == who
    burst = Settings().policy("analyze_video").limits[who.tier].admission
    assert burst is not None
    answers = []
    with pytest.raises(errors.RateLimited):
        for _ in range(burst.burst + 5):
            answers.append(await _prepared_run(pipeline, b"encoded", who))

    # Admission counted every recalled request; each answered the first one's result.
    assert burst.burst - 2 <= len(answers) < burst.burst + 5
    assert all(a.cached and a.result == first.result for a in answers)
    assert calls(emulator) == 1


async def test_only_the_same_caller_recalls_and_only_what_passed_its_checks(
    store: Store, make_pipeline: MakePipeline
) -> None:
    pipeline = make_pipeline(store)
    await _prepared_run(pipeline, b"encoded", principal("user-a"))

    # Another user, or the same user with another tier, is checked from scratch.
    assert pipeline.recall("analyze_video", b"encoded", principal("user-b")) is None
    assert pipeline.recall("analyze_video", b"encoded", principal(tier=Tier.FREE)) is None
    assert pipeline.recall("suggest_thumbnail_concepts", b"encoded", principal()) is None
    with pytest.raises(errors.PermissionDenied):
        await _prepared_run(pipeline, b"encoded", principal(tier=Tier.FREE))
    # A request that fails validation is never remembered.
    bad = AnalyzeVideoRequest(video_id="not a video id", title="x")
    with pytest.raises(errors.InvalidArgument):
        await _prepared_run(pipeline, b"bad", principal(), bad)
    assert pipeline.recall("analyze_video", b"bad", principal()) is None


async def test_recalled_requests_are_bounded(
    store: Store, make_pipeline: MakePipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.execution.pipeline.RECALL_MAX_BYTES", 100)
    monkeypatch.setattr("gateway.execution.pipeline.RECALL_MAX_REQUEST_BYTES", 20)
    pipeline = make_pipeline(store)
    encodings = [f"encoding-{n:03}".encode() for n in range(8)]  # 12 bytes each
    for encoded in encodings:
        await _prepared_run(pipeline, encoded, principal())
    remembered = [e for e in encodings if pipeline.recall("analyze_video", e, principal())]
    # 100 bytes hold four encodings counted twice; the newest ones are kept.
    assert remembered and len(remembered) <= 4 and remembered[-1] == encodings[-1]
    long = b"x" * 21
    await _prepared_run(pipeline, long, principal())
    assert pipeline.recall("analyze_video", long, principal()) is None
