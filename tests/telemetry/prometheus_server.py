"""A real Prometheus server (Debian's `prometheus` package) for the metrics tests: started on a
free loopback port with a configuration and a storage directory of its own, scraping the
targets a test names, and read back through its HTTP API (`/api/v1/query`).

`make install` installs the package when `promtool` is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from gateway.testing.postgres import free_port

#: How often Prometheus scrapes in these tests (its durations accept milliseconds).
SCRAPE_INTERVAL = "500ms"
#: How long a test waits for Prometheus to start, or to see what it waits for.
PATIENCE_S = 60.0


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; fails naming the fix when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path="/usr/bin")
    if path is None:
        raise AssertionError(
            f"{name} is not installed: run `make install` (it installs Debian's prometheus "
            "package), or `apt-get install prometheus`"
        )
    return path


def promtool_check_metrics(exposition: bytes) -> subprocess.CompletedProcess[str]:
    """`promtool check metrics` on an exposition (exit status 0 and no output: clean)."""
    return subprocess.run(
        [binary("promtool"), "check", "metrics"],
        input=exposition.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class PrometheusServer:
    """A running Prometheus scraping `targets` (job name -> host:port) every `SCRAPE_INTERVAL`."""

    def __init__(self, workdir: Path, targets: Mapping[str, str]) -> None:
        self._workdir = workdir
        self._targets = dict(targets)
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        jobs = "".join(
            f"  - job_name: {name}\n    static_configs:\n      - targets: ['{target}']\n"
            for name, target in self._targets.items()
        )
        return (
            "global:\n"
            f"  scrape_interval: {SCRAPE_INTERVAL}\n"
            f"  scrape_timeout: {SCRAPE_INTERVAL}\n"
            "scrape_configs:\n" + jobs
        )

    async def start(self) -> None:
        """Starts Prometheus and waits until it reports ready."""
        self._process = self._spawn()
        self._session = aiohttp.ClientSession()
        await self._until(self._ready, "Prometheus to report ready")

    def _spawn(self) -> subprocess.Popen[bytes]:
        """`prometheus` with this server's configuration, storage and address."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "prometheus.yml"
        config.write_text(self._config())
        with (self._workdir / "prometheus.log").open("wb") as log:
            return subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self._workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def _ready(self) -> bool:
        assert self._session is not None and self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log()}")
        try:
            async with self._session.get(f"{self.url}/-/ready") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    def log(self) -> str:
        """What Prometheus wrote (for failure messages)."""
        return (self._workdir / "prometheus.log").read_text(errors="replace")

    async def stop(self) -> None:
        """Stops Prometheus."""
        if self._session is not None:
            await self._session.close()
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 30)

    async def query(self, expr: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """An instant query, at Prometheus's now or at `at`: each series' labels and value."""
        assert self._session is not None
        params = {"query": expr} if at is None else {"query": expr, "time": repr(at)}
        async with self._session.get(f"{self.url}/api/v1/query", params=params) as r:
            body: dict[str, Any] = await r.json()
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {body}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    async def value(self, expr: str, at: float | None = None) -> float | None:
        """The one value `expr` yields now, or at `at` (None: no series)."""
        results = await self.query(expr, at)
        if not results:
            return None
        if len(results) > 1:
            raise AssertionError(f"{expr!r} yields {len(results)} series: {results}")
        return results[0][1]

    async def now(self) -> float:
        """Prometheus's own clock (`time()`), to compare its scrape timestamps with."""
        value = await self.value("time()")
        assert value is not None
        return value

    async def scraped_after(self, instant: float) -> float:
        """Waits until every target has been scraped (successfully) after `instant`, a reading
        of `now()`, and returns a time to query at: queries at it see everything the targets
        had counted at `instant`, whatever later scrapes do (one that times out on a busy
        machine would mark every series stale)."""

        async def done() -> bool:
            for job in self._targets:
                # The time of the latest scrape (`timestamp` of a plain selector: of any other
                # expression it is the query's own time), and whether it succeeded.
                stamp = await self.value(f'timestamp(up{{job="{job}"}})')
                if stamp is None or stamp <= instant or await self.value(f'up{{job="{job}"}}') != 1:
                    return False
            return True

        await self._until(done, f"a scrape of {sorted(self._targets)} after {instant}")
        return await self.now()

    async def eventually_equals(self, expr: str, expected: float) -> None:
        """Waits until `expr` yields `expected` (for gauges refreshed on their own schedule)."""

        async def equal() -> bool:
            return await self.value(expr) == expected

        await self._until(equal, f"{expr} == {expected}")

    async def _until(self, condition: Callable[[], Awaitable[bool]], what: str) -> None:
        """Polls `condition` (bounded: only a hang fails, never a slow machine)."""
        give_up = asyncio.get_running_loop().time() + PATIENCE_S
        while not await condition():
            if asyncio.get_running_loop().time() > give_up:
                raise AssertionError(f"gave up waiting for {what}\n{self.log()}")
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def prometheus(workdir: Path, targets: Mapping[str, str]) -> AsyncIterator[PrometheusServer]:
    """A started `PrometheusServer`, stopped when the block ends."""
    server = PrometheusServer(workdir, targets)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
