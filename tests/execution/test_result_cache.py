"""Real operation results through the store and the blob store, on both store kinds.

Results come from the real adapter (google-genai over HTTP) against the offline emulator.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage

from gateway.config import GeminiSettings, Scope
from gateway.execution import EncodedResult, ResultCache, load_result, save_result
from gateway.gemini import GeminiClient
from gateway.model import CallLabels
from gateway.operations import ANALYZE_VIDEO, COMPUTE_ATTENTION_HEATMAP
from gateway.operations.analyze_video import AnalyzeVideo, AnalyzeVideoRequest
from gateway.operations.base import OperationSpec, RunContext
from gateway.operations.compute_attention_heatmap import ComputeAttentionHeatmapRequest
from gateway.operations.images import ImageInput
from gateway.store import Store
from gateway.store.blobs import LocalBlobStore

MODEL = GeminiSettings().text_model
ALICE, BOB = "user-alice", "user-bob"


def thumbnail() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (1280, 720), (200, 30, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


async def run(
    spec: OperationSpec[Any, Any], raw: Any, client: GeminiClient, user: str
) -> tuple[Any, Any]:
    request = spec.validate(raw)
    ctx = RunContext(user, MODEL, CallLabels(spec.name, user))
    return request, await spec.run(request, client, ctx)


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
async def heatmap(gemini_client: GeminiClient) -> tuple[Any, Any]:
    raw = ComputeAttentionHeatmapRequest(ImageInput(thumbnail(), "image/jpeg"))
    return await run(COMPUTE_ATTENTION_HEATMAP, raw, gemini_client, ALICE)


async def test_a_heatmap_result_round_trips_through_cache_and_blobs(
    store: Store, blobs: LocalBlobStore, heatmap: tuple[Any, Any]
) -> None:
    request, result = heatmap
    spec = COMPUTE_ATTENTION_HEATMAP
    key = spec.cache_key(request, ALICE, MODEL, Scope.GLOBAL)
    assert key is not None
    cache = ResultCache(store, blobs, inline_max_bytes=64 * 1024)
    assert await cache.get(spec, key) is None
    ref = await cache.put(
        spec, key, EncodedResult.of(spec, result), scope="global", model=MODEL, ttl_s=3600
    )
    # The row holds JSON and a reference; the overlay PNG lives in the blob store.
    assert ref.json is not None and ref.blobs == (result.overlay.sha256,)
    assert result.overlay.data not in ref.json.encode()
    assert await blobs.get(result.overlay.sha256) == result.overlay.data
    # Global scope: Bob's identical thumbnail finds Alice's result.
    assert spec.cache_key(request, BOB, MODEL, Scope.GLOBAL) == key
    hit = await cache.get(spec, key)
    assert hit is not None and hit.result == result and hit.entry.model == MODEL


async def test_large_result_json_goes_to_the_blob_store(
    blobs: LocalBlobStore, heatmap: tuple[Any, Any]
) -> None:
    _, result = heatmap
    ref = await save_result(
        EncodedResult.of(COMPUTE_ATTENTION_HEATMAP, result), blobs, inline_max_bytes=0
    )
    assert ref.json is None and ref.json_blob is not None
    assert await load_result(COMPUTE_ATTENTION_HEATMAP, ref, blobs) == result


async def test_a_lost_blob_makes_a_miss_not_an_error(
    store: Store, blobs: LocalBlobStore, heatmap: tuple[Any, Any]
) -> None:
    request, result = heatmap
    spec = COMPUTE_ATTENTION_HEATMAP
    key = spec.cache_key(request, ALICE, MODEL, Scope.GLOBAL)
    assert key is not None
    cache = ResultCache(store, blobs, inline_max_bytes=64 * 1024)
    await cache.put(
        spec, key, EncodedResult.of(spec, result), scope="global", model=MODEL, ttl_s=3600
    )
    blobs.path_of(result.overlay.sha256).unlink()
    assert await cache.get(spec, key) is None
    # Another operation's spec never decodes this entry either.
    await cache.put(
        spec, key, EncodedResult.of(spec, result), scope="global", model=MODEL, ttl_s=3600
    )
    assert await cache.get(ANALYZE_VIDEO, key) is None
    assert await cache.get(spec, key) is not None


async def test_expired_results_are_misses(
    store: Store, blobs: LocalBlobStore, heatmap: tuple[Any, Any]
) -> None:
    request, result = heatmap
    spec = COMPUTE_ATTENTION_HEATMAP
    key = spec.cache_key(request, ALICE, MODEL, Scope.GLOBAL)
    assert key is not None
    cache = ResultCache(store, blobs, inline_max_bytes=64 * 1024)
    await cache.put(
        spec, key, EncodedResult.of(spec, result), scope="global", model=MODEL, ttl_s=0.01
    )
    await asyncio.sleep(0.05)
    assert await cache.get(spec, key) is None


async def test_user_scope_and_version_bumps_isolate_entries(
    store: Store, blobs: LocalBlobStore, gemini_client: GeminiClient
) -> None:
    raw = AnalyzeVideoRequest("dQw4w9WgXcQ", "I built a treehouse", "Weekend build")
    request, analysis = await run(ANALYZE_VIDEO, raw, gemini_client, ALICE)
    cache = ResultCache(store, blobs, inline_max_bytes=64 * 1024)
    alice_key = ANALYZE_VIDEO.cache_key(request, ALICE, MODEL, Scope.USER)
    bob_key = ANALYZE_VIDEO.cache_key(request, BOB, MODEL, Scope.USER)
    assert alice_key is not None and bob_key is not None
    await cache.put(
        ANALYZE_VIDEO,
        alice_key,
        EncodedResult.of(ANALYZE_VIDEO, analysis),
        scope="user",
        model=MODEL,
        ttl_s=3600,
    )
    hit = await cache.get(ANALYZE_VIDEO, alice_key)
    assert hit is not None and hit.result == analysis
    # Bob asking about the same video never gets Alice's analysis.
    assert await cache.get(ANALYZE_VIDEO, bob_key) is None
    # A prompt bump changes the key: the old entry is never served to the new prompt.
    bumped = AnalyzeVideo(prompt_version=ANALYZE_VIDEO.prompt_version + "-next")
    bumped_key = bumped.cache_key(request, ALICE, MODEL, Scope.USER)
    assert bumped_key is not None and bumped_key != alice_key
    assert await cache.get(bumped, bumped_key) is None
