"""Soak: a 3-replica fleet on PostgreSQL + Redis under mixed traffic, with a replica killed and
Redis restarted mid-run.

    python bench/soak.py                 # 30 minutes (the figure in docs/benchmarks.md)
    python bench/soak.py --minutes 3     # a quick look

What runs: the offline Gemini emulator (its own process, `--latency` seconds per call), a Redis
server of the run's own (so it can be restarted), a fresh schema on the shared PostgreSQL, and
three `viewbait-gateway serve` replicas, each with its own working directory and settings, sharing
only PostgreSQL (results, jobs, usage and blobs) and Redis (limits). `--concurrency` clients send
every operation, unary and as jobs (SubmitJob then WatchJob to the end), for several users of
every tier, over a small Zipf-distributed input space so that cache hits, coalesced joins and
misses all happen. Clients act like a load balancer's callers: an UNAVAILABLE answer (a replica
down or draining) is retried on the next replica, with the same idempotency key for submits.

Mid-run, once each: at a third, one replica gets SIGKILL and is restarted 5 s later with the
same settings; at two thirds, Redis is stopped for 3 s and started again (empty, as the shared
limits after a Redis restart are).

Printed at the end: requests and jobs by outcome (the run fails on any INTERNAL/UNKNOWN answer
or any lost job: submitted, acknowledged, and not finished within `--drain` seconds after the
traffic stops; a job deferred by its owner's upstream limit waits for that limit, so the drain
is long), upstream calls against distinct cacheable keys (text model) and against requested
variations (image model), and each replica's RSS at start, middle and end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from viewbait.ai.v1 import (
    common_pb2,
    gateway_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    operations_pb2,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    CHANNEL_OPTIONS,
    DEFAULT_DATABASE_URL,
    SERVICE_TOKEN,
    Fleet,
    fresh_schema,
    store_env,
)

from gateway.emulator.png import synthetic_png

REPLICAS = ("a", "b", "c")
#: (user, tier): every tier, ten users each.
USERS = [
    (f"soak-{tier}-{i}", tier) for tier in ("free", "starter", "advanced", "pro") for i in range(10)
]
#: Operations each tier may call (the default policy table).
ALLOWED = {
    "free": ("generate", "consistency"),
    "starter": ("generate", "consistency"),
    "advanced": ("generate", "consistency", "heatmap"),
    "pro": ("generate", "consistency", "heatmap", "analyze", "suggest"),
}
TERMINAL = {job_pb2.JOB_STATUS_SUCCEEDED, job_pb2.JOB_STATUS_FAILED, job_pb2.JOB_STATUS_CANCELLED}
#: Answers that mean the gateway itself broke: the run fails on any of them.
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


def zipf_index(rng: random.Random, n: int, s: float = 1.1) -> int:
    """An index in [0, n) drawn with probability proportional to 1 / (i + 1) ** s."""
    weights = [1 / (i + 1) ** s for i in range(n)]
    return rng.choices(range(n), weights)[0]


#: Small distinct images: 12 thumbnails to score, 6 channel references.
THUMBS = [synthetic_png(320, 180, seed) for seed in range(12)]
REFS = [synthetic_png(320, 180, 100 + seed) for seed in range(6)]


@dataclass
class Work:
    """One request: the operation, its proto request, and the cache key it maps to (None for
    GenerateThumbnail, which is never cached)."""

    op: str
    request: Any
    key: tuple[Any, ...] | None
    variations: int = 0


def make_work(rng: random.Random, user: str, tier: str) -> Work:
    """A random request of an operation the tier may call, from a small Zipf input space."""
    op = rng.choice(ALLOWED[tier])
    video = f"soakvid{zipf_index(rng, 40):04d}"
    if op == "analyze":
        request = operations_pb2.AnalyzeVideoRequest(video_id=video, title=f"Soak {video}")
        return Work(op, request, ("analyze", user, video))
    if op == "suggest":
        views = 1000 * (1 + zipf_index(rng, 5))
        analytics = json.dumps({"views": views, "ctr": 0.05})
        request = operations_pb2.SuggestThumbnailConceptsRequest(
            video_id=video, analytics_json=analytics
        )
        return Work(op, request, ("suggest", user, video, views))
    if op == "heatmap":
        index = zipf_index(rng, len(THUMBS))
        request = operations_pb2.ComputeAttentionHeatmapRequest(
            image=common_pb2.Image(data=THUMBS[index])
        )
        return Work(op, request, ("heatmap", index))  # global scope: shared by every user
    if op == "consistency":
        target = zipf_index(rng, len(THUMBS))
        refs = sorted(rng.sample(range(len(REFS)), 2))
        request = operations_pb2.CheckChannelConsistencyRequest(
            video_id=video,
            target=common_pb2.Image(data=THUMBS[target]),
            references=[common_pb2.Image(data=REFS[i]) for i in refs],
        )
        return Work(op, request, ("consistency", user, video, target, tuple(refs)))
    variations = rng.choice((1, 1, 2))
    request = operations_pb2.GenerateThumbnailRequest(
        prompt=f"soak prompt {uuid.uuid4().hex[:8]}", variations=variations
    )
    return Work(op, request, None, variations)


UNARY = {
    "analyze": "AnalyzeVideo",
    "suggest": "SuggestThumbnailConcepts",
    "heatmap": "ComputeAttentionHeatmap",
    "consistency": "CheckChannelConsistency",
}
SUBMIT_FIELD = {
    "generate": "generate_thumbnail",
    "analyze": "analyze_video",
    "suggest": "suggest_thumbnail_concepts",
    "heatmap": "compute_attention_heatmap",
    "consistency": "check_channel_consistency",
}


@dataclass
class Tally:
    """What the clients saw."""

    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Job id -> (user, tier) of every acknowledged job.
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)
    keys: set[tuple[Any, ...]] = field(default_factory=set)
    variations_done: int = 0
    broken: list[str] = field(default_factory=list)
    #: The tasks following submitted jobs to their end.
    watchers: list[asyncio.Future[None]] = field(default_factory=list)
    #: What the unfinished jobs' records said at the end.
    lost_detail: list[str] = field(default_factory=list)

    def count(self, what: str) -> None:
        self.outcomes[what] += 1


class Replicas:
    """The fleet's replicas: ports, channels, and which are up."""

    def __init__(self, fleet: Fleet, emulator_url: str, env: dict[str, str]) -> None:
        self.fleet, self.emulator_url, self.env = fleet, emulator_url, env
        self.ports: dict[str, int] = {}
        self.channels: dict[str, aio.Channel] = {}
        self._retired: list[aio.Channel] = []
        self._next = 0

    async def start(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.fleet.workdir / name / "ready.json").unlink()
        # Same name, same working directory and settings: a restart, as a deployment does it.
        port = await self.fleet.gateway(name, self.emulator_url, self.env)
        old = self.channels.pop(name, None)
        if old is not None:
            # Left open: its calls to the dead replica fail UNAVAILABLE and fail over, as a
            # client's would (closing it would cancel them instead).
            self._retired.append(old)
        self.ports[name] = port
        self.channels[name] = aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)

    def pid(self, name: str) -> int:
        return self.fleet.pids[self.ports[name]]

    def pick(self) -> aio.Channel:
        """Round robin over the replicas (a load balancer's view)."""
        self._next += 1
        return self.channels[REPLICAS[self._next % len(REPLICAS)]]

    async def aclose(self) -> None:
        for channel in [*self.channels.values(), *self._retired]:
            await channel.close()


