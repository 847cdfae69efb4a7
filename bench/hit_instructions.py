"""Cache-hit unary RPC in instructions: the gateway's CPU instructions per AnalyzeVideo hit
against the bare grpc.aio server's per request, counted by valgrind's callgrind.

`bench/cache_hit.py` measures time, and on this shared 2-core VM its figures move by 10 - 30 %
between runs of the same code (the anchor alone moved between 4,000 and 6,200 requests/s in one
hour). An instruction count does not move with the machine's load: the same code, inputs and
environment count the same within about 2 %. So this is the figure to compare changes of the
hit path with; it says nothing about waiting, cache misses or the other threads' timing.

Each server runs under `valgrind --tool=callgrind --instr-atstart=no` (every thread counted, its
grpc threads included): its configuration's user entries filled, `--warm` requests sent, then
counting switched on (`callgrind_control -i on`), exactly `--requests` hits sent by h2load (one
connection, 4 streams: valgrind runs the server about 50x slower), counting off, totals dumped.
The anchor is the same bare server `bench/cache_hit.py` uses, counted the same way in the same
run. Configurations as in `bench/cache_hit.py` (`--configs`, `--set`); under valgrind a store or
Redis call can take long, so the store and limiter timeouts are raised (printed).

    python bench/hit_instructions.py [--configs lifted,embedded,redis] [--requests 2000]
        [--warm 200] [--set VIEWBAIT_X=value ...] [--keep DIR]

Needs valgrind (`apt-get install -y valgrind`) and h2load (`nghttp2-client`).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _rpc_harness import (
    DEFAULT_DATABASE_URL,
    REQUEST,
    Fleet,
    Metadata,
    call_once,
    fresh_schema,
    grpc_frame,
    user_metadata,
)
from cache_hit import configurations, h2load_args

#: Timeouts a server under valgrind needs (its calls run ~50x slower).
SLOW_ENV = {
    "VIEWBAIT_STORE__COMMAND_TIMEOUT_S": "30",
    "VIEWBAIT_LIMITER__COMMAND_TIMEOUT_S": "5",
    "VIEWBAIT_LIMITER__CONNECT_TIMEOUT_S": "5",
}


def _callgrind(out: Path) -> list[str]:
    return [
        "valgrind",
        "-q",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
    ]


def _h2load(port: int, body: Path, metadata: Metadata, requests: int) -> int:
    """Sends `requests` calls; returns how many succeeded."""
    args = h2load_args(port, body, metadata)
    extra = ["-n", str(requests), "-c", "1", "-m", "4"]
    out = subprocess.run(
        [*args[:1], *extra, *args[1:]], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("requests:"):
            return int(line.split(",")[3].split()[0])
    raise RuntimeError(f"unexpected h2load output:\n{out}")


def _count(pid: int, out: Path, port: int, body: Path, metadata: Metadata, n: int) -> float:
    """Instructions per request over `n` requests to the server `pid` runs under callgrind."""
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, check=True)
    succeeded = _h2load(port, body, metadata, n)
    subprocess.run(["callgrind_control", "-i", "off", str(pid)], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    if succeeded != n:
        raise RuntimeError(f"{n - succeeded} of {n} requests failed")
    dumps = sorted(out.parent.glob(out.name + "*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1]) / n
    raise RuntimeError(f"no totals in {dumps[-1]}")


async def main(args: argparse.Namespace) -> int:
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (valgrind, nghttp2-client)")
    overrides = {**SLOW_ENV, **dict(item.split("=", 1) for item in args.set)}
    metadata = user_metadata("bench-instructions")
    print(
        f"AnalyzeVideo cache hits in instructions (callgrind), {args.requests} requests after "
        f"{args.warm} warm ones, h2load 1 connection x 4 streams; every server also runs with "
        f"{overrides}"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name) if args.keep is None else args.keep
        tmp.mkdir(parents=True, exist_ok=True)
        body = tmp / "request.grpc"
        body.write_bytes(grpc_frame(REQUEST.SerializeToString()))
        async with Fleet(tmp) as fleet, fresh_schema(args.database_url) as schema:
            url = await fleet.emulator()
            known = configurations(args.database_url, schema, args.redis)
            # `floor` is not a gateway (`bench/cache_hit.py`): not counted here.
            chosen = [c for c in known if c.name in args.configs.split(",") and not c.floor]
            if not chosen:
                raise SystemExit(f"--configs: choose among {', '.join(c.name for c in known)}")
            hit = None
            figures: dict[str, float] = {}
            for config in chosen:
                out = tmp / f"callgrind.{config.name}"
                port = await fleet.gateway(
                    config.name,
                    url,
                    {**config.env, **overrides},
                    log_to_file=True,
                    wrapper=_callgrind(out),
                )
                await call_once(port, metadata)
                hit = await call_once(port, metadata)
                assert hit.metadata.cached, "the second call should be a cache hit"
                _h2load(port, body, metadata, args.warm)
                figures[config.name] = _count(
                    fleet.pids[port], out, port, body, metadata, args.requests
                )
            assert hit is not None
            out = tmp / "callgrind.bare"
            bare_port = await fleet.bare_server(hit, wrapper=_callgrind(out))
            _h2load(bare_port, body, metadata, args.warm)
            bare = _count(fleet.pids[bare_port], out, bare_port, body, metadata, args.requests)
    print(f"  bare grpc.aio server: {bare:,.0f} instructions a request")
    for config in chosen:
        ours = figures[config.name]
        print(
            f"  [{config.name}] {ours:,.0f} instructions a hit, {ours / bare:.2f}x bare "
            f"(gateway does: {config.differs})"
        )
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="lifted,embedded,redis")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--set", action="append", default=[], metavar="VARIABLE=VALUE")
    parser.add_argument(
        "--keep", type=Path, help="a directory to keep the callgrind files in (callgrind_annotate)"
    )
    raise SystemExit(asyncio.run(main(parser.parse_args())))
