"""A fleet's blobs, with each replica's blob settings built on its own exactly as a deployment
builds them (no shared temporary directory): against PostgreSQL blobs and against a real S3
server (s3s-fs). Jobs move between replicas, image results are shared, and a writer killed
with SIGKILL mid-write leaves nothing a reader sees as corrupt.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from asyncio.subprocess import PIPE
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from PIL import Image as PILImage
from viewbait.ai.v1 import common_pb2, gateway_service_pb2_grpc, operations_pb2

from gateway.config import StoreSettings
from gateway.emulator import EmulatorServer
from gateway.store.blobs import BlobCorrupt
from gateway.store.blobs.postgres import PostgresBlobStore
from gateway.store.postgres import PostgresStore, run_migrations
from tests.fixtures.gateways import SERVICE_TOKEN, as_user
from tests.fixtures.stores import DATABASE_URL, store_settings

from .test_jobs import SUCCEEDED, Jobs, heatmap, settings

TIMEOUT_S = 30


@pytest.fixture(params=["postgres", "s3"])
def replica_store(
    request: pytest.FixtureRequest, pg_schema: str, s3_settings: Callable[..., StoreSettings]
) -> Callable[[], StoreSettings]:
    """Builds one replica's store settings (a new object per replica) for the fleet's database
    and blob backend: PostgreSQL's `ai_blobs` by default, or one S3 bucket."""
    s3 = s3_settings() if request.param == "s3" else None

    def build() -> StoreSettings:
        base = store_settings(pg_schema, migrate_on_start=True)
        if s3 is None:
            return base
        blob_fields = {name: getattr(s3, name) for name in type(s3).model_fields if "s3" in name}
        return StoreSettings(
            **{**base.model_dump(by_alias=True), "blob_backend": "s3", **blob_fields}
        )

    return build


def replica_env(store: StoreSettings) -> dict[str, str]:
    """The same blob settings as a gateway process's environment."""
    env = {
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": store.schema_name,
        "VIEWBAIT_STORE__MIGRATE_ON_START": "true",
        "VIEWBAIT_STORE__BLOB_BACKEND": store.blob_backend,
    }
    if store.blob_backend == "s3":
        assert store.s3_access_key_id and store.s3_secret_access_key and store.s3_endpoint
        env |= {
            "VIEWBAIT_STORE__S3_BUCKET": str(store.s3_bucket),
            "VIEWBAIT_STORE__S3_ENDPOINT": store.s3_endpoint,
            "VIEWBAIT_STORE__S3_ACCESS_KEY_ID": store.s3_access_key_id.get_secret_value(),
            "VIEWBAIT_STORE__S3_SECRET_ACCESS_KEY": store.s3_secret_access_key.get_secret_value(),
        }
    return env


def noise_png(seed: int, size: tuple[int, int] = (1024, 768)) -> bytes:
    """A PNG that does not compress (about 2.3 MB at the default size)."""
    pixels = seed.to_bytes(4, "big") + os.urandom(size[0] * size[1] * 3 - 4)
    out = io.BytesIO()
    PILImage.frombytes("RGB", size, pixels).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def heatmap_request(data: bytes) -> operations_pb2.ComputeAttentionHeatmapRequest:
    return operations_pb2.ComputeAttentionHeatmapRequest(image=common_pb2.Image(data=data))


async def test_a_job_submitted_on_one_replica_is_run_by_another(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    replica_store: Callable[[], StoreSettings],
) -> None:
    front = Jobs(
        await start_gateway(settings(emulator, tmp_path / "a", replica_store(), workers=0))
    )
    worker = await start_gateway(settings(emulator, tmp_path / "b", replica_store(), workers=4))

    job = (await front.submit(heatmap())).job
    events = await front.watch_to_end(job.id)

    assert events[-1].job.status == SUCCEEDED, events[-1].job.error
    assert emulator.stats().requests == 1
    assert worker.server.workers is not None and worker.executor.stats.runs == 1


async def test_an_image_result_made_by_one_replica_is_a_cache_hit_on_another(
    start_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    replica_store: Callable[[], StoreSettings],
) -> None:
    a = await start_gateway(settings(emulator, tmp_path / "a", replica_store()))
    b = await start_gateway(settings(emulator, tmp_path / "b", replica_store()))
    request = heatmap().compute_attention_heatmap

    made = await a.stub.ComputeAttentionHeatmap(request, metadata=as_user(), timeout=TIMEOUT_S)
    await a.executor.flush()  # the result's blobs and row are written after the answer
    hit = await b.stub.ComputeAttentionHeatmap(
        request, metadata=as_user("user-b"), timeout=TIMEOUT_S
    )

    assert not made.metadata.cached and hit.metadata.cached
    assert hit.result == made.result and len(hit.result.heatmap.image.data) > 0
    assert emulator.stats().requests == 1