def metadata(user: str, tier: str) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {SERVICE_TOKEN}"),
        ("x-viewbait-user-id", user),
        ("x-viewbait-tier", tier),
    )


async def with_failover(replicas: Replicas, call: Any, attempts: int = 6) -> Any:
    """`call(channel)` on replica after replica while the answer is UNAVAILABLE."""
    for attempt in range(attempts):
        try:
            return await call(replicas.pick())
        except aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts - 1:
                raise
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def get_job(replicas: Replicas, job_id: str, md: Any) -> Any:
    """GetJob, failing over like the other calls."""
    request = job_service_pb2.GetJobRequest(job_id=job_id)

    async def get(channel: aio.Channel) -> Any:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        return (await stub.GetJob(request, metadata=md, timeout=10)).job

    return await with_failover(replicas, get)


async def follow(replicas: Replicas, tally: Tally, job_id: str, md: Any, until: float) -> None:
    """Watches a job to its end, resuming on another replica after UNAVAILABLE."""
    after = 0
    loop = asyncio.get_running_loop()
    while loop.time() < until:
        stub = job_service_pb2_grpc.JobServiceStub(replicas.pick())
        try:
            stream = stub.WatchJob(
                job_service_pb2.WatchJobRequest(job_id=job_id, after_sequence=after),
                metadata=md,
                timeout=max(1.0, until - loop.time()),
            )
            async for event in stream:
                after = event.sequence
                if event.job.status in TERMINAL:
                    tally.finished[job_id] = event.job.status
                    return
        except aio.AioRpcError as error:
            if error.code() in BROKEN:
                tally.broken.append(f"WatchJob {job_id}: {error.code().name} {error.details()}")
                return
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return
            await asyncio.sleep(0.3)


