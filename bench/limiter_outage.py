"""The `local` failure mode with Redis stopped: how much a fleet of 3 replicas admits.

Three gateway replicas (`python -m gateway serve`, separate processes, each its own working
directory and settings) share an admission limit of N per hour for one user on a throwaway
`redis-server` this script starts on a free port. Then Redis is stopped and 3 x 2N concurrent
AnalyzeVideo calls go out, spread over the replicas.

- ours: the replicas registered their heartbeats while Redis answered, so each enforces N/3.
- anchor (the static count, what every fleet did before the live count): replicas that never
  reached Redis with `VIEWBAIT_LIMITER__REPLICAS` left at its default of 1, so each enforces N.

    python bench/limiter_outage.py [--limit 60]

Target: ours admits the limit (each replica's share rounds down: 3 x floor(N/3)), not 3N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))

from limiter_redis import _admitted, _settings, _spawn_replica

from gateway.config import RateLimit
from gateway.limiter.fleet import replicas_key

REPLICAS = 3


def _start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    give_up = time.monotonic() + 20
    while True:
        try:
            client.ping()
            return process, port
        except redis.ConnectionError:
            if time.monotonic() > give_up:
                process.kill()
                raise
            time.sleep(0.05)
        finally:
            client.close()


async def _fleet_admits(
    workdir: Path, limit: int, *, registered_first: bool
) -> tuple[int, list[str]]:
    """Admitted calls of a fleet whose Redis is stopped (after the replicas registered, or
    before they started), and the replicas' limiter log lines."""
    redis_process, port = _start_redis(workdir)
    url = f"redis://127.0.0.1:{port}/0"
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    settings = _settings(prefix, url, RateLimit(rate=limit, period_s=3600, burst=limit))
    env = {
        "VIEWBAIT_POLICIES": json.dumps(
            {k: v.model_dump(mode="json") for k, v in settings.policies.items()}
        ),
        "VIEWBAIT_LIMITER__REDIS_URL": url,
        "VIEWBAIT_LIMITER__KEY_PREFIX": prefix,
        "VIEWBAIT_LIMITER__HEARTBEAT_INTERVAL_S": "0.2",
    }
    if not registered_first:
        redis_process.terminate()
        redis_process.wait()
    replicas = [_spawn_replica(workdir / f"replica-{i}", env) for i in range(REPLICAS)]
    try:
        if registered_first:
            client = redis.Redis(host="127.0.0.1", port=port)
            give_up = time.monotonic() + 30
            while client.zcard(replicas_key(prefix)) < REPLICAS:
                if time.monotonic() > give_up:
                    raise RuntimeError("the replicas never registered")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # every replica has read the full count by now
            client.close()
            redis_process.terminate()
            redis_process.wait()
        admitted = await _admitted([p for _, p in replicas], 2 * limit, "outage-user")
    finally:
        for process, _ in replicas:
            process.send_signal(signal.SIGTERM)
        for process, _ in replicas:
            process.wait(timeout=30)
        if redis_process.poll() is None:
            redis_process.kill()
    lines = []
    for i in range(REPLICAS):
        log = (workdir / f"replica-{i}" / "gateway.log").read_text(errors="replace")
        lines += [
            f"replica-{i}: {line[:160]}" for line in log.splitlines() if "rate limiter:" in line
        ]
    return admitted, lines


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args()
    limit = args.limit
    with tempfile.TemporaryDirectory() as tmp:
        ours, lines = await _fleet_admits(Path(tmp) / "live", limit, registered_first=True)
        anchor, _ = await _fleet_admits(Path(tmp) / "static", limit, registered_first=False)
    for line in lines:
        print(f"    {line}")
    expected = REPLICAS * (limit // REPLICAS)
    met = ours == expected
    print(
        f"3 replicas, Redis stopped, limit {limit}/h, {REPLICAS * 2 * limit} calls: admitted "
        f"{ours} with the live replica count, {anchor} with the static count of 1 (anchor); "
        f"ratio to the limit {ours / limit:.2f}x vs {anchor / limit:.2f}x   "
        f"target {expected}: {'met' if met else 'MISSED'}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
