"""Shared pieces of the gRPC benchmarks: processes to start, the anchor server, load drivers.

- `Fleet(workdir)`: the processes of one run, stopped on exit of `async with`:
  `emulator(latency_s)` (`python -m gateway.emulator`), `gateway(name, emulator_url, env,
  command)` (`python -m gateway serve`, or `worker`, ready when its ready file appears;
  `pids[port]` is its process),
  `bare_server(response)`: the anchor, a bare grpc.aio GatewayService answering one fixed
  AnalyzeVideoResponse from memory (the physical limit of this stack), `floor_server(response,
  redis_url)`: the anchor plus a batched trivial EVALSHA per request (what Redis admission costs
  at least), `python_server(script,
  *args)`: any other server script of the benchmarks. A PostgreSQL server of a run's own, for
  settings the shared server does not have, is `gateway.testing.postgres.throwaway_postgres`
  (shared with the tests).
- `emulator_calls(url)`: how many generate requests the emulator served (`emulator_stats(url)`:
  all its counters, batches included), and
  `set_emulator_latency(url, s)`: its added latency (its admin routes).
- `unlimited_policies_env()` lifts the per-user rate limits and the caps on RPCs in flight (the
  benchmarks drive one user far past any sane limit; they measure the request path, not the
  limiter).
- `tracing_env()` turns OpenTelemetry tracing on, exporting to a loopback port where no
  collector listens (gateways get no `OTEL_*` variable from this process's environment
  otherwise).
- `closed_loop(port, seconds, concurrency)` and `open_loop(port, rate, seconds)`: AnalyzeVideo
  load from this process, returning requests per second and latencies in ms.
- `fresh_schema(url)`: a PostgreSQL schema of its own for a run, dropped afterwards.

While a driver measures, this client's own garbage collector is paused (and what exists before
is frozen out of it), so the client's pauses do not show up as the server's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from grpc import aio
from viewbait.ai.v1 import gateway_service_pb2, gateway_service_pb2_grpc, operations_pb2

from gateway.config import Settings, Tier
from gateway.testing import postgres as testing_postgres

SERVICE_TOKEN = "bench-service-token-0123456789"
EMULATOR_KEY = "bench-key"
Metadata = tuple[tuple[str, str], ...]


def user_metadata(user_id: str) -> Metadata:
    """The metadata of a call made for `user_id` (the bench's service token, tier pro)."""
    return (
        ("authorization", f"Bearer {SERVICE_TOKEN}"),
        ("x-viewbait-user-id", user_id),
        ("x-viewbait-tier", "pro"),
    )


def grpc_frame(message: bytes) -> bytes:
    """`message` as gRPC sends it on the wire: uncompressed, length-prefixed (what h2load
    posts as a call's body)."""
    return b"\0" + len(message).to_bytes(4, "big") + message


METADATA = user_metadata("bench-user")
REQUEST = operations_pb2.AnalyzeVideoRequest(video_id="dQw4w9WgXcQ", title="Benchmark video")
DEFAULT_DATABASE_URL = os.environ.get(
    "GATEWAY_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
#: Client channel options: room for the largest responses the benchmarks ask for.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]

Process = asyncio.subprocess.Process


async def wait_for(path: Path, process: Process) -> str:
    """The contents of `path` once a starting process has written it."""
    for _ in range(1200):
        if path.exists() and path.read_text():
            return path.read_text()
        if process.returncode is not None:
            raise RuntimeError(f"{process} exited with {process.returncode}")
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {path}")


class Fleet:
    """The processes of one benchmark run; `async with` stops them all at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[Process] = []
        #: The process id of each gateway and server, by its port.
        self.pids: dict[int, int] = {}

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                await process.wait()

    async def emulator(self, latency_s: float = 0.0, knobs: Mapping[str, Any] | None = None) -> str:
        """The offline Gemini emulator in its own process, with `knobs` (`Knobs` fields) set;
        returns its base URL."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.emulator",
            "--port",
            "0",
            "--api-key",
            EMULATOR_KEY,
            "--latency",
            str(latency_s),
            "--knobs",
            json.dumps(dict(knobs or {})),
            "--log-level",
            "WARNING",
            stdout=asyncio.subprocess.PIPE,
        )
        self.processes.append(process)
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode()
        match = re.search(r"listening on (http://\S+)", line)
        if match is None:
            raise RuntimeError(f"the emulator did not start: {line!r}")
        return match.group(1)

    async def gateway(
        self,
        name: str,
        emulator_url: str,
        env: Mapping[str, str] | None = None,
        command: str = "serve",
        *,
        log_to_file: bool = False,
        wrapper: Sequence[str] = (),
    ) -> int:
        """`python -m gateway serve` (or `command`, e.g. `worker`) calling the emulator;
        returns its port (0 for a worker: no listener). With `log_to_file` its log lines go to
        `gateway.log` in its directory, as a deployment's go to a file or a collector, instead
        of this terminal. `wrapper` runs it under another program (e.g. valgrind)."""
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        ready = workdir / "ready.json"
        environment = {
            k: v for k, v in os.environ.items() if not k.startswith(("VIEWBAIT_", "OTEL_"))
        }
        environment.update(
            {
                "VIEWBAIT_SERVER__PORT": "0",
                "VIEWBAIT_SERVER__READY_FILE": str(ready),
                "VIEWBAIT_SERVER__LOG_LEVEL": "WARNING",
                "VIEWBAIT_AUTH__SERVICE_TOKEN": SERVICE_TOKEN,
                "VIEWBAIT_GEMINI__API_KEY": EMULATOR_KEY,
                "VIEWBAIT_GEMINI__BASE_URL": emulator_url,
                **(env or {}),
            }
        )
        if "VIEWBAIT_STORE__DATABASE_URL" not in environment:
            # Embedded: blobs in this replica's own directory (with a database, in PostgreSQL).
            environment["VIEWBAIT_STORE__BLOB_DIR"] = str(workdir / "blobs")
        with contextlib.ExitStack() as files:
            log = files.enter_context((workdir / "gateway.log").open("ab")) if log_to_file else None
            process = await asyncio.create_subprocess_exec(
                *wrapper, sys.executable, "-m", "gateway", command, env=environment, stderr=log
            )
        self.processes.append(process)
        port = int(json.loads(await wait_for(ready, process))["port"])
        self.pids[port] = process.pid
        return port

    async def bare_server(
        self, response: gateway_service_pb2.AnalyzeVideoResponse, wrapper: Sequence[str] = ()
    ) -> int:
        """The anchor in its own process (under `wrapper`, if given), answering `response`;
        returns its port."""
        response_file = self.workdir / "bare-response.bin"
        response_file.write_bytes(response.SerializeToString())
        return await self.python_server(
            __file__, "--bare-server", str(response_file), wrapper=wrapper
        )

    async def floor_server(
        self, response: gateway_service_pb2.AnalyzeVideoResponse, redis_url: str
    ) -> int:
        """The anchor plus a batched trivial EVALSHA per request (`_floor_server`), in its own
        process; returns its port."""
        response_file = self.workdir / "floor-response.bin"
        response_file.write_bytes(response.SerializeToString())
        return await self.python_server(__file__, "--floor-server", str(response_file), redis_url)

    async def otlp_sink(self) -> tuple[int, Path]:
        """A live OTLP trace receiver in its own process (`_otlp_sink`); returns its port and
        the file its span count is written to when it stops."""
        port = await self.python_server(__file__, "--otlp-sink")
        return port, self.workdir / f"server-{len(self.processes) - 1}.port.spans"

    async def python_server(self, script: str, *args: str, wrapper: Sequence[str] = ()) -> int:
        """`python script *args PORT_FILE` in its own process (under `wrapper`, if given),
        where the script writes the port it serves on to PORT_FILE; returns that port."""
        port_file = self.workdir / f"server-{len(self.processes)}.port"
        process = await asyncio.create_subprocess_exec(
            *wrapper, sys.executable, script, *args, str(port_file)
        )
        self.processes.append(process)
        port = int(await wait_for(port_file, process))
        self.pids[port] = process.pid
        return port


def emulator_stats(emulator_url: str) -> dict[str, Any]:
    """The emulator's counters (`GET /_emulator/stats`): generate requests, batches, lines."""
    with urllib.request.urlopen(f"{emulator_url}/_emulator/stats", timeout=10) as response:
        stats: dict[str, Any] = json.load(response)
        return stats


def emulator_calls(emulator_url: str) -> int:
    """Generate requests the emulator has served (whatever their outcome)."""
    return int(emulator_stats(emulator_url)["requests"])


def set_emulator_latency(emulator_url: str, latency_s: float) -> None:
    """Changes the emulator's added latency (its admin route)."""
    request = urllib.request.Request(
        f"{emulator_url}/_emulator/knobs",
        data=json.dumps({"latency_s": latency_s}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def unlimited_policies_env(**ttl_by_operation: int) -> dict[str, str]:
    """Environment that removes every per-user and per-model rate limit and every cap on RPCs
    in flight (and optionally sets operations' cache TTLs, e.g. `analyze_video=0` turns its
    cache off)."""
    # Tables merge over the defaults: every entry is lifted by name.
    defaults = Settings()
    lifted = {"admission": None, "upstream": None}
    policies: dict[str, dict[str, object]] = {}
    for name, policy in defaults.policies.items():
        policies[name] = {"limits": {tier.value: lifted for tier in policy.limits}}
        if name in ttl_by_operation:
            policies[name]["ttl_s"] = ttl_by_operation[name]
    return {
        "VIEWBAIT_POLICIES": json.dumps(policies),
        "VIEWBAIT_LIMITER__MODELS": json.dumps(dict.fromkeys(defaults.limiter.models)),
        "VIEWBAIT_LIMITER__MODEL_DEFAULT": "null",
        **UNLIMITED_EDGE_ENV,
    }


#: Environment that lifts the read limits and the caps on RPCs in flight (a part of
#: `unlimited_policies_env`; a gateway older than these settings refuses it).
UNLIMITED_EDGE_ENV = {
    "VIEWBAIT_READ_LIMITS": json.dumps(dict.fromkeys(tier.value for tier in Tier)),
    "VIEWBAIT_CONCURRENCY__MAX_RPCS_IN_FLIGHT": str(10**9),
    "VIEWBAIT_CONCURRENCY__USER_RPCS": json.dumps(dict.fromkeys(tier.value for tier in Tier)),
    "VIEWBAIT_CONCURRENCY__USER_STREAMS": json.dumps(dict.fromkeys(tier.value for tier in Tier)),
}


def tracing_env() -> dict[str, str]:
    """Environment that turns tracing on, every span exported over OTLP/gRPC to a loopback port
    where nothing listens (so every export fails and its spans are dropped)."""
    return {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{testing_postgres.free_port()}",
        "OTEL_SERVICE_NAME": "viewbait-gateway-bench",
    }


async def _started(add: Callable[[aio.Server], None], port_file: Path) -> aio.Server:
    """A grpc.aio server with what `add` registers, started on a free loopback port, which is
    written to `port_file`."""
    server = aio.server()
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    return server


async def _serve_gateway_service(
    servicer: gateway_service_pb2_grpc.GatewayServiceServicer, port_file: Path
) -> None:
    """Serves `servicer` as GatewayService (`_started`) until the process is stopped."""
    server = await _started(
        lambda server: gateway_service_pb2_grpc.add_GatewayServiceServicer_to_server(
            servicer, server
        ),
        port_file,
    )
    await server.wait_for_termination()


async def _bare_server(response_file: Path, port_file: Path) -> None:
    response = gateway_service_pb2.AnalyzeVideoResponse.FromString(response_file.read_bytes())

    class Bare(gateway_service_pb2_grpc.GatewayServiceServicer):
        async def AnalyzeVideo(self, request: object, context: object) -> object:
            return response

    await _serve_gateway_service(Bare(), port_file)


async def _floor_server(response_file: Path, redis_url: str, port_file: Path) -> None:
    """The anchor plus what any Redis admission needs at least: per request, a share of one
    trivial EVALSHA (`return 1`) to `redis_url` through the limiter's pipe, the requests of one
    event loop iteration sent as one pipelined batch, as the limiter batches them (a lower
    bound of the gateway's `redis` configuration: no GCRA, no keys, no verdicts)."""
    from redis.asyncio import Redis

    from gateway.limiter.pipe import checked, open_pipe, pack

    response = gateway_service_pb2.AnalyzeVideoResponse.FromString(response_file.read_bytes())
    client = Redis.from_url(redis_url)
    sha = await client.script_load("return 1")
    pipe = await open_pipe(client.connection_pool)
    command = pack("EVALSHA", sha, 0)
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[None]] = []

    async def flush() -> None:
        batch = waiting[:]
        waiting.clear()
        checked(await pipe.call(command))
        for future in batch:
            if not future.done():  # its caller may have gone (h2load stops mid-call)
                future.set_result(None)

    class Floor(gateway_service_pb2_grpc.GatewayServiceServicer):
        async def AnalyzeVideo(self, request: object, context: object) -> object:
            future = loop.create_future()
            if not waiting:
                loop.call_soon(lambda: loop.create_task(flush()))
            waiting.append(future)
            await future
            return response

    await _serve_gateway_service(Floor(), port_file)


async def _otlp_sink(port_file: Path) -> None:
    """A collector's OTLP trace service that accepts every export and keeps only the count of
    spans (written to `port_file`.spans at exit): the far end of a live trace export."""
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    spans = 0

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        async def Export(self, request: Any, context: object) -> Any:
            nonlocal spans
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    spans += len(scope_spans.spans)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = await _started(
        lambda server: trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server),  # type: ignore[no-untyped-call]
        port_file,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    Path(f"{port_file}.spans").write_text(str(spans))
    await server.stop(None)


async def call_once(
    port: int, metadata: Metadata = METADATA
) -> gateway_service_pb2.AnalyzeVideoResponse:
    """One AnalyzeVideo call (e.g. to warm a cache or capture a response)."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        response: gateway_service_pb2.AnalyzeVideoResponse = await stub.AnalyzeVideo(
            REQUEST, metadata=metadata, timeout=60
        )
        return response


@contextlib.contextmanager
def client_gc_paused() -> Iterator[None]:
    """Pauses this process's garbage collector (what exists now is frozen out of it), so the
    client's own collections do not show up as the server's latency."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


async def closed_loop(
    port: int, seconds: float, concurrency: int, users: Sequence[Metadata] = (METADATA,)
) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of AnalyzeVideo calls, `concurrency` at a time,
    worker `i` calling as `users[i % len(users)]`."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        for i in range(50):  # warm up connections and caches
            await stub.AnalyzeVideo(REQUEST, metadata=users[i % len(users)])
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def worker(metadata: Metadata) -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                await stub.AnalyzeVideo(REQUEST, metadata=metadata)
                latencies.append((time.perf_counter() - started) * 1000)

        with client_gc_paused():
            started = time.perf_counter()
            await asyncio.gather(*(worker(users[i % len(users)]) for i in range(concurrency)))
            return len(latencies) / (time.perf_counter() - started), latencies


async def open_loop(
    port: int, rate: float, seconds: float, users: Sequence[Metadata] = (METADATA,)
) -> list[float]:
    """Latencies in ms of AnalyzeVideo calls sent at a fixed `rate` per second, each measured
    from its scheduled send time (so a stalled client or server is not hidden); call `i` is
    made as `users[i % len(users)]`."""
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = gateway_service_pb2_grpc.GatewayServiceStub(channel)
        for i in range(50):
            await stub.AnalyzeVideo(REQUEST, metadata=users[i % len(users)])
        latencies: list[float] = []
        loop = asyncio.get_running_loop()

        async def one(scheduled: float, metadata: Metadata) -> None:
            await stub.AnalyzeVideo(REQUEST, metadata=metadata)
            latencies.append((loop.time() - scheduled) * 1000)

        tasks = []
        with client_gc_paused():
            start = loop.time() + 0.05
            interval = 1 / rate
            for i in range(int(rate * seconds)):
                scheduled = start + i * interval
                delay = scheduled - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.ensure_future(one(scheduled, users[i % len(users)])))
            await asyncio.gather(*tasks)
        return latencies


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0 < q < 1) of `values`."""
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1]


def fresh_schema(database_url: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A new schema name for one run (the gateways create it by migrating); dropped after."""
    return testing_postgres.fresh_schema(database_url, "viewbait_bench_")


def store_env(database_url: str, schema: str) -> dict[str, str]:
    """Environment of a replica sharing PostgreSQL (migrating the schema at start)."""
    return {
        "VIEWBAIT_STORE__DATABASE_URL": database_url,
        "VIEWBAIT_STORE__SCHEMA": schema,
        "VIEWBAIT_STORE__MIGRATE_ON_START": "true",
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-server":
        asyncio.run(_bare_server(Path(sys.argv[2]), Path(sys.argv[3])))
        raise SystemExit(0)
    if len(sys.argv) == 3 and sys.argv[1] == "--otlp-sink":
        asyncio.run(_otlp_sink(Path(sys.argv[2])))
        raise SystemExit(0)
    if len(sys.argv) == 5 and sys.argv[1] == "--floor-server":
        asyncio.run(_floor_server(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])))
        raise SystemExit(0)
    raise SystemExit(
        "usage: _rpc_harness.py --bare-server RESPONSE_FILE PORT_FILE\n"
        "       _rpc_harness.py --floor-server RESPONSE_FILE REDIS_URL PORT_FILE\n"
        "       _rpc_harness.py --otlp-sink PORT_FILE"
    )
