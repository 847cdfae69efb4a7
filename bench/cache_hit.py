"""Cache-hit unary RPC: the gateway answering AnalyzeVideo from its result cache vs a bare
grpc.aio server answering the same response message from memory (the anchor: the physical limit
of this stack), side by side in one run, for every gateway configuration a deployment uses.

Gateway configurations (`--configs`, all by default), each against the same bare server:

- `lifted`: embedded store, the per-user limits lifted, log level WARNING (how this benchmark
  ran before: the floor of the request path, not what a deployment runs).
- `embedded`: admission through the embedded (native) limiter, log level INFO (one JSON line
  per RPC, to a file), PostgreSQL store with the in-process hot copy in front.
- `redis`: the same with admission through the shared Redis limiter (a deployment's
  configuration; the targets below apply to it).
- `observed`: `redis` with Prometheus metrics on (scraped every `--scrape-interval` s) and
  OpenTelemetry tracing on, its OTLP endpoint a loopback port where no collector listens.
- `metered`, `traced` (only when named in `--configs`): `observed`'s metrics and its tracing
  apart, to tell what each costs.
- `collected` (only when named): `observed` with its spans exported to a live OTLP receiver (a
  process of the run's own that accepts every export), as production pays for tracing.
- `floor` (only when named): not the gateway, but the anchor plus a share of one trivial
  EVALSHA per request through the limiter's pipe, the requests of one loop iteration batched:
  what any exact Redis admission costs at least on this machine, measured against the same
  targets as `redis`.

Admission limits are high (a million per second per user), so every request is allowed and each
one is a real decision (a GCRA update, in Redis for `redis` and `observed`). Calls come from
`--users` distinct users (so admission keys are not one hot key); each user's cache entry is
filled before measuring (AnalyzeVideo's cache is per user).

Load: h2load (nghttp2's C load generator, so the client is not the bottleneck) sends gRPC unary
calls as HTTP/2 POSTs of the length-prefixed request, one h2load process per user (its metadata
as headers). A gRPC error is still HTTP 200, so the responses' DATA bytes are checked against
the full answer's, and the RPCs the gateway's log (at INFO) shows not ending OK are counted:
calls still in flight when an h2load run ends are reset (CANCELLED); any other code makes the
run invalid. Install h2load with `apt-get install -y --no-install-recommends nghttp2-client`
(benchmarks are not run by CI). The Python grpc.aio client drives
the same closed loop as a second view; it shares the 2 cores and saturates first.

Per configuration it prints, gateway vs bare server, measured in alternating rounds (3 of
`--seconds` each) so machine load hits both alike:
- closed loop at `--concurrency` with h2load: best round's requests/s and the ratio, and the
  server process's own CPU time per request (user + system, from /proc; it moves less with the
  machine's load than requests/s do);
- open loop at `--rate` requests/s with h2load (`--rps`): p50/p99 of all rounds pooled and the
  p99 difference (h2load measures each request from when it was sent);
- closed loop with the Python client: best round's requests/s and the ratio.

Targets (`redis`): closed loop >= 0.8x the bare server's requests/s with per-request server CPU
<= 1.25x bare; open loop p99 <= bare p99 + 1 ms. (`observed`): closed loop >= 0.7x bare.

    python bench/cache_hit.py [--seconds 4] [--rate 1000] [--concurrency 64] [--users 16]
        [--configs lifted,embedded,redis,observed] [--measure closed,open,python]
        [--database-url URL] [--redis URL]
        [--scrape-interval 1] [--set VIEWBAIT_X=value ...]

The load average before and after is printed: figures from a busy machine are not comparable to
a quiet one's. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    DEFAULT_DATABASE_URL,
    REQUEST,
    Fleet,
    Metadata,
    call_once,
    closed_loop,
    fresh_schema,
    grpc_frame,
    percentile,
    store_env,
    tracing_env,
    unlimited_policies_env,
    user_metadata,
)

from gateway.config import Settings
from gateway.testing.postgres import free_port

#: Rounds of each measurement, alternating between the gateway and the anchor.
ROUNDS = 3
METHOD = "/viewbait.ai.v1.GatewayService/AnalyzeVideo"
#: Admission limit of every tier in the configurations that check it: every request allowed,
#: every one a real decision.
ROOMY = {"rate": 1_000_000, "period_s": 1, "burst": 1_000_000}
#: The measurements of a configuration, in the order they run (`--measure` picks some).
MEASURES = ("closed", "open", "python")
#: Streams per h2load connection in the open loop: enough that it never waits for a free one.
OPEN_LOOP_STREAMS = 100


@dataclass
class Configuration:
    """One gateway of the run: its settings, and what it does that the bare server does not."""

    name: str
    env: dict[str, str]
    differs: str
    #: (closed-loop ratio, CPU per request ratio, p99 difference in ms) it must meet, or None.
    throughput_target: float | None = None
    cpu_target: float | None = None
    p99_target_ms: float | None = None
    metrics_port: int | None = None
    #: Not a gateway: the anchor plus a batched trivial EVALSHA per request (`--configs floor`).
    floor: bool = False
    #: Its spans go to a live OTLP receiver of the run's own (`--configs collected`).
    collector: bool = False


def admission_env() -> dict[str, str]:
    """Policies whose admission limit is ROOMY for every tier (the upstream limits lifted: a
    hit never reaches them)."""
    defaults = Settings()
    policies = {
        name: {
            "limits": {tier.value: {"admission": ROOMY, "upstream": None} for tier in policy.limits}
        }
        for name, policy in defaults.policies.items()
    }
    return {
        "VIEWBAIT_POLICIES": json.dumps(policies),
        "VIEWBAIT_LIMITER__MODELS": json.dumps(dict.fromkeys(defaults.limiter.models)),
        "VIEWBAIT_LIMITER__MODEL_DEFAULT": "null",
    }


def configurations(database_url: str, schema: str, redis_url: str) -> list[Configuration]:
    """Every configuration the benchmark knows, in the order they run."""
    postgres = store_env(database_url, schema)
    info = {"VIEWBAIT_SERVER__LOG_LEVEL": "INFO"}
    redis = {
        "VIEWBAIT_LIMITER__REDIS_URL": redis_url,
        "VIEWBAIT_LIMITER__KEY_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
    }
    production = (
        "authentication, in-flight caps, validation, admission ({}), cache key, hot-copy "
        "lookup (PostgreSQL store behind it), savings record in the usage ledger (folded per "
        "second), one INFO log line per RPC"
    )
    metrics_port = free_port()
    collected_metrics_port = free_port()  # its gateway runs beside `observed`'s
    return [
        Configuration(
            "lifted",
            unlimited_policies_env(),
            "authentication, validation, cache key, hot-copy lookup (embedded store), savings "
            "row; no admission limit, no in-flight caps, log level WARNING",
        ),
        Configuration(
            "embedded",
            {**admission_env(), **info, **postgres},
            production.format("embedded native limiter"),
        ),
        Configuration(
            "redis",
            {**admission_env(), **info, **postgres, **redis},
            production.format("Redis limiter: one EVALSHA per request, batched"),
            throughput_target=0.8,
            cpu_target=1.25,
            p99_target_ms=1.0,
        ),
        Configuration(
            "observed",
            {
                **admission_env(),
                **info,
                **postgres,
                **redis,
                **tracing_env(),
                "VIEWBAIT_METRICS__PORT": str(metrics_port),
            },
            production.format("Redis limiter")
            + "; Prometheus metrics (scraped while measured) and tracing on, no collector "
            "reachable",
            throughput_target=0.7,
            metrics_port=metrics_port,
        ),
        # Not run by default: `observed`'s two parts apart, to tell their costs.
        Configuration(
            "metered",
            {
                **admission_env(),
                **info,
                **postgres,
                **redis,
                "VIEWBAIT_METRICS__PORT": str(metrics_port),
            },
            production.format("Redis limiter") + "; Prometheus metrics (scraped while measured)",
            metrics_port=metrics_port,
        ),
        Configuration(
            "traced",
            {**admission_env(), **info, **postgres, **redis, **tracing_env()},
            production.format("Redis limiter") + "; tracing on, no collector reachable",
        ),
        # Not run by default: `observed` with a collector that takes every span.
        Configuration(
            "collected",
            {
                **admission_env(),
                **info,
                **postgres,
                **redis,
                **tracing_env(),
                "VIEWBAIT_METRICS__PORT": str(collected_metrics_port),
            },
            production.format("Redis limiter")
            + "; Prometheus metrics (scraped while measured) and tracing on, every span "
            "exported to a live OTLP receiver (another process)",
            metrics_port=collected_metrics_port,
            collector=True,
        ),
        # Not run by default, and not the gateway: what Redis admission costs at least.
        Configuration(
            "floor",
            {},
            "NOT the gateway: the bare server plus, per request, a share of one trivial "
            "EVALSHA (`return 1`) through the limiter's pipe, the requests of one loop "
            "iteration batched (a lower bound of `redis`: any exact shared limit needs a round "
            "trip to Redis)",
            throughput_target=0.8,
            cpu_target=1.25,
            p99_target_ms=1.0,
            floor=True,
        ),
    ]


# --- h2load ---------------------------------------------------------------------------------


@dataclass
class Load:
    """What h2load processes measured together."""

    succeeded: int = 0
    rps: float = 0.0
    data_bytes: int = 0
    #: Per-request latencies in ms (open loop only).
    latencies: list[float] = field(default_factory=list)


def h2load_args(port: int, body: Path, metadata: Metadata) -> list[str]:
    headers = [("content-type", "application/grpc"), ("te", "trailers"), *metadata]
    args = ["h2load", "-d", str(body)]
    for key, value in headers:
        args += ["-H", f"{key}: {value}"]
    return [*args, f"http://127.0.0.1:{port}{METHOD}"]


def _parse(output: str) -> tuple[int, float, int]:
    """(succeeded, requests/s, DATA bytes received) from h2load's summary."""
    succeeded = re.search(r"(\d+) succeeded", output)
    rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", output)
    data = re.search(r"\((\d+)\) data", output)
    if succeeded is None or rps is None or data is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    return int(succeeded.group(1)), float(rps.group(1)), int(data.group(1))


