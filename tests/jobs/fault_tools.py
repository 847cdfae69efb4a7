"""Tools of the job fault tests (tests/jobs/test_faults.py, tests/jobs/test_fencing.py).

- `UpstreamRecorder`: reverse proxies in front of the Gemini emulator, one per replica, that
  log every upstream call: which replica made it, for which video (hence which job), when it
  reached the proxy and when its answer was ready (or its caller went away). With the lease
  history below, that timeline shows whether a replica called Gemini for a job while another
  replica's lease on it was valid, and whether retries waited as long as Gemini asked.
- `JobAudit`: a trigger that records every version of every job row (status, lease
  holder and end) with the database's clock, and the leases ("tenures") read back from it: who
  held a job from when to when, and whether a lapsed lease was what ended it.
- `audited_schema` (the test's schema migrated, its job rows audited) and `worker_env` (the
  environment of a `viewbait-gateway worker` process on it).

A PostgreSQL server of a test's own, which a test may stop and start, is
`gateway.testing.postgres.throwaway_postgres` (shared with the benchmarks).
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
from aiohttp import web

from gateway.config import StoreSettings
from gateway.store.base import LEASE_EXPIRED_MESSAGE
from gateway.store.migrate import quote_ident
from gateway.store.postgres import run_migrations
from tests.fixtures.stores import DATABASE_URL, store_settings

#: The AnalyzeVideo prompt carries the video's watch URL; these tests give each job its own video.
_VIDEO = re.compile(rb"watch\?v=([A-Za-z0-9_-]{11})")
#: Headers that describe one connection, not the message: never forwarded.
_HOP_BY_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive"})


@dataclass
class UpstreamCall:
    """One request that reached the emulator through a recording proxy."""

    #: The name of the proxy (one per replica) it came through.
    via: str
    #: The video its request named (None if it named none).
    video_id: str | None
    #: Wall-clock time (`time.time()`, the database's clock too) it reached the proxy.
    start: float
    #: Wall-clock time its answer was ready (before it was sent back), or its caller went
    #: away; None while in flight.
    end: float | None = None
    #: The HTTP status of the answer; None while in flight or when the emulator gave none.
    status: int | None = None


class UpstreamRecorder:
    """Reverse proxies to one upstream (the emulator), each logging the model calls made through
    it (other requests, such as the gateway's credentials probe, pass through unlogged)."""

    def __init__(self, upstream_url: str) -> None:
        self._upstream = upstream_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        #: Every call so far, in the order they arrived.
        self.calls: list[UpstreamCall] = []

    async def proxy(self, via: str) -> str:
        """Starts a proxy on a free loopback port whose calls are logged as made `via` it;
        returns its base URL (what a replica takes as its Gemini base URL)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None)
            )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", functools.partial(self._forward, via))
        # A caller that goes away (killed, or cancelling its call) ends the call at once.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def of(self, video_id: str) -> list[UpstreamCall]:
        """The calls for `video_id`, in the order they started."""
        return sorted((c for c in self.calls if c.video_id == video_id), key=lambda c: c.start)

    def in_flight(self, via: str) -> int:
        """Calls made through `via` that have no answer yet."""
        return sum(1 for c in self.calls if c.via == via and c.end is None)

    async def close(self) -> None:
        """Stops every proxy."""
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _forward(self, via: str, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        named = _VIDEO.search(body)
        call = UpstreamCall(via, named.group(1).decode() if named else None, time.time())
        # Model calls are POSTs; the gateway's credentials probe (GET models/...) is no call.
        if request.method == "POST":
            self.calls.append(call)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        assert self._session is not None
        try:
            async with self._session.request(
                request.method, self._upstream + request.path_qs, headers=headers, data=body
            ) as answer:
                payload = await answer.read()
                call.status = answer.status
                reply = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
        finally:
            call.end = time.time()
        return web.Response(body=payload, status=call.status, headers=reply)


# -- the lease history of every job -----------------------------------------------------------

_AUDIT_DDL = """
CREATE TABLE {schema}.fault_job_versions (
    seq bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    status text NOT NULL,
    locked_by text,
    locked_until timestamptz,
    error_message text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION {schema}.fault_record_job_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {schema}.fault_job_versions
        (job_id, status, locked_by, locked_until, error_message)
    VALUES (NEW.id, NEW.status, NEW.locked_by, NEW.locked_until, NEW.error_message);
    RETURN NULL;
END $$;
CREATE TRIGGER fault_record_job_version AFTER INSERT OR UPDATE ON {schema}.ai_jobs
    FOR EACH ROW EXECUTE FUNCTION {schema}.fault_record_job_version();
"""


@dataclass
class Tenure:
    """One claim of a job: a worker holding its lease, renewed by heartbeats until it ended."""

    #: The worker id (host:pid:random) that held it.
    holder: str
    #: When the claim changed the row (database clock, epoch seconds).
    claimed: float
    #: The last end of the lease it held (epoch seconds).
    lease_end: float
    #: When another replica re-queued the job because this lease had lapsed; None if it ended
    #: otherwise (or has not ended).
    rescued: float | None = None

    def held_by(self, pid: int) -> bool:
        """Whether the worker process `pid` held it."""
        return f":{pid}:" in self.holder


class JobAudit:
    """Records every version of the rows of `ai_jobs` in one schema (a trigger, installed after
    the gateway's migrations) and reads each job's tenures back."""

    def __init__(self, database_url: str, schema: str) -> None:
        self._url = database_url
        self._schema = quote_ident(schema)

    async def install(self) -> None:
        """Creates the history table and the trigger that fills it."""
        conn = await asyncpg.connect(self._url, timeout=10)
        try:
            await conn.execute(_AUDIT_DDL.format(schema=self._schema))
        finally:
            await conn.close()

    async def tenures(self) -> dict[str, list[Tenure]]:
        """Job id -> its tenures, oldest first."""
        conn = await asyncpg.connect(self._url, timeout=10)
        try:
            rows = await conn.fetch(
                f"SELECT job_id::text AS job_id, status, locked_by, locked_until, "
                f"error_message, at FROM {self._schema}.fault_job_versions ORDER BY seq"
            )
        finally:
            await conn.close()
        tenures: dict[str, list[Tenure]] = {}
        current: dict[str, Tenure | None] = {}
        for row in rows:
            job_id, holder = row["job_id"], row["locked_by"]
            held = current.get(job_id)
            if row["status"] == "running" and holder is not None:
                lease_end = row["locked_until"].timestamp()
                if held is None or held.holder != holder:
                    held = Tenure(holder, row["at"].timestamp(), lease_end)
                    tenures.setdefault(job_id, []).append(held)
                    current[job_id] = held
                held.lease_end = max(held.lease_end, lease_end)
            else:
                tenures.setdefault(job_id, [])
                if held is not None and row["error_message"] == LEASE_EXPIRED_MESSAGE:
                    held.rescued = row["at"].timestamp()
                current[job_id] = None
        return tenures


async def audited_schema(schema: str) -> tuple[StoreSettings, JobAudit]:
    """The store settings of the test's schema, migrated, with every version of its job rows
    recorded (`JobAudit`)."""
    store = store_settings(schema)
    await run_migrations(store)
    audit = JobAudit(DATABASE_URL, schema)
    await audit.install()
    return store, audit


def worker_env(api_key: str, schema: str, lease_s: float, **more: str) -> dict[str, str]:
    """The environment of a `viewbait-gateway worker` process on the test's schema: the
    emulator's key, a short lease, and `more` variables (its Gemini URL is the caller's)."""
    return {
        "VIEWBAIT_GEMINI__API_KEY": api_key,
        "VIEWBAIT_STORE__DATABASE_URL": DATABASE_URL,
        "VIEWBAIT_STORE__SCHEMA": schema,
        "VIEWBAIT_EXECUTION__LEASE_S": str(lease_s),
        **more,
    }