async def one_request(
    replicas: Replicas, tally: Tally, rng: random.Random, as_job: bool, follow_until: float
) -> None:
    user, tier = rng.choice(USERS)
    work = make_work(rng, user, tier)
    md = metadata(user, tier)
    label = f"{work.op}/{'job' if as_job else 'unary'}"
    try:
        if as_job:
            key = uuid.uuid4().hex
            submit = job_service_pb2.SubmitJobRequest(
                idempotency_key=key, **{SUBMIT_FIELD[work.op]: work.request}
            )

            async def send(channel: aio.Channel) -> Any:
                stub = job_service_pb2_grpc.JobServiceStub(channel)
                return await stub.SubmitJob(submit, metadata=md, timeout=30)

            response = await with_failover(replicas, send)
            job_id = response.job.id
            tally.jobs[job_id] = (user, tier)

            async def watch() -> None:
                await follow(replicas, tally, job_id, md, follow_until)
                status = tally.finished.get(job_id)
                tally.count(f"{label} {job_pb2.JobStatus.Name(status) if status else 'UNFINISHED'}")
                if status == job_pb2.JOB_STATUS_SUCCEEDED:
                    if work.key:
                        tally.keys.add(work.key)
                    tally.variations_done += work.variations

            # The client moves on, as a web tier does: the job is watched on the side (a job
            # deferred by its owner's upstream limit may wait minutes).
            tally.watchers.append(asyncio.ensure_future(watch()))
            return
        if work.op == "generate":
            # One key for every failover attempt: a retry replays the first run's images.
            generate = operations_pb2.GenerateThumbnailRequest()
            generate.CopyFrom(work.request)
            generate.idempotency_key = uuid.uuid4().hex

            async def stream(channel: aio.Channel) -> int:
                stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
                images = 0
                async for event in stub.GenerateThumbnail(generate, metadata=md, timeout=60):
                    images += event.HasField("image")
                return images

            images = await with_failover(replicas, stream)
            tally.variations_done += work.variations
            tally.count(f"{label} OK ({'all images' if images == work.variations else 'short'})")
            return

        async def unary(channel: aio.Channel) -> Any:
            stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
            return await getattr(stub, UNARY[work.op])(work.request, metadata=md, timeout=60)

        response = await with_failover(replicas, unary)
        if response.HasField("pending"):
            await follow(replicas, tally, response.pending.job_id, md, follow_until)
            status = tally.finished.get(response.pending.job_id)
            tally.count(f"{label} pending -> {job_pb2.JobStatus.Name(status) if status else '?'}")
        else:
            cached = response.metadata.cached or response.metadata.coalesced
            tally.count(f"{label} OK ({'cached/coalesced' if cached else 'computed'})")
        if work.key:
            tally.keys.add(work.key)
    except aio.AioRpcError as error:
        tally.count(f"{label} {error.code().name}")
        if error.code() in BROKEN:
            tally.broken.append(f"{label}: {error.code().name} {error.details()}")