async def h2load(
    port: int,
    body: Path,
    users: Sequence[Metadata],
    seconds: float,
    *,
    streams: int,
    rps: float | None = None,
    log_dir: Path | None = None,
) -> Load:
    """One h2load process per user, one connection each with up to `streams` calls in flight
    (closed loop), or sending `rps` calls per second each (open loop, latencies logged to
    `log_dir`)."""
    processes = []
    logs = []
    for i, metadata in enumerate(users):
        args = h2load_args(port, body, metadata)
        extra = ["-c", "1", "-m", str(streams), "-D", f"{seconds:g}"]
        if rps is not None:
            assert log_dir is not None
            logs.append(log_dir / f"h2load-{i}.tsv")
            logs[-1].unlink(missing_ok=True)
            extra += ["--rps", f"{rps:g}", f"--log-file={logs[-1]}"]
        processes.append(
            await asyncio.create_subprocess_exec(
                *args[:1],
                *extra,
                *args[1:],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        )
    load = Load()
    for process in processes:
        stdout, _ = await process.communicate()
        succeeded, rate, data = _parse(stdout.decode())
        load.succeeded += succeeded
        load.rps += rate
        load.data_bytes += data
    for log in logs:
        for line in log.read_text().splitlines():
            _, status, micros = line.split("\t")[:3]
            if status == "200":
                load.latencies.append(int(micros) / 1000)
    return load


# --- measuring ------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Side:
    """One server of a comparison: its best closed-loop rounds, its CPU time per request over
    all h2load closed-loop rounds, its open-loop latencies pooled."""

    def __init__(self, port: int, pid: int, frame_bytes: int) -> None:
        self.port = port
        self._pid = pid
        self._frame_bytes = frame_bytes
        self.rps = 0.0
        self.python_rps = 0.0
        self._cpu_s = 0.0
        self._requests = 0
        self.open: list[float] = []
        #: Responses that did not carry the full answer (errors: trailers only).
        self.short = 0

    def _check(self, load: Load) -> None:
        self.short += max(0, load.succeeded - load.data_bytes // self._frame_bytes)

    async def closed(
        self, body: Path, users: Sequence[Metadata], seconds: float, concurrency: int
    ) -> None:
        cpu = _cpu_seconds(self._pid)
        load = await h2load(
            self.port, body, users, seconds, streams=max(1, concurrency // len(users))
        )
        self._cpu_s += _cpu_seconds(self._pid) - cpu
        self._requests += load.succeeded
        self.rps = max(self.rps, load.rps)
        self._check(load)

    async def open_loop(
        self, body: Path, users: Sequence[Metadata], seconds: float, rate: float, logs: Path
    ) -> None:
        load = await h2load(
            self.port,
            body,
            users,
            seconds,
            streams=OPEN_LOOP_STREAMS,
            rps=rate / len(users),
            log_dir=logs,
        )
        self.open += load.latencies
        self._check(load)

    async def python(self, users: Sequence[Metadata], seconds: float, concurrency: int) -> None:
        rps, _ = await closed_loop(self.port, seconds, concurrency, users)
        self.python_rps = max(self.python_rps, rps)

    @property
    def cpu_us(self) -> float:
        return self._cpu_s / max(1, self._requests) * 1e6


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


@dataclass
class Run:
    """What every configuration is measured with."""

    body: Path
    users: Sequence[Metadata]
    seconds: float
    rate: float
    concurrency: int
    logs: Path
    #: Which of the three measurements run (`--measure`).
    measures: Sequence[str] = MEASURES


async def compare(run: Run, config: Configuration, ours: Side, bare: Side) -> bool:
    """Measures one configuration against the bare server and prints it; returns whether its
    targets are met."""
    print(f"\n[{config.name}] gateway does: {config.differs}")
    print("  bare server does: parse the request, answer one prebuilt response message")
    met = True
    if "closed" in run.measures:
        met &= await _closed(run, config, ours, bare)
    if "open" in run.measures:
        met &= await _open(run, config, ours, bare)
    if "python" in run.measures:
        await _python(run, ours, bare)
    for name, side in (("gateway", ours), ("bare", bare)):
        if side.short:
            print(
                f"  {side.short} responses of the {name} carried no answer: calls still in "
                "flight when an h2load run ends are reset (CANCELLED in the gateway log); "
                "any other code there is an error"
            )
    return met


async def _closed(run: Run, config: Configuration, ours: Side, bare: Side) -> bool:
    for _ in range(ROUNDS):
        for side in (ours, bare):
            await side.closed(run.body, run.users, run.seconds, run.concurrency)
    ratio = ours.rps / bare.rps
    cpu_ratio = ours.cpu_us / bare.cpu_us
    met = True
    line = (
        f"  h2load closed loop, concurrency {run.concurrency}: gateway {ours.rps:,.0f} req/s, "
        f"bare {bare.rps:,.0f} req/s, ratio {ratio:.2f}x"
    )
    if config.throughput_target is not None:
        throughput_met = ratio >= config.throughput_target
        met &= throughput_met
        line += f"  target >= {config.throughput_target}x: {_verdict(throughput_met)}"
    print(line)
    line = (
        f"  server CPU per request: gateway {ours.cpu_us:.0f} µs, bare {bare.cpu_us:.0f} µs, "
        f"ratio {cpu_ratio:.2f}x"
    )
    if config.cpu_target is not None:
        met &= cpu_ratio <= config.cpu_target
        line += f"  target <= {config.cpu_target}x: {_verdict(cpu_ratio <= config.cpu_target)}"
    print(line)
    return met


async def _open(run: Run, config: Configuration, ours: Side, bare: Side) -> bool:
    for _ in range(ROUNDS):
        for side in (ours, bare):
            await side.open_loop(run.body, run.users, run.seconds, run.rate, run.logs)
    ours_p99, bare_p99 = percentile(ours.open, 0.99), percentile(bare.open, 0.99)
    met = True
    line = (
        f"  h2load open loop, {run.rate:,.0f} req/s: gateway p50 "
        f"{percentile(ours.open, 0.5):.2f} ms p99 {ours_p99:.2f} ms; bare p50 "
        f"{percentile(bare.open, 0.5):.2f} ms p99 {bare_p99:.2f} ms; p99 difference "
        f"{ours_p99 - bare_p99:+.2f} ms"
    )
    if config.p99_target_ms is not None:
        latency_met = ours_p99 <= bare_p99 + config.p99_target_ms
        met &= latency_met
        line += f"  target <= +{config.p99_target_ms:g} ms: {_verdict(latency_met)}"
    print(line)
    return met


async def _python(run: Run, ours: Side, bare: Side) -> None:
    for _ in range(ROUNDS - 1):
        for side in (ours, bare):
            await side.python(run.users, run.seconds, run.concurrency)
    print(
        f"  Python grpc.aio client, closed loop, concurrency {run.concurrency}: gateway "
        f"{ours.python_rps:,.0f} req/s, bare {bare.python_rps:,.0f} req/s, ratio "
        f"{ours.python_rps / bare.python_rps:.2f}x (the client saturates first)"
    )


@contextlib.asynccontextmanager
async def _scraping(port: int | None, interval_s: float) -> AsyncIterator[list[int]]:
    """GET /metrics of `port` every `interval_s` while the block runs (nothing for None); yields
    the sizes of the expositions fetched."""
    sizes: list[int] = []
    if port is None:
        yield sizes
        return

    async def scrape(session: aiohttp.ClientSession) -> None:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                sizes.append(len(await response.read()))
            await asyncio.sleep(interval_s)

    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(scrape(session))
        try:
            yield sizes
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _notable_lines(log: Path) -> dict[str, int]:
    """The gateway log's warnings and errors, and the limiter's lines (Redis calls that missed
    their deadline, mode changes), by message, with how many of each."""
    seen: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            level, logger = entry.get("level"), str(entry.get("logger"))
            if level in ("warning", "error", "critical") or (
                level == "info" and logger.startswith("gateway.limiter")
            ):
                message = f"{entry.get('level')}: {entry['msg'][:160]}"
                seen[message] = seen.get(message, 0) + 1
    return seen


def _non_ok_codes(log: Path) -> dict[str, int]:
    """How many RPCs of the gateway's log (at INFO, one line per RPC) ended with each status
    other than OK."""
    codes: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            code = json.loads(line).get("rpc_code")
            if code is not None and code != "OK":
                codes[code] = codes.get(code, 0) + 1
    return codes


def _load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


async def main(args: argparse.Namespace) -> int:
    if shutil.which("h2load") is None:
        raise SystemExit(
            "h2load is missing: apt-get install -y --no-install-recommends nghttp2-client"
        )
    users = [user_metadata(f"bench-user-{i}") for i in range(args.users)]
    overrides = dict(item.split("=", 1) for item in args.set)
    if overrides:
        print(f"every gateway configuration also runs with {overrides}")
    print(
        f"AnalyzeVideo cache hits, gateway vs bare grpc.aio, {ROUNDS} alternating rounds of "
        f"{args.seconds:g} s, {args.users} users, cores {os.cpu_count()}, {_load()}"
    )
    met = True
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with Fleet(tmp) as fleet, fresh_schema(args.database_url) as schema:
            url = await fleet.emulator()
            known = configurations(args.database_url, schema, args.redis)
            for config in known:
                config.env.update(overrides)
            chosen = [c for c in known if c.name in args.configs.split(",")]
            if not chosen:
                raise SystemExit(f"--configs: choose among {', '.join(c.name for c in known)}")
            ports = {}
            hit = None
            spans_file = None
            if any(config.collector for config in chosen):
                sink_port, spans_file = await fleet.otlp_sink()
                for config in chosen:
                    if config.collector:
                        config.env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = (
                            f"http://127.0.0.1:{sink_port}"
                        )
            for config in chosen:
                if config.floor:
                    continue
                port = await fleet.gateway(config.name, url, config.env, log_to_file=True)
                for metadata in users:
                    await call_once(port, metadata)  # the miss that fills this user's entry
                    hit = await call_once(port, metadata)
                    assert hit.metadata.cached, "the second call should be a cache hit"
                ports[config.name] = port
            if hit is None:  # only the floor: a gateway's answer for the servers to send
                port = await fleet.gateway("answer", url, unlimited_policies_env())
                await call_once(port, users[0])
                hit = await call_once(port, users[0])
            for config in chosen:
                if config.floor:
                    ports[config.name] = await fleet.floor_server(hit, args.redis)
            bare_port = await fleet.bare_server(hit)
            body = tmp / "request.grpc"
            body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
            frame = 5 + hit.ByteSize()
            measures = args.measure.split(",")
            if not set(measures) <= set(MEASURES):
                raise SystemExit(f"--measure: choose among {', '.join(MEASURES)}")
            run = Run(body, users, args.seconds, args.rate, args.concurrency, tmp, measures)
            for config in chosen:
                port = ports[config.name]
                ours = Side(port, fleet.pids[port], frame)
                # A fresh anchor record per configuration, the same bare process.
                bare = Side(bare_port, fleet.pids[bare_port], frame)
                async with _scraping(config.metrics_port, args.scrape_interval) as sizes:
                    met = await compare(run, config, ours, bare) and met
                if sizes:
                    print(
                        f"  /metrics scraped {len(sizes)} times while measured (every "
                        f"{args.scrape_interval:g} s), {max(sizes):,} bytes at most"
                    )
                if config.floor:
                    print(f"  ({_load()})")
                    continue
                notable = _notable_lines(tmp / config.name / "gateway.log")
                for message, count in notable.items():
                    print(f"  gateway log: {count} x {message}")
                refused = _non_ok_codes(tmp / config.name / "gateway.log")
                if refused:
                    print(f"  gateway log, RPCs that did not end OK: {refused}")
                if set(refused) - {"CANCELLED"}:
                    print("  INVALID: the gateway answered errors (its log says why)")
                    met = False
                print(f"  ({_load()})")
        if spans_file is not None:
            print(f"the OTLP receiver took {int(spans_file.read_text()):,} spans in all")
    return 0 if met else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--configs", default="lifted,embedded,redis,observed")
    parser.add_argument(
        "--measure",
        default=",".join(MEASURES),
        help="which measurements to run (closed: h2load closed loop and server CPU; open: "
        "h2load at --rate; python: the Python client), e.g. `--measure open` to repeat the "
        "open loop alone",
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VARIABLE=VALUE",
        help="a setting every gateway configuration also runs with (to take one apart)",
    )
    raise SystemExit(asyncio.run(main(parser.parse_args())))