async def test_a_writer_killed_mid_write_leaves_nothing_a_reader_sees_as_corrupt(
    start_gateway: Any,
    spawn_gateway: Any,
    emulator: EmulatorServer,
    tmp_path: Path,
    replica_store: Callable[[], StoreSettings],
) -> None:
    writer_store = replica_store()
    writer = spawn_gateway(
        VIEWBAIT_GEMINI__API_KEY=emulator.api_key,
        VIEWBAIT_GEMINI__BASE_URL=emulator.base_url,
        VIEWBAIT_AUTH__SERVICE_TOKEN=SERVICE_TOKEN,
        VIEWBAIT_EXECUTION__LEASE_S="1",
        VIEWBAIT_SERVER__LOG_LEVEL="WARNING",
        **replica_env(writer_store),
    )
    images = [noise_png(seed) for seed in range(6)]
    requests = [heatmap_request(data) for data in images]
    async with aio.insecure_channel(
        writer.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        calls = [
            asyncio.ensure_future(
                stub.ComputeAttentionHeatmap(request, metadata=as_user(), timeout=TIMEOUT_S)
            )
            for request in requests
        ]
        # Killed while input images, result images and rows are being written.
        await asyncio.sleep(0.3)
        writer.process.send_signal(signal.SIGKILL)
        writer.process.wait(timeout=10)
        await asyncio.gather(*calls, return_exceptions=True)

    # Every blob the writer left verifies: complete or absent, never a part of one.
    reader = await start_gateway(settings(emulator, tmp_path / "reader", replica_store()))
    blobs = reader.server.blobs
    assert blobs is not None
    stored = [d async for batch in blobs.stale(0, 100) for d in batch]
    for digest in stored:
        try:
            await blobs.get(digest)
        except BlobCorrupt:
            pytest.fail(f"blob {digest.hex()} left by the killed writer is corrupt")

    # And a reader answers every one of the interrupted requests correctly.
    answers = await asyncio.gather(
        *(
            reader.stub.ComputeAttentionHeatmap(request, metadata=as_user(), timeout=TIMEOUT_S)
            for request in requests
        )
    )
    assert all(len(answer.result.heatmap.image.data) > 0 for answer in answers)


def test_a_replica_with_a_database_refuses_a_private_blob_directory(
    spawn_gateway: Any, emulator: EmulatorServer, tmp_path: Path, pg_schema: str
) -> None:
    env = {
        "VIEWBAIT_GEMINI__API_KEY": emulator.api_key,
        "VIEWBAIT_GEMINI__BASE_URL": emulator.base_url,
        "VIEWBAIT_AUTH__SERVICE_TOKEN": SERVICE_TOKEN,
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": pg_schema,
        "VIEWBAIT_STORE__MIGRATE_ON_START": "true",
        "VIEWBAIT_STORE__BLOB_DIR": str(tmp_path / "blobs"),
    }
    with pytest.raises(AssertionError, match="VIEWBAIT_STORE__BLOB_DIR_SHARED=true"):
        spawn_gateway(**env)
    # Declared a shared mount, it starts.
    assert spawn_gateway(**env, VIEWBAIT_STORE__BLOB_DIR_SHARED="true").port > 0


async def test_the_gc_command_deletes_only_old_unreferenced_blobs(pg_schema: str) -> None:
    settings = store_settings(pg_schema)
    await run_migrations(settings)
    store = PostgresStore(settings)
    await store.start()
    try:
        blobs = PostgresBlobStore(store)
        orphan, young = await blobs.put(b"orphan"), await blobs.put(b"young orphan")
        await store.pool.run(
            lambda conn: conn.execute(
                f"UPDATE \"{pg_schema}\".ai_blobs SET touched_at = now() - interval '2 hours' "
                "WHERE digest = $1",
                orphan,
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWBAIT_")}
        env |= {"VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL, "VIEWBAIT_STORE__SCHEMA": pg_schema}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "gc", env=env, stdout=PIPE, stderr=PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)

        assert process.returncode == 0, stderr.decode()
        assert b"1 deleted, 0 still referenced, of 1 older than 3600 s" in stdout
        assert not await blobs.exists(orphan) and await blobs.exists(young)
    finally:
        await store.close()