def emulator_stats(emulator_url: str) -> dict[str, Any]:
    """The emulator's counters (`GET /_emulator/stats`)."""
    with urllib.request.urlopen(f"{emulator_url}/_emulator/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
        return stats


def rss_mb(pid: int) -> float:
    with contextlib.suppress(FileNotFoundError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class RedisServer:
    """A Redis server of the run's own, so the soak can stop and start it."""

    def __init__(self, workdir: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.workdir = workdir
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = await asyncio.create_subprocess_exec(
            binary,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--dir", str(self.workdir)),
            stdout=asyncio.subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError("the soak's Redis server did not start")

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()


async def soak(minutes: float, concurrency: int, latency_s: float, drain_s: float) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="viewbait-soak-"))
    redis = RedisServer(workdir)
    await redis.start()
    seconds = minutes * 60
    tally = Tally()
    rss: dict[str, dict[str, float]] = {name: {} for name in REPLICAS}
    events: list[str] = []
    try:
        async with fresh_schema(DEFAULT_DATABASE_URL) as schema, Fleet(workdir) as fleet:
            emulator_url = await fleet.emulator(latency_s)
            env = {
                **store_env(DEFAULT_DATABASE_URL, schema),
                "VIEWBAIT_LIMITER__REDIS_URL": redis.url,
                "VIEWBAIT_LIMITER__KEY_PREFIX": f"soak-{uuid.uuid4().hex[:8]}",
                "VIEWBAIT_JOBS__WORKERS": "4",
                "VIEWBAIT_SERVER__SHUTDOWN_GRACE_S": "5",
            }
            replicas = Replicas(fleet, emulator_url, env)
            for name in REPLICAS:
                await replicas.start(name)
            loop = asyncio.get_running_loop()
            started = loop.time()
            stop_at = started + seconds
            # Jobs deferred by their owner's upstream limit wait for it, so the drain is long.
            follow_until = stop_at + drain_s
            for name in REPLICAS:
                rss[name]["start"] = rss_mb(replicas.pid(name))

            async def client(index: int) -> None:
                rng = random.Random(index)
                while loop.time() < stop_at:
                    await one_request(replicas, tally, rng, rng.random() < 0.5, follow_until)
                    # Think time: many users asking now and then, not one flood.
                    await asyncio.sleep(rng.uniform(0, 1))

            async def chaos() -> None:
                await asyncio.sleep(seconds / 3)
                victim = REPLICAS[1]
                os.kill(replicas.pid(victim), signal.SIGKILL)
                events.append(f"{time.strftime('%H:%M:%S')} SIGKILL replica {victim}")
                await asyncio.sleep(5)
                await replicas.start(victim)
                events.append(f"{time.strftime('%H:%M:%S')} replica {victim} restarted")
                await asyncio.sleep(seconds / 2 - seconds / 3 - 5)
                for name in REPLICAS:
                    rss[name]["middle"] = rss_mb(replicas.pid(name))
                await asyncio.sleep(seconds * 2 / 3 - seconds / 2)
                await redis.stop()
                events.append(f"{time.strftime('%H:%M:%S')} Redis stopped")
                await asyncio.sleep(3)
                await redis.start()
                events.append(f"{time.strftime('%H:%M:%S')} Redis started again")

            async def progress() -> None:
                while loop.time() < stop_at:
                    await asyncio.sleep(60)
                    done = sum(tally.outcomes.values())
                    print(f"  {int(loop.time() - started)} s: {done} requests", flush=True)

            await asyncio.gather(chaos(), progress(), *(client(i) for i in range(concurrency)))
            # Jobs still running when traffic stopped: give them the drain window.
            unfinished = [j for j in tally.jobs if j not in tally.finished]
            drain_started = loop.time()
            await asyncio.gather(*tally.watchers)
            # A watch that broke is not a lost job: the job's own record says how it ended.
            for job_id in [j for j in tally.jobs if j not in tally.finished]:
                try:
                    job = await get_job(replicas, job_id, metadata(*tally.jobs[job_id]))
                except aio.AioRpcError as error:
                    tally.lost_detail.append(f"{job_id}: GetJob {error.code().name}")
                    continue
                if job.status in TERMINAL:
                    tally.finished[job_id] = job.status
                else:
                    tally.lost_detail.append(
                        f"{job_id}: {job_pb2.JobStatus.Name(job.status)}, attempts "
                        f"{job.attempts}/{job.max_attempts}, created "
                        f"{job.create_time.ToJsonString()}, run after "
                        f"{job.run_after_time.ToJsonString()}, error {job.error.reason!r}"
                    )
            drained_s = loop.time() - drain_started
            for name in REPLICAS:
                rss[name]["end"] = rss_mb(replicas.pid(name))
            stats = await asyncio.to_thread(emulator_stats, emulator_url)
            await replicas.aclose()
    finally:
        await redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    lost = [j for j in tally.jobs if j not in tally.finished]
    print(f"\nsoak: 3 replicas, {minutes:g} min, concurrency {concurrency}, emulator {latency_s} s")
    for line in events:
        print(f"  {line}")
    print("\nrequests by outcome:")
    for what, count in sorted(tally.outcomes.items()):
        print(f"  {count:7d}  {what}")
    by_status = collections.Counter(job_pb2.JobStatus.Name(s) for s in tally.finished.values())
    print(f"\njobs: {len(tally.jobs)} acknowledged, {dict(by_status)}, lost {len(lost)}")
    print(
        f"drain: {len(unfinished)} jobs unfinished when traffic stopped; followed for "
        f"{drained_s:.0f} s (at most {drain_s:g})"
    )
    by_model = stats.get("by_model", {})
    print(f"upstream calls by model: {by_model}")
    print(
        f"distinct cacheable keys answered: {len(tally.keys)}; image variations delivered: "
        f"{tally.variations_done}"
    )
    print("\nRSS MB (start / middle / end):")
    for name in REPLICAS:
        marks = rss[name]
        restarted = " (restarted after SIGKILL)" if name == REPLICAS[1] else ""
        print(
            f"  {name}: {marks.get('start', 0):.0f} / {marks.get('middle', 0):.0f} / "
            f"{marks.get('end', 0):.0f}{restarted}"
        )
    for line in tally.lost_detail[:20]:
        print(f"LOST: {line}")
    for line in tally.broken[:20]:
        print(f"BROKEN: {line}")
    failed = bool(lost) or bool(tally.broken)
    print("\nresult:", "FAILED" if failed else "ok (0 lost jobs, 0 INTERNAL)")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=12)
    parser.add_argument("--latency", type=float, default=0.3, help="emulator seconds per call")
    parser.add_argument(
        "--drain", type=float, default=600.0, help="seconds to follow jobs after traffic stops"
    )
    args = parser.parse_args()
    raise SystemExit(asyncio.run(soak(args.minutes, args.concurrency, args.latency, args.drain)))


if __name__ == "__main__":
    main()
