"""Fixtures for the limiter tests: real Redis servers, a controlled clock, fresh key prefixes.

- `redis_url` (session): the shared test Redis, `GATEWAY_TEST_REDIS_URL` (default
  `redis://127.0.0.1:6379/0`, or a `redis-server` started for the session when nothing answers
  there). Tests only touch keys under their own random prefix; nothing is ever flushed there.
- `key_prefix`: a fresh random key prefix for one test.
- `redis_client`: a `redis.asyncio.Redis` on `redis_url`.
- `private_redis`: a `redis-server` of this test's own on a free port (it may be paused with
  SIGSTOP, flushed or stopped), stopped at the end of the test.
- `redis_cluster` (module): three `redis-server` masters joined into a Redis Cluster with
  `redis-cli --cluster create`, torn down at the end of the module.
- `clock`: a `Clock`, integer nanoseconds that only move when a test says so; `make_clock` builds
  one starting at a given origin (results may not depend on it: see the conformance tests).
- `make_settings`: `limiter_settings`, Settings with the same limits on every route and tier.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from gateway.config import LimiterSettings, RateLimit, RouteLimits, Settings, Tier

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
S = 1_000_000_000
#: How long a test waits for a redis-server it started to accept connections.
STARTUP_TIMEOUT_S = 20.0


class Clock:
    """A controlled clock in integer nanoseconds (whole microseconds, as Redis counts)."""

    def __init__(self, start_ns: int = 1_700_000_000 * S) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, ns: int) -> None:
        """Moves time forward by `ns` nanoseconds."""
        self.now_ns += ns


@pytest.fixture
def clock() -> Clock:
    """A controlled clock (not moving unless advanced)."""
    return Clock()


@pytest.fixture
def make_clock() -> Callable[[int], Clock]:
    """`Clock(start_ns)`, for tests that run at several clock origins."""
    return Clock


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The shared test Redis: `GATEWAY_TEST_REDIS_URL` if set (it must answer), else the default
    URL if something answers there, else a `redis-server` started for this session."""
    url = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if url is not None:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            pytest.fail(f"GATEWAY_TEST_REDIS_URL={url} does not answer: {exc}")
        yield url
        return
    try:
        redis.Redis.from_url(DEFAULT_REDIS_URL, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        server = start_redis(tmp_path_factory.mktemp("session-redis"))
        try:
            yield server.url
        finally:
            server.stop()
        return
    yield DEFAULT_REDIS_URL


@pytest.fixture
def key_prefix() -> str:
    """Keys of this test live under this prefix only."""
    return f"vbtest:{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    """An asyncio client of the shared test Redis."""
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def limiter_settings(
    prefix: str,
    *,
    admission: RateLimit | None = None,
    upstream: RateLimit | None = None,
    models: dict[str, RateLimit] | None = None,
    **limiter: object,
) -> Settings:
    """Settings whose every route and tier has these limits (None: unlimited), every model
    `models[name]` (unlisted models unlimited), and these `LimiterSettings` fields."""
    defaults = Settings()
    limits = {tier: RouteLimits(admission=admission, upstream=upstream) for tier in Tier}
    policies = {
        name: policy.model_copy(update={"limits": limits})
        for name, policy in defaults.policies.items()
    }
    return Settings(
        policies=policies,
        limiter=LimiterSettings(
            key_prefix=prefix, models=models or {}, model_default=None, **limiter
        ),
    )


@pytest.fixture
def make_settings() -> Callable[..., Settings]:
    """`limiter_settings`, for tests (conftest modules are not imported by tests)."""
    return limiter_settings


# --- redis-server processes of the tests' own -----------------------------------------------


def _free_port(*, with_bus: bool = False) -> int:
    """A port free on 127.0.0.1 (and, for Cluster nodes, its bus port + 10000 too)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair found")


@dataclass
class RedisProcess:
    """A `redis-server` this test run started."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        """Its redis:// URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT."""
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stops it (resuming it first if paused)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_redis(workdir: Path, *extra: str, cluster_bus: bool = False) -> RedisProcess:
    """Starts `redis-server` on a free loopback port without persistence; waits until it answers."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH")
    port = _free_port(with_bus=cluster_bus)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"redis-{port}.log"
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    args += ["--save", "", "--appendonly", "no", "--logfile", str(log), *extra]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    server = RedisProcess(process, port, log)
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    give_up = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None or time.monotonic() > give_up:
                server.stop()
                text = log.read_text(errors="replace") if log.exists() else ""
                pytest.fail(f"redis-server on port {port} did not start:\n{text}")
            time.sleep(0.05)
        finally:
            client.close()
    return server


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A standalone redis-server of this test's own."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisCluster:
    """A running local Redis Cluster of three masters."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        """A redis:// URL of one node (clients discover the others)."""
        return self.nodes[0].url


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """Three masters, all 16384 slots assigned, no replicas."""
    workdir = tmp_path_factory.mktemp("redis-cluster")
    nodes: list[RedisProcess] = []
    try:
        for index in range(3):
            nodes.append(
                start_redis(
                    workdir / f"node-{index}",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(workdir / f"node-{index}" / "nodes.conf"),
                    "--cluster-node-timeout",
                    "2000",
                    cluster_bus=True,
                )
            )
        created = subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            pytest.fail(
                f"redis-cli --cluster create failed:\n{created.stdout!r}\n{created.stderr!r}"
            )
        give_up = time.monotonic() + STARTUP_TIMEOUT_S
        for node in nodes:
            client = redis.Redis(port=node.port)
            try:
                while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    if time.monotonic() > give_up:
                        pytest.fail("the local Redis Cluster did not reach cluster_state:ok")
                    time.sleep(0.1)
            finally:
                client.close()
        yield RedisCluster(nodes)
    finally:
        for node in nodes:
            node.stop()
