"""Cold start: from spawning `viewbait-gateway serve` to its first answered RPCs.

Each trial spawns a fresh process on a known port and polls it from this (already warm)
process over one channel that retries the connection every 10 ms, timing from the spawn to:
- `health`: the first `grpc.health.v1.Health/Check` answered SERVING;
- `rpc`: the first authenticated ListJobs answered (a gateway RPC through every interceptor and
  the store, calling no model);
- `model rpc`: then the first AnalyzeVideo answered (admission, the model call through
  google-genai to the emulator, the result stored).

Sides (the same client, the same polling, the same machine):
- anchor `bare`: a bare grpc.aio server process answering a fixed AnalyzeVideoResponse (what
  starting Python, grpcio and the generated stubs costs on its own);
- `local`: local mode, nothing configured (embedded store and limiter, the emulator in process);
- `postgres+redis`: the PostgreSQL store (a fresh schema, migrated at start) and the Redis
  limiter, calling an emulator process started beforehand (not timed).

Prints the median and worst of each side over the trials and each side's ratio to the anchor.
The target is `rpc` <= 1 s on both gateway sides. Server CPU is read from /proc when the model
rpc has answered: it is what a busy machine changes least.

    python bench/cold_start.py [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from viewbait.ai.v1 import (
    gateway_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    operations_pb2,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    DEFAULT_DATABASE_URL,
    EMULATOR_KEY,
    SERVICE_TOKEN,
    Fleet,
    fresh_schema,
    store_env,
)

from gateway.testing.postgres import free_port

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
LOCAL_TOKEN = "local-dev-service-token"
#: Reconnect at once and often: the time measured is the server's, not the channel's backoff.
POLL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 10),
]


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (
        ("authorization", f"Bearer {token}"),
        ("x-viewbait-user-id", f"cold-{uuid.uuid4().hex[:8]}"),
        ("x-viewbait-tier", "pro"),
    )


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def first_answers(
    port: int, process: asyncio.subprocess.Process, token: str, started: float
) -> Timing:
    """When the first SERVING health answer, ListJobs answer and AnalyzeVideo answer came."""
    async with aio.insecure_channel(f"127.0.0.1:{port}", options=POLL_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.returncode is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                answer = await health.Check(
                    health_pb2.HealthCheckRequest(), timeout=1, wait_for_ready=True
                )
            except aio.AioRpcError:
                await asyncio.sleep(0.005)
                continue
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.005)
        healthy = time.perf_counter() - started
        caller = metadata(token)
        jobs = job_service_pb2_grpc.JobServiceStub(channel)
        await jobs.ListJobs(job_service_pb2.ListJobsRequest(), metadata=caller, timeout=60)
        listed = time.perf_counter() - started
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        request = operations_pb2.AnalyzeVideoRequest(video_id=f"cold{uuid.uuid4().hex[:7]}")
        await stub.AnalyzeVideo(request, metadata=caller, timeout=60)
        return Timing(healthy, listed, time.perf_counter() - started, cpu_seconds(process.pid))


@dataclass(frozen=True)
class Timing:
    health_s: float
    rpc_s: float
    model_s: float
    #: CPU time the server process used up to its first model RPC answer: what the machine's
    #: load changes least, unlike the wall times.
    cpu_s: float


async def trial(workdir: Path, argv: list[str], env: Mapping[str, str], token: str) -> Timing:
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("VIEWBAIT_", "OTEL_"))}
    environment.update({"VIEWBAIT_SERVER__PORT": str(port), **env})
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (workdir / "server.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, env=environment, cwd=workdir, stdout=log, stderr=log
        )
    try:
        return await first_answers(port, process, token, started)
    finally:
        process.terminate()
        await process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, list[Timing]] = {}
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        root = Path(tmp)
        async with Fleet(root) as fleet, fresh_schema(DEFAULT_DATABASE_URL) as schema:
            emulator_url = await fleet.emulator()
            sides: dict[str, tuple[list[str], dict[str, str], str]] = {
                "bare": ([__file__, "--bare"], {}, SERVICE_TOKEN),
                "local": (
                    ["-m", "gateway", "serve"],
                    {"VIEWBAIT_SERVER__LOG_LEVEL": "WARNING"},
                    LOCAL_TOKEN,
                ),
                "postgres+redis": (
                    ["-m", "gateway", "serve"],
                    {
                        "VIEWBAIT_SERVER__LOG_LEVEL": "WARNING",
                        "VIEWBAIT_AUTH__SERVICE_TOKEN": SERVICE_TOKEN,
                        "VIEWBAIT_GEMINI__API_KEY": EMULATOR_KEY,
                        "VIEWBAIT_GEMINI__BASE_URL": emulator_url,
                        "VIEWBAIT_LIMITER__REDIS_URL": REDIS_URL,
                        "VIEWBAIT_LIMITER__KEY_PREFIX": f"cold-{uuid.uuid4().hex[:8]}:",
                        **store_env(DEFAULT_DATABASE_URL, schema),
                    },
                    SERVICE_TOKEN,
                ),
            }
            for round_ in range(args.trials):
                for name, (argv, env, token) in sides.items():
                    workdir = root / f"{name}-{round_}"
                    results.setdefault(name, []).append(await trial(workdir, argv, env, token))
    anchor = statistics.median(t.rpc_s for t in results["bare"])
    anchor_cpu = statistics.median(t.cpu_s for t in results["bare"])
    print(f"cold start, {args.trials} trials per side (seconds from spawn; median / worst)")
    print(
        f"{'side':<16} {'health':>15} {'first rpc':>15} {'vs bare':>8}"
        f" {'first model rpc':>15} {'server CPU':>15} {'vs bare':>8}"
    )

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):7.3f} / {max(values):5.3f}"

    for name, runs in results.items():
        rpc = [t.rpc_s for t in runs]
        cpu = [t.cpu_s for t in runs]
        print(
            f"{name:<16} {cell([t.health_s for t in runs])} {cell(rpc)}"
            f" {statistics.median(rpc) / anchor:7.2f}x {cell([t.model_s for t in runs])}"
            f" {cell(cpu)} {statistics.median(cpu) / anchor_cpu:7.2f}x"
        )
    print("target: first rpc <= 1.000 s on local and postgres+redis")


async def bare_anchor(port: int) -> None:
    """The anchor: grpcio, the generated stubs and health checking, answering at once (on the
    port the gateway would take, `VIEWBAIT_SERVER__PORT`)."""
    from grpc_health.v1 import health as health_servicer
    from viewbait.ai.v1 import gateway_service_pb2

    response = gateway_service_pb2.AnalyzeVideoResponse()

    listed = job_service_pb2.ListJobsResponse()

    class Bare(gateway_service_pb2_grpc.GatewayServiceServicer):
        async def AnalyzeVideo(self, request: object, context: object) -> object:
            return response

    class BareJobs(job_service_pb2_grpc.JobServiceServicer):
        async def ListJobs(self, request: object, context: object) -> object:
            return listed

    server = aio.server()
    gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(Bare(), server)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(BareJobs(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    if sys.argv[1:] == ["--bare"]:
        asyncio.run(bare_anchor(int(os.environ["VIEWBAIT_SERVER__PORT"])))
    else:
        asyncio.run(main())
