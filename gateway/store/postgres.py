"""The shared store: results, jobs and usage in PostgreSQL, through an asyncpg pool.

Every replica talks to the same schema; PostgreSQL is the coordination engine:

- Coalescing is the partial unique index over active dedupe keys: `INSERT ... ON CONFLICT DO
  NOTHING` either creates the execution or tells the caller to join the one that exists.
- Leases are `locked_by` / `locked_until` columns compared with the database's clock (`now()`),
  so replica clocks do not matter.
- Every change a watcher should see bumps `event_seq` and sends `NOTIFY <channel>, '<id>:<seq>'`
  in the same statement; a change that leaves an execution queued and due also sends
  `NOTIFY <channel>, 'due'` (once per transaction), which wakes the workers of every replica.
  Each store holds ONE listening connection and fans notifications out to
  any number of waiters in process (`ChangeHub`); while it is down waiters also poll, so a lost
  listener only slows them down.

Faults: every call is bounded by `connect_timeout_s + command_timeout_s` and fails with
`gateway.errors.Unavailable` when the database is unreachable, slow or not migrated. A call that
fails that way opens a circuit: for `reconnect_interval_s` every call fails at once (no request
queues behind a dead database), then the next call tries again, re-creating the pool if it was
never made. asyncpg replaces broken pooled connections; the listener reconnects on its own.
Nothing needs a restart when the database returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, NamedTuple, TypeVar

import asyncpg

from gateway import errors
from gateway.config import StoreSettings
from gateway.model import CallLabels, Usage, UsageRecord
from gateway.store import migrate as migrations
from gateway.store.base import (
    CachedResult,
    Job,
    JobCursor,
    JobError,
    JobFilter,
    JobProgress,
    JobStatus,
    JoinOutcome,
    LeaseLost,
    NewJob,
    ResultRef,
    UsageEntry,
    check_positive,
    check_same_request,
    check_same_sharing,
    job_not_found,
    lease_expired_error,
    parse_job_id,
    usage_job_id,
)
from gateway.store.batching import Batcher
from gateway.store.changes import DUE, ChangeHub, wait_for_change

log = logging.getLogger(__name__)

T = TypeVar("T")
Connection = migrations.Connection
Record = asyncpg.Record

#: Failures that mean "the database cannot be reached or cannot serve now", not "bad query".
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    # A pooled connection the server is terminating (a restart, an administrator's kill) can
    # still be handed out while it consumes the server's FATAL error; a statement on it then
    # fails with "cannot switch to state ...; another operation is in progress".
    asyncpg.InternalClientError,
)

_UNREACHABLE_OR_SLOW: tuple[type[BaseException], ...] = (TimeoutError, *_UNREACHABLE)

#: Bound on migrations applied at start (`migrate_on_start`); `viewbait-gateway migrate` has none.
_MIGRATE_ON_START_TIMEOUT_S = 300.0

#: A join retries when a concurrent transaction changed what it saw; this bounds the retries.
_JOIN_ATTEMPTS = 5
#: The SET clause that starts an attempt of a claimed execution (row alias `t`; `$2` the
#: worker id, `$3` the lease in seconds), shared by every way of claiming.
_START_ATTEMPT = """
            UPDATE {schema}.ai_jobs t SET
                status = 'running', attempts = t.attempts + 1, locked_by = $2,
                locked_until = now() + make_interval(secs => $3), heartbeat_at = now(),
                started_at = coalesce(t.started_at, now()), progress = NULL,
                error_reason = NULL, error_message = NULL, event_seq = t.event_seq + 1
"""


#: Job change events carried by one NOTIFY (each about 40 bytes; a payload holds 8,000).
_EVENTS_PER_NOTIFY = 100
#: Fewest due executions a capped claim reads per page.
_MIN_CLAIM_PAGE = 64
#: Most writes of one kind gathered into one statement.
_MAX_WRITE_BATCH = 500
#: Blob digests are SHA-256 digests.
_DIGEST_BYTES = 32


def _insertable(new: NewJob) -> bool:
    """Whether `new` can be tried as a plain insert of an execution of its own (its input blob
    digests travel concatenated, 32 bytes each)."""
    return not new.shared and all(len(d) == _DIGEST_BYTES for d in new.input_blobs)


class _Insert(NamedTuple):
    """A `join_or_create_active_job` call trying the batched insert."""

    job_id: uuid.UUID
    new: NewJob

    def conflict_key(self) -> object:
        """Two inserts that could conflict with each other never share a statement."""
        return self.new.dedupe_key or self.job_id


class _Completion(NamedTuple):
    """A `complete_job` call waiting for its batch."""

    job_id: uuid.UUID
    worker_id: str
    result: ResultRef


def channel_name(schema: str) -> str:
    """The NOTIFY channel of a schema's job changes (an identifier of at most 63 bytes)."""
    name = f"{schema}.jobs"
    if len(name.encode()) <= 63:
        return name
    return "viewbait_jobs_" + hashlib.sha256(schema.encode()).hexdigest()[:32]


class _Sql:
    """The store's statements, with the schema filled in once."""

    def __init__(self, schema: str) -> None:
        def q(sql: str) -> str:
            return migrations.render(sql, schema)

        # One notification per `_EVENTS_PER_NOTIFY` changed jobs ('<id>:<seq>,<id>:<seq>...'),
        # not one per job: a batch of changes costs the listeners a few notifications.
        notify = (
            "(SELECT count(pg_notify($NOTIFY, events)) FROM ("
            "SELECT string_agg(e.id::text || ':' || e.event_seq, ',') AS events FROM ("
            f"SELECT id, event_seq, (row_number() OVER () - 1) / {_EVENTS_PER_NOTIFY} AS chunk "
            "FROM j) e GROUP BY e.chunk) n) AS notified"
        )
        # "A job may be due now", for the workers of every replica. PostgreSQL delivers
        # identical notifications of one transaction once, so a constant payload debounces it
        # to one per transaction however many rows became due. Rows due later (a delayed retry)
        # send nothing: nothing happens in the database when they become due; polls find them.
        due = (
            "CASE WHEN j.follows IS NULL AND j.status = 'queued' AND j.run_after <= now() "
            f"AND $DUE_WHEN THEN pg_notify($NOTIFY, '{DUE}') END AS due_notified"
        )

        def changed(
            update: str,
            notify_param: int,
            returning: str = "*",
            *,
            due_when: str | None = None,
            event: bool = True,
        ) -> str:
            # The update and its notifications in one statement (delivered at commit).
            # `due_when`: the change can leave an execution queued and due, and the SQL
            # condition (besides that) under which it wakes the workers. `event`: watchers
            # of the job are told (not for a new job: nobody can be watching it yet).
            columns = ", ".join(([notify] if event else []) + ([] if due_when is None else [due]))
            columns = columns.replace("$DUE_WHEN", due_when or "true")
            return q(
                f"WITH j AS ({update} RETURNING {returning}) "
                f"SELECT j.*, {columns.replace('$NOTIFY', f'${notify_param}')} FROM j"
            )

        self.get_result = q(
            "SELECT * FROM {schema}.ai_results WHERE key = $1 AND expires_at > now()"
        )
        self.put_result = q(
            """
            INSERT INTO {schema}.ai_results
                (key, op, scope, model, result_json, result_blob, result_blobs, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))
            ON CONFLICT (key) DO UPDATE SET
                op = excluded.op, scope = excluded.scope, model = excluded.model,
                result_json = excluded.result_json, result_blob = excluded.result_blob,
                result_blobs = excluded.result_blobs, created_at = excluded.created_at,
                expires_at = excluded.expires_at
            RETURNING *
            """
        )
        self.purge_results = q(
            """
            DELETE FROM {schema}.ai_results WHERE key IN (
                SELECT key FROM {schema}.ai_results WHERE expires_at <= now()
                ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            """
        )
        self.job_by_id = q("SELECT * FROM {schema}.ai_jobs WHERE id = $1")
        self.user_job = q("SELECT * FROM {schema}.ai_jobs WHERE id = $1 AND user_id = $2")
        self.job_by_idempotency = q(
            "SELECT * FROM {schema}.ai_jobs WHERE user_id = $1 AND idempotency_key = $2"
        )
        self.active_execution = q(
            """
            SELECT * FROM {schema}.ai_jobs
            WHERE dedupe_key = $1 AND status IN ('queued', 'running') FOR SHARE
            """
        )
        self.active_handle = q(
            """
            SELECT * FROM {schema}.ai_jobs
            WHERE follows = $1 AND user_id = $2 AND status IN ('queued', 'running')
            """
        )
        self.insert_execution = changed(
            """
            INSERT INTO {schema}.ai_jobs (id, user_id, op, status, input_json, input_blobs,
                dedupe_key, idempotency_key, request_hash, model, priority, max_attempts,
                started_by)
            VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $14)
            ON CONFLICT DO NOTHING
            """,
            12,
            due_when="$13::bool",
        )
        # Creates many executions at once (`join_or_create_active_job` batches concurrent
        # calls), skipping each that conflicts (an active execution of its dedupe key, or its
        # idempotency key taken): those take the one-by-one path. $5 holds each execution's
        # input blob digests concatenated (32 bytes each); $13: any of them wakes the workers.
        self.insert_executions = changed(
            """
            INSERT INTO {schema}.ai_jobs (id, user_id, op, status, input_json, input_blobs,
                dedupe_key, idempotency_key, request_hash, model, priority, max_attempts)
            SELECT n.id, n.user_id, n.op, 'queued', n.input_json::json,
                ARRAY(SELECT substring(n.input_blobs FROM 1 + 32 * k FOR 32)
                    FROM generate_series(0, octet_length(n.input_blobs) / 32 - 1) AS k
                    ORDER BY k),
                n.dedupe_key, n.idempotency_key, n.request_hash, n.model, n.priority,
                n.max_attempts
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                $6::bytea[], $7::text[], $8::bytea[], $9::text[], $10::int[], $11::int[])
                AS n(id, user_id, op, input_json, input_blobs, dedupe_key, idempotency_key,
                    request_hash, model, priority, max_attempts)
            ON CONFLICT DO NOTHING
            """,
            12,
            due_when="$13::bool",
            event=False,
        )
        self.insert_handle = q(
            """
            INSERT INTO {schema}.ai_jobs (id, user_id, follows, op, status, input_json,
                input_blobs, idempotency_key, request_hash, model, priority, attempts,
                max_attempts, run_after, progress, result_json, result_blob, result_blobs,
                error_reason, error_message, started_at, completed_at, expires_at)
            SELECT $1, $2, e.id, e.op, e.status, $3, $4, $5, $6, e.model, $7, e.attempts,
                e.max_attempts, e.run_after, e.progress, e.result_json, e.result_blob,
                e.result_blobs, e.error_reason, e.error_message, e.started_at, e.completed_at,
                e.expires_at
            FROM {schema}.ai_jobs e WHERE e.id = $8
            ON CONFLICT DO NOTHING
            RETURNING *
            """
        )
        # Copies an execution's visible state to its active handles, notifying each.
        self.mirror = q(
            """
            WITH j AS (
                UPDATE {schema}.ai_jobs h SET
                    status = e.status, attempts = e.attempts, max_attempts = e.max_attempts,
                    run_after = e.run_after, progress = e.progress,
                    result_json = e.result_json, result_blob = e.result_blob,
                    result_blobs = e.result_blobs, error_reason = e.error_reason,
                    error_message = e.error_message, started_at = e.started_at,
                    completed_at = e.completed_at, expires_at = e.expires_at,
                    event_seq = h.event_seq + 1
                FROM {schema}.ai_jobs e
                WHERE e.id = ANY($1::uuid[]) AND h.follows = e.id
                    AND h.status IN ('queued', 'running')
                RETURNING h.id, h.event_seq)
            SELECT pg_notify($2, j.id::text || ':' || j.event_seq) FROM j
            """
        )
        # Expired leases: requeued while attempts remain, failed otherwise. $1 NULL: any job.
        self.rescue = changed(
            """
            UPDATE {schema}.ai_jobs t SET
                status = CASE WHEN t.attempts < t.max_attempts THEN 'queued' ELSE 'failed' END,
                run_after = CASE WHEN t.attempts < t.max_attempts THEN now()
                    ELSE t.run_after END,
                completed_at = CASE WHEN t.attempts < t.max_attempts THEN NULL ELSE now() END,
                expires_at = CASE WHEN t.attempts < t.max_attempts THEN NULL
                    ELSE now() + make_interval(secs => $3) END,
                locked_by = NULL, locked_until = NULL,
                error_reason = $4, error_message = $5, event_seq = t.event_seq + 1
            FROM (
                SELECT id FROM {schema}.ai_jobs
                WHERE status = 'running' AND follows IS NULL AND locked_until < now()
                    AND ($1::uuid IS NULL OR id = $1)
                ORDER BY locked_until LIMIT $2 FOR UPDATE SKIP LOCKED
            ) due
            WHERE t.id = due.id
            """,
            6,
            returning="t.*",
            due_when="true",
        )
        self.claim = changed(
            _START_ATTEMPT
            + """
            WHERE id = $1 AND follows IS NULL AND status = 'queued' AND run_after <= now()
            """,
            4,
        )
        # Due queued executions, highest priority then oldest; rows another runner is claiming
        # are skipped, not waited for.
        self.claim_batch = changed(
            _START_ATTEMPT
            + """
            FROM (
                SELECT id FROM {schema}.ai_jobs
                WHERE status = 'queued' AND follows IS NULL AND run_after <= now()
                ORDER BY priority DESC, created_at LIMIT $1 FOR UPDATE SKIP LOCKED
            ) due
            WHERE t.id = due.id
            """,
            4,
            returning="t.*",
        )
        # With per-user caps the claim takes turns (`claim_lock`) and walks the due queued
        # executions in claim order, a page at a time ($1 rows after the row ($2, $3, $4):
        # priority, created_at, id), choosing in Python which fit under their owners' caps.
        # Rows skipped for a cap stay queued; they are locked only until the claim commits.
        self.claim_page = q(
            """
            SELECT id, coalesce(user_id, started_by) AS user_id, priority, created_at
            FROM {schema}.ai_jobs
            WHERE status = 'queued' AND follows IS NULL AND run_after <= now()
                AND ($2::int IS NULL OR (priority < $2
                    OR (priority = $2 AND (created_at, id) > ($3::timestamptz, $4::uuid))))
            ORDER BY priority DESC, created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED
            """
        )
        # Running executions are few (at most the workers of every replica): counted per owner
        # (for a shared execution, the user who started it) once per claim.
        self.running_by_user = q(
            """
            SELECT coalesce(user_id, started_by) AS user_id, count(*) AS running
            FROM {schema}.ai_jobs
            WHERE status = 'running' AND follows IS NULL
                AND coalesce(user_id, started_by) IS NOT NULL
            GROUP BY 1
            """
        )
        self.claim_chosen = changed(
            _START_ATTEMPT + "WHERE t.id = ANY($1::uuid[]) AND t.status = 'queued'",
            4,
            returning="t.*",
        )
        # Two replicas each counting a user's running executions before the other's claim
        # commits would both claim up to her cap: capped claims take turns on this lock.
        self.claim_lock = "SELECT pg_advisory_xact_lock($1)"
        # A user's jobs, newest first; NULL filters and cursor mean any / the first page.
        self.list_jobs = q(
            """
            SELECT * FROM {schema}.ai_jobs
            WHERE user_id = $1
                AND ($2::text[] IS NULL OR status = ANY($2::text[]))
                AND ($3::text[] IS NULL OR op = ANY($3::text[]))
                AND ($4::timestamptz IS NULL OR (created_at, id) < ($4::timestamptz, $5::uuid))
            ORDER BY created_at DESC, id DESC LIMIT $6
            """
        )
        self.heartbeat = q(
            """
            WITH j AS (
                UPDATE {schema}.ai_jobs SET
                    locked_until = now() + make_interval(secs => $3), heartbeat_at = now(),
                    progress = coalesce($4::jsonb, progress),
                    event_seq = event_seq + CASE WHEN $4::jsonb IS NULL THEN 0 ELSE 1 END
                WHERE id = $1 AND status = 'running' AND locked_by = $2
                RETURNING *)
            SELECT j.*, CASE WHEN $4::jsonb IS NOT NULL
                THEN pg_notify($5, j.id::text || ':' || j.event_seq) END AS notified
            FROM j
            """
        )
        # Completes many executions at once (`complete_job` batches concurrent calls): $1 ids,
        # $2 their lease holders, $3 inline result JSON, $4 result JSON blob digests, $5 every
        # execution's result blob digests concatenated (32 bytes each: arrays of arrays cannot
        # be unnested), $6 the retention in seconds.
        self.complete_many = changed(
            """
            UPDATE {schema}.ai_jobs t SET
                status = 'succeeded', result_json = c.result_json::json,
                result_blob = c.result_blob,
                result_blobs = ARRAY(
                    SELECT substring(c.result_blobs FROM 1 + 32 * n FOR 32)
                    FROM generate_series(0, octet_length(c.result_blobs) / 32 - 1) AS n
                    ORDER BY n),
                error_reason = NULL, error_message = NULL, completed_at = now(),
                expires_at = now() + make_interval(secs => $6),
                locked_by = NULL, locked_until = NULL, event_seq = t.event_seq + 1
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::bytea[])
                AS c(id, worker_id, result_json, result_blob, result_blobs)
            WHERE t.id = c.id AND t.status = 'running' AND t.locked_by = c.worker_id
            """,
            7,
            returning="t.*",
        )
        self.jobs_by_ids = q("SELECT * FROM {schema}.ai_jobs WHERE id = ANY($1::uuid[])")
        # $5 NULL: no retry. Otherwise a retry after $5 seconds while attempts remain.
        self.fail = changed(
            """
            UPDATE {schema}.ai_jobs SET
                status = CASE WHEN $5::float8 IS NOT NULL AND attempts < max_attempts
                    THEN 'queued' ELSE 'failed' END,
                run_after = CASE WHEN $5::float8 IS NOT NULL AND attempts < max_attempts
                    THEN now() + make_interval(secs => greatest($5::float8, 0))
                    ELSE run_after END,
                completed_at = CASE WHEN $5::float8 IS NOT NULL AND attempts < max_attempts
                    THEN NULL ELSE now() END,
                expires_at = CASE WHEN $5::float8 IS NOT NULL AND attempts < max_attempts
                    THEN NULL ELSE now() + make_interval(secs => $6) END,
                error_reason = $3, error_message = $4,
                locked_by = NULL, locked_until = NULL, event_seq = event_seq + 1
            WHERE id = $1 AND status = 'running' AND locked_by = $2
            """,
            7,
            due_when="true",
        )
        self.defer = changed(
            """
            UPDATE {schema}.ai_jobs SET
                status = 'queued', attempts = attempts - 1,
                run_after = now() + make_interval(secs => greatest($5::float8, 0)),
                error_reason = $3, error_message = $4,
                locked_by = NULL, locked_until = NULL, event_seq = event_seq + 1
            WHERE id = $1 AND status = 'running' AND locked_by = $2
            """,
            6,
            due_when="true",
        )
        self.lock_job = q("SELECT id FROM {schema}.ai_jobs WHERE id = $1 FOR UPDATE")
        self.cancel = changed(
            """
            UPDATE {schema}.ai_jobs SET
                status = 'cancelled', result_json = NULL, result_blob = NULL,
                result_blobs = NULL, error_reason = NULL, error_message = NULL,
                completed_at = now(), expires_at = now() + make_interval(secs => $3),
                locked_by = NULL, locked_until = NULL, event_seq = event_seq + 1
            WHERE id = $1 AND user_id = $2
                AND status IN ('queued', 'running')
            """,
            4,
        )
        # The execution goes when its last active handle has gone.
        self.cancel_orphan = changed(
            """
            UPDATE {schema}.ai_jobs e SET
                status = 'cancelled', error_reason = NULL, error_message = NULL,
                completed_at = now(), expires_at = now() + make_interval(secs => $2),
                locked_by = NULL, locked_until = NULL, event_seq = e.event_seq + 1
            WHERE e.id = $1 AND e.status IN ('queued', 'running') AND NOT EXISTS (
                SELECT 1 FROM {schema}.ai_jobs h
                WHERE h.follows = e.id AND h.status IN ('queued', 'running'))
            """,
            3,
        )
        self.purge_jobs = q(
            """
            DELETE FROM {schema}.ai_jobs WHERE id IN (
                SELECT id FROM {schema}.ai_jobs WHERE expires_at <= now()
                ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            """
        )
        self.insert_usage = q(
            """
            INSERT INTO {schema}.ai_usage (job_id, user_id, op, request_id, model, attempt,
                outcome, prompt_tokens, cached_prompt_tokens, output_tokens, thinking_tokens,
                image_output_tokens, total_tokens, cost_usd, duration_s)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
            """
        )
        self.list_usage = q("SELECT * FROM {schema}.ai_usage WHERE job_id = $1 ORDER BY id")
        # Index lookups per candidate (GIN on the digest arrays, migration 0002).
        self.referenced_blobs = q(
            """
            SELECT c.d FROM unnest($1::bytea[]) AS c(d) WHERE
                EXISTS (SELECT 1 FROM {schema}.ai_jobs j WHERE j.input_blobs @> ARRAY[c.d])
                OR EXISTS (SELECT 1 FROM {schema}.ai_jobs j WHERE j.result_blobs @> ARRAY[c.d])
                OR EXISTS (SELECT 1 FROM {schema}.ai_jobs j WHERE j.result_blob = c.d)
                OR EXISTS (SELECT 1 FROM {schema}.ai_results r WHERE r.result_blobs @> ARRAY[c.d])
                OR EXISTS (SELECT 1 FROM {schema}.ai_results r WHERE r.result_blob = c.d)
            """
        )


def _ref(row: Record) -> ResultRef | None:
    if row["result_json"] is None and row["result_blob"] is None:
        return None
    return ResultRef(row["result_json"], row["result_blob"], tuple(row["result_blobs"] or ()))


def _job(row: Record) -> Job:
    error = None
    if row["error_reason"] is not None:
        error = JobError(row["error_reason"], row["error_message"] or "")
    progress = row["progress"]
    return Job(
        id=str(row["id"]),
        user_id=row["user_id"],
        op=row["op"],
        status=JobStatus(row["status"]),
        input_json=row["input_json"],
        input_blobs=tuple(row["input_blobs"]),
        dedupe_key=row["dedupe_key"],
        idempotency_key=row["idempotency_key"],
        request_hash=row["request_hash"],
        follows=None if row["follows"] is None else str(row["follows"]),
        model=row["model"],
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        run_after=row["run_after"],
        locked_by=row["locked_by"],
        locked_until=row["locked_until"],
        heartbeat_at=row["heartbeat_at"],
        progress=None if progress is None else JobProgress.from_json(progress),
        result=_ref(row),
        error=error,
        event_seq=row["event_seq"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        expires_at=row["expires_at"],
        started_by=row.get("started_by"),
    )


def _cached(row: Record) -> CachedResult:
    ref = _ref(row)
    assert ref is not None  # the table's CHECK constraint
    return CachedResult(
        row["key"],
        row["op"],
        row["scope"],
        row["model"],
        ref,
        row["created_at"],
        row["expires_at"],
    )


async def _keep_session(_conn: Connection) -> None:
    """The pool's reset of a released connection: nothing beyond asyncpg's own rollback of an
    open transaction. Its default (RESET ALL, UNLISTEN *, unlock advisory locks, CLOSE ALL)
    costs a round trip at the end of every store call, and the store leaves no session state:
    its advisory locks are transaction-scoped and it listens on a connection of its own."""


def _advisory_key(name: str) -> int:
    """A signed 64-bit advisory lock key for `name` (stable across replicas and versions)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _deleted(status: str) -> int:
    # asyncpg returns the command tag, e.g. "DELETE 12".
    return int(status.rsplit(" ", 1)[-1])


class PostgresStore:
    """`Store` on PostgreSQL (see the module docstring and `gateway.store.base`)."""

    def __init__(self, settings: StoreSettings) -> None:
        if settings.database_url is None:
            raise ValueError("PostgresStore needs store.database_url")
        self._settings = settings
        self._dsn = settings.database_url.get_secret_value()
        self._schema = settings.schema_name
        self._sql = _Sql(self._schema)
        self._channel = channel_name(self._schema)
        self._claim_lock_key = _advisory_key(f"{self._schema}.claim")
        self._retention_s = settings.job_retention_s
        # One store call: maybe a new connection, then its statements.
        self._call_timeout_s = settings.connect_timeout_s + settings.command_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Task[asyncpg.Pool] | None = None
        self._retry_at = 0.0
        self._last_failure = ""
        self._hub = ChangeHub()
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._closed = False
        #: Notifications received by the listener (for metrics and tests).
        self.notifications_received = 0
        self._inserts: Batcher[_Insert, Job | None] = Batcher(
            self._insert_many, max_batch=_MAX_WRITE_BATCH, key=_Insert.conflict_key
        )
        self._completions: Batcher[_Completion, Job] = Batcher(
            self._complete_many, max_batch=_MAX_WRITE_BATCH, key=lambda c: c.job_id
        )

    @property
    def schema(self) -> str:
        """The PostgreSQL schema this store uses."""
        return self._schema

    @property
    def listening(self) -> bool:
        """Whether the LISTEN connection is up (waiters poll while it is not)."""
        return self._listening

    async def start(self) -> None:
        """Connects and starts the listener; a database that is down now is retried later."""
        if self._listener is None:
            self._listener = asyncio.create_task(
                self._listen_forever(), name=f"viewbait-store-listener:{self._schema}"
            )
        try:
            await self._get_pool()
        except errors.Unavailable as exc:
            log.warning("store not ready at start, will retry on use: %s", exc.message)

    async def close(self) -> None:
        """Stops the listener, closes the pool and wakes every waiter."""
        self._closed = True
        for task in (self._listener, self._opening):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._listener = self._opening = None
        await self._inserts.aclose()
        await self._completions.aclose()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(self._settings.command_timeout_s):
                    await pool.close()
            except _UNREACHABLE_OR_SLOW:
                pool.terminate()
        self._hub.publish_all()

    # -- connections -------------------------------------------------------------------------

    def _unavailable(self, detail: str) -> errors.Unavailable:
        return errors.Unavailable(
            f"the result and job store (PostgreSQL) is unavailable: {detail}; retry shortly",
            retry_after_s=self._settings.reconnect_interval_s,
        )

    def _trip(self, failure: errors.Unavailable) -> errors.Unavailable:
        """Opens the circuit: for `reconnect_interval_s`, calls fail at once with this failure
        instead of each waiting out the timeouts against a database that is down."""
        loop = asyncio.get_running_loop()
        self._retry_at = loop.time() + self._settings.reconnect_interval_s
        self._last_failure = failure.message
        return failure

    def _check_circuit(self) -> None:
        if self._closed:
            raise self._unavailable("the store is closed")
        if asyncio.get_running_loop().time() < self._retry_at:
            raise errors.Unavailable(
                self._last_failure, retry_after_s=self._settings.reconnect_interval_s
            )

    async def _get_pool(self) -> asyncpg.Pool:
        self._check_circuit()
        if self._pool is not None:
            return self._pool
        if self._opening is None or self._opening.done():
            # The store owns the attempt, not the caller: a caller giving up (its timeout, its
            # cancellation) does not abort a connection or migration others will use.
            self._opening = asyncio.create_task(self._open())
            self._opening.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout(self._call_timeout_s):
                return await asyncio.shield(self._opening)
        except TimeoutError:
            raise self._unavailable("still connecting") from None

    async def _open(self) -> asyncpg.Pool:
        try:
            self._pool = await self._open_pool()
        except errors.Unavailable as exc:
            raise self._trip(exc) from None
        return self._pool

    async def _open_pool(self) -> asyncpg.Pool:
        settings = self._settings
        pool: asyncpg.Pool | None = None
        try:
            async with asyncio.timeout(self._call_timeout_s):
                pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=settings.pool_min_size,
                    max_size=settings.pool_max_size,
                    timeout=settings.connect_timeout_s,
                    command_timeout=settings.command_timeout_s,
                    reset=_keep_session,
                )
            await self._prepare_schema(pool)
            return pool
        except BaseException as exc:
            if pool is not None:
                pool.terminate()
            if isinstance(exc, _UNREACHABLE_OR_SLOW):
                raise self._unavailable(f"cannot connect ({type(exc).__name__})") from None
            if isinstance(exc, migrations.MigrationError | asyncpg.PostgresError):
                # An operator must act (permissions, an edited migration): say so loudly, and
                # keep failing calls cleanly until it is fixed.
                log.error("the store cannot prepare schema %s: %s", self._schema, exc)
                raise self._unavailable(
                    f"schema {self._schema!r} cannot be prepared ({type(exc).__name__})"
                ) from None
            raise

    async def _prepare_schema(self, pool: asyncpg.Pool) -> None:
        if self._settings.migrate_on_start:
            # Migrations may take longer than one store call: a dedicated connection without
            # the pool's command timeout, bounded only against a database that stopped answering.
            async with asyncio.timeout(_MIGRATE_ON_START_TIMEOUT_S):
                await run_migrations(self._settings)
            return
        async with asyncio.timeout(self._call_timeout_s), pool.acquire() as conn:
            pending = await migrations.pending_versions(conn, self._schema)
        if pending:
            raise self._unavailable(
                f"schema {self._schema!r} lacks migrations {pending}: run "
                "`viewbait-gateway migrate` (or set store.migrate_on_start)"
            )

    async def run(
        self, fn: Callable[[Connection], Awaitable[T]], *, transaction: bool = False
    ) -> T:
        """`fn` on a pooled connection under the store's timeouts and circuit, for the blob
        store that shares this database (its failures count toward the store's health)."""
        return await self._run(fn, transaction=transaction)

    async def _run(
        self, fn: Callable[[Connection], Awaitable[T]], *, transaction: bool = False
    ) -> T:
        """Runs `fn` on a pooled connection (in a transaction if asked), bounded in time."""
        pool = await self._get_pool()
        try:
            async with (
                asyncio.timeout(self._call_timeout_s),
                pool.acquire(timeout=self._call_timeout_s) as conn,
            ):
                if not transaction:
                    return await fn(conn)
                async with conn.transaction():
                    return await fn(conn)
        except TimeoutError:
            failure = self._unavailable(f"no answer within {self._call_timeout_s:g} s")
            raise self._trip(failure) from None
        except asyncpg.UndefinedTableError:
            raise self._unavailable(
                f"schema {self._schema!r} is not migrated: run `viewbait-gateway migrate`"
            ) from None
        except _UNREACHABLE as exc:
            failure = self._unavailable(f"connection failed ({type(exc).__name__})")
            raise self._trip(failure) from None

    # -- notifications -----------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.notifications_received += 1
        # '<id>:<seq>' for each changed job, comma-separated, or `DUE`: either way the first
        # field of each item is its hub key.
        for item in str(payload).split(","):
            self._hub.publish(item.split(":", 1)[0])

    async def _listen_forever(self) -> None:
        while not self._closed:
            try:
                await self._listen_once()
            except Exception as exc:
                # Whatever went wrong, waiters keep polling and the loop tries again.
                log.debug("store listener connection failed: %r", exc)
            self._hub.publish_all()
            await asyncio.sleep(self._settings.reconnect_interval_s)

    async def _listen_once(self) -> None:
        """Holds one LISTEN connection until it is lost."""
        settings = self._settings
        lost = asyncio.Event()
        async with asyncio.timeout(self._call_timeout_s):
            conn = await asyncpg.connect(self._dsn, timeout=settings.connect_timeout_s)
        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            async with asyncio.timeout(self._call_timeout_s):
                await conn.add_listener(self._channel, self._on_notify)
            # Every change reaches the hub from now on: waiters stop polling.
            self._listening = self._hub.live = True
            # Changes made while nobody listened: every waiter re-reads once.
            self._hub.publish_all()
            while not lost.is_set():
                try:
                    async with asyncio.timeout(settings.poll_interval_s):
                        await lost.wait()
                except TimeoutError:
                    # A connection can die without a FIN (a dead host, a dropped NAT entry):
                    # ask it something to find out.
                    await conn.fetchval("SELECT 1", timeout=settings.command_timeout_s)
        finally:
            if self._listening and not self._closed:
                log.warning("store listener lost its connection; reconnecting")
            # Waiters poll again once woken (`_listen_forever` wakes them all).
            self._listening = self._hub.live = False
            conn.terminate()

    async def _mirror(self, conn: Connection, rows: Sequence[Record]) -> None:
        """Copies shared executions' changes (those without an owner) to their handles."""
        shared = [row["id"] for row in rows if row["user_id"] is None]
        if shared:
            await conn.fetch(self._sql.mirror, shared, self._channel)

    # -- result cache ------------------------------------------------------------------------

    async def get_result(self, key: bytes) -> CachedResult | None:
        """See `Store.get_result`."""
        row = await self._run(lambda c: c.fetchrow(self._sql.get_result, key))
        return None if row is None else _cached(row)

    async def put_result(
        self, key: bytes, *, op: str, scope: str, model: str, ref: ResultRef, ttl_s: float
    ) -> CachedResult:
        """See `Store.put_result`."""
        check_positive("ttl_s", ttl_s)
        row = await self._run(
            lambda c: c.fetchrow(
                self._sql.put_result,
                key,
                op,
                scope,
                model,
                ref.json,
                ref.json_blob,
                list(ref.blobs),
                float(ttl_s),
            )
        )
        assert row is not None
        return _cached(row)

    async def purge_expired_results(self, limit: int) -> int:
        """See `Store.purge_expired_results`."""
        check_positive("limit", limit)
        return _deleted(await self._run(lambda c: c.execute(self._sql.purge_results, limit)))

    # -- jobs --------------------------------------------------------------------------------

    async def join_or_create_active_job(self, new: NewJob) -> JoinOutcome:
        """See `Store.join_or_create_active_job`.

        A job of its own (not a handle on a shared execution) is first tried as a plain insert,
        batched with concurrent ones (`gateway.store.batching`); one that conflicts takes the
        transaction below, which finds what it conflicted with.
        """
        if _insertable(new):
            created = await self._inserts.submit(_Insert(uuid.uuid4(), new))
            if created is not None:
                return JoinOutcome(created, created=True, existing=False)
        return await self._join(new)

    async def join_or_create_active_jobs(self, news: Sequence[NewJob]) -> list[JoinOutcome]:
        """See `Store.join_or_create_active_jobs`: the executions of their own that conflict
        with nothing are written `_MAX_WRITE_BATCH` to a statement, the rest one by one."""
        outcomes: list[JoinOutcome | None] = [None] * len(news)
        fresh = [i for i, new in enumerate(news) if _insertable(new)]
        for first in range(0, len(fresh), _MAX_WRITE_BATCH):
            chunk = fresh[first : first + _MAX_WRITE_BATCH]
            created = await self._insert_many([_Insert(uuid.uuid4(), news[i]) for i in chunk])
            for i, job in zip(chunk, created, strict=True):
                if job is not None:
                    outcomes[i] = JoinOutcome(job, created=True, existing=False)
        for i, outcome in enumerate(outcomes):
            if outcome is None:
                outcomes[i] = await self._join(news[i])
        return [outcome for outcome in outcomes if outcome is not None]

    async def _join(self, new: NewJob) -> JoinOutcome:
        """Joins what `new` conflicts with, or creates it, in a transaction of its own."""
        for _ in range(_JOIN_ATTEMPTS):
            try:
                outcome = await self._run(lambda c: self._join_once(c, new), transaction=True)
            except _Retry:
                continue
            if outcome is not None:
                return outcome
        raise self._unavailable("the job for this request kept changing while joining it")

    async def _insert_many(self, batch: Sequence[_Insert]) -> list[Job | None]:
        """One statement creating every execution of `batch` that conflicts with nothing."""
        news = [i.new for i in batch]
        rows = await self._run(
            lambda c: c.fetch(
                self._sql.insert_executions,
                [i.job_id for i in batch],
                [n.user_id for n in news],
                [n.op for n in news],
                [n.input_json for n in news],
                [b"".join(n.input_blobs) for n in news],
                [n.dedupe_key for n in news],
                [n.idempotency_key for n in news],
                [n.request_hash for n in news],
                [n.model for n in news],
                [n.priority for n in news],
                [n.max_attempts for n in news],
                self._channel,
                any(n.announce for n in news),
            )
        )
        created = {row["id"]: _job(row) for row in rows}
        return [created.get(i.job_id) for i in batch]

    async def _join_once(self, conn: Connection, new: NewJob) -> JoinOutcome | None:
        """One attempt; None when a concurrent change means it must be tried again."""
        sql = self._sql
        if new.idempotency_key is not None:
            row = await conn.fetchrow(sql.job_by_idempotency, new.user_id, new.idempotency_key)
            if row is not None:
                earlier = _job(row)
                check_same_request(earlier, new)
                return JoinOutcome(earlier, created=False, existing=True)
        row = await conn.fetchrow(
            sql.insert_execution,
            uuid.uuid4(),
            None if new.shared else new.user_id,
            new.op,
            new.input_json,
            list(new.input_blobs),
            new.dedupe_key,
            None if new.shared else new.idempotency_key,
            None if new.shared else new.request_hash,
            new.model,
            new.priority,
            new.max_attempts,
            self._channel,
            new.announce,
            new.user_id if new.shared else None,
        )
        created = row is not None
        if row is None:
            if new.dedupe_key is None:
                return None  # a concurrent insert took the idempotency key: look it up again
            # FOR SHARE: the execution cannot finish until this transaction (and the handle it
            # may add) commits, so the handle is never missed by the finishing update's mirror.
            row = await conn.fetchrow(sql.active_execution, new.dedupe_key)
            if row is None:
                return None  # it finished in between: create a new one
            check_same_sharing(_job(row), new)
            if not new.shared:
                return JoinOutcome(_job(row), created=False, existing=True)
            handle = await conn.fetchrow(sql.active_handle, row["id"], new.user_id)
            if handle is not None:
                return JoinOutcome(_job(handle), created=False, existing=True)
        if not new.shared:
            return JoinOutcome(_job(row), created=True, existing=False)
        handle = await conn.fetchrow(
            sql.insert_handle,
            uuid.uuid4(),
            new.user_id,
            new.input_json,
            list(new.input_blobs),
            new.idempotency_key,
            new.request_hash,
            new.priority,
            row["id"],
        )
        if handle is None:
            # The same user's concurrent request added its handle (or took the idempotency
            # key) first. Undo this attempt so a newly inserted execution does not linger.
            raise _Retry
        return JoinOutcome(_job(handle), created=created, existing=False)

    async def find_job_by_idempotency_key(self, user_id: str, key: str) -> Job | None:
        """See `Store.find_job_by_idempotency_key`."""
        row = await self._run(lambda c: c.fetchrow(self._sql.job_by_idempotency, user_id, key))
        return None if row is None else _job(row)

    async def get_job(self, job_id: str, user_id: str) -> Job:
        """See `Store.get_job`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise job_not_found(job_id)
        row = await self._run(lambda c: c.fetchrow(self._sql.user_job, parsed, user_id))
        if row is None:
            raise job_not_found(job_id)
        return _job(row)

    async def claim_job(self, job_id: str, worker_id: str, lease_s: float) -> Job | None:
        """See `Store.claim_job`."""
        check_positive("lease_s", lease_s)
        parsed = parse_job_id(job_id)
        if parsed is None:
            return None

        async def claim(conn: Connection) -> Record | None:
            await self._rescue(conn, parsed, 1)
            row = await conn.fetchrow(
                self._sql.claim, parsed, worker_id, float(lease_s), self._channel
            )
            if row is not None:
                await self._mirror(conn, [row])
            return row

        row = await self._run(claim, transaction=True)
        return None if row is None else _job(row)

    async def claim_batch(
        self,
        worker_id: str,
        limit: int,
        lease_s: float,
        caps: Mapping[int, int] | None = None,
    ) -> list[Job]:
        """See `Store.claim_batch`."""
        check_positive("limit", limit)
        check_positive("lease_s", lease_s)
        sql = self._sql

        async def claim(conn: Connection) -> list[Record]:
            if caps:
                await conn.execute(sql.claim_lock, self._claim_lock_key)
                chosen = await self._choose_capped(conn, limit, caps)
                rows = (
                    await conn.fetch(
                        sql.claim_chosen, chosen, worker_id, float(lease_s), self._channel
                    )
                    if chosen
                    else []
                )
            else:
                rows = await conn.fetch(
                    sql.claim_batch, limit, worker_id, float(lease_s), self._channel
                )
            await self._mirror(conn, rows)
            return list(rows)

        rows = await self._run(claim, transaction=True)
        return sorted(map(_job, rows), key=lambda job: (-job.priority, job.created_at))

    async def _choose_capped(
        self, conn: Connection, limit: int, caps: Mapping[int, int]
    ) -> list[uuid.UUID]:
        """Up to `limit` due executions in claim order that fit under their owners' caps (see
        `Store.claim_batch`), read a page at a time so a long queue costs what it must."""
        sql = self._sql
        running: dict[str, int] = {
            row["user_id"]: row["running"] for row in await conn.fetch(sql.running_by_user)
        }
        page_size = max(limit * 4, _MIN_CLAIM_PAGE)
        chosen: list[uuid.UUID] = []
        after: tuple[Any, Any, Any] = (None, None, None)
        while len(chosen) < limit:
            page = await conn.fetch(sql.claim_page, page_size, *after)
            for row in page:
                user, cap = row["user_id"], caps.get(row["priority"])
                if user is not None and cap is not None:
                    if running.get(user, 0) >= cap:
                        continue
                    running[user] = running.get(user, 0) + 1
                chosen.append(row["id"])
                if len(chosen) == limit:
                    break
            if len(page) < page_size:
                break
            last = page[-1]
            after = (last["priority"], last["created_at"], last["id"])
        return chosen

    async def _rescue(self, conn: Connection, job_id: uuid.UUID | None, limit: int) -> int:
        error = lease_expired_error()
        rows = await conn.fetch(
            self._sql.rescue,
            job_id,
            limit,
            self._retention_s,
            error.reason,
            error.message,
            self._channel,
        )
        await self._mirror(conn, rows)
        return len(rows)

    async def _held_change(
        self, job_id: str, worker_id: str, sql: str, *args: Any, visible: bool = True
    ) -> Job:
        """Applies a runner's change to an execution it holds; `LeaseLost` if it does not.

        `visible`: the change is an event for watchers, so handles mirror it.
        """
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise LeaseLost(job_id, None)

        async def change(conn: Connection) -> tuple[Record | None, Record | None]:
            row = await conn.fetchrow(sql, parsed, worker_id, *args)
            if row is None:
                return None, await conn.fetchrow(self._sql.job_by_id, parsed)
            if visible:
                await self._mirror(conn, [row])
            return row, None

        row, current = await self._run(change, transaction=True)
        if row is None:
            raise LeaseLost(job_id, None if current is None else _job(current))
        return _job(row)

    async def heartbeat_job(
        self, job_id: str, worker_id: str, lease_s: float, progress: JobProgress | None = None
    ) -> Job:
        """See `Store.heartbeat_job`."""
        check_positive("lease_s", lease_s)
        return await self._held_change(
            job_id,
            worker_id,
            self._sql.heartbeat,
            float(lease_s),
            None if progress is None else progress.to_json(),
            self._channel,
            visible=progress is not None,
        )

    async def complete_job(self, job_id: str, worker_id: str, result: ResultRef) -> Job:
        """See `Store.complete_job`. Concurrent completions share one statement and commit
        (`gateway.store.batching`)."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise LeaseLost(job_id, None)
        if any(len(digest) != _DIGEST_BYTES for digest in result.blobs):
            raise ValueError("result blob digests are SHA-256 digests (32 bytes)")
        return await self._completions.submit(_Completion(parsed, worker_id, result))

    async def _complete_many(self, batch: Sequence[_Completion]) -> list[Job | LeaseLost]:
        """One statement and transaction completing every execution of `batch`."""
        sql = self._sql

        async def complete(conn: Connection) -> tuple[list[Record], list[Record]]:
            rows = await conn.fetch(
                sql.complete_many,
                [c.job_id for c in batch],
                [c.worker_id for c in batch],
                [c.result.json for c in batch],
                [c.result.json_blob for c in batch],
                [b"".join(c.result.blobs) for c in batch],
                self._retention_s,
                self._channel,
            )
            await self._mirror(conn, rows)
            done = {row["id"] for row in rows}
            lost = [c.job_id for c in batch if c.job_id not in done]
            current = await conn.fetch(sql.jobs_by_ids, lost) if lost else []
            return rows, current

        rows, current = await self._run(complete, transaction=True)
        by_id = {row["id"]: _job(row) for row in rows}
        now = {row["id"]: _job(row) for row in current}
        return [by_id.get(c.job_id) or LeaseLost(str(c.job_id), now.get(c.job_id)) for c in batch]

    async def fail_job(
        self, job_id: str, worker_id: str, error: JobError, retry_after_s: float | None = None
    ) -> Job:
        """See `Store.fail_job`."""
        job = await self._held_change(
            job_id,
            worker_id,
            self._sql.fail,
            error.reason,
            error.message,
            None if retry_after_s is None else float(retry_after_s),
            self._retention_s,
            self._channel,
        )
        if retry_after_s is not None and job.status is JobStatus.QUEUED:
            self._due_later(retry_after_s)
        return job

    async def defer_job(self, job_id: str, worker_id: str, error: JobError, delay_s: float) -> Job:
        """See `Store.defer_job`."""
        job = await self._held_change(
            job_id,
            worker_id,
            self._sql.defer,
            error.reason,
            error.message,
            float(delay_s),
            self._channel,
        )
        self._due_later(delay_s)
        return job

    def _due_later(self, delay_s: float) -> None:
        """A job queued again becomes due in `delay_s`: nothing happens in the database then,
        so this replica's workers are woken by a timer (other replicas' polls find it too)."""
        if delay_s > 0:
            asyncio.get_running_loop().call_later(delay_s, self._hub.publish, DUE)

    async def cancel_job(self, job_id: str, user_id: str) -> Job:
        """See `Store.cancel_job`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise job_not_found(job_id)
        sql = self._sql

        async def cancel(conn: Connection) -> Record | None:
            row = await conn.fetchrow(sql.user_job, parsed, user_id)
            if row is None or not JobStatus(row["status"]).active:
                return row
            follows = row["follows"]
            if follows is not None:
                # Lock order everywhere: execution before its handles (no deadlocks).
                await conn.fetchrow(sql.lock_job, follows)
            cancelled = await conn.fetchrow(
                sql.cancel, parsed, user_id, self._retention_s, self._channel
            )
            if cancelled is None:
                return await conn.fetchrow(sql.user_job, parsed, user_id)
            if follows is not None:
                await conn.fetchrow(sql.cancel_orphan, follows, self._retention_s, self._channel)
            return cancelled

        row = await self._run(cancel, transaction=True)
        if row is None:
            raise job_not_found(job_id)
        return _job(row)

    async def rescue_expired_leases(self, limit: int) -> int:
        """See `Store.rescue_expired_leases`."""
        check_positive("limit", limit)
        return await self._run(lambda c: self._rescue(c, None, limit), transaction=True)

    async def list_jobs(
        self, user_id: str, job_filter: JobFilter, limit: int, after: JobCursor | None = None
    ) -> list[Job]:
        """See `Store.list_jobs`."""
        check_positive("limit", limit)
        statuses = sorted(s.value for s in job_filter.statuses) or None
        ops = sorted(job_filter.ops) or None
        after_at, after_id = (None, None) if after is None else after
        parsed = None if after_id is None else parse_job_id(after_id)
        if after_id is not None and parsed is None:
            raise ValueError(f"a job cursor names a job id that is not one: {after_id!r}")
        rows = await self._run(
            lambda c: c.fetch(self._sql.list_jobs, user_id, statuses, ops, after_at, parsed, limit)
        )
        return [_job(row) for row in rows]

    def subscribe_due(self, event: asyncio.Event) -> AbstractContextManager[asyncio.Event]:
        """See `Store.subscribe_due` (the `DUE` notifications of the listener connection)."""
        return self._hub.subscribe(DUE, event)

    async def wait_for_job_change(
        self, job_id: str, user_id: str, after_seq: int, timeout_s: float
    ) -> Job:
        """See `Store.wait_for_job_change`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            raise job_not_found(job_id)
        return await wait_for_change(
            self._hub,
            str(parsed),
            lambda: self.get_job(job_id, user_id),
            after_seq,
            timeout_s,
            self._settings.poll_interval_s,
        )

    async def referenced_blobs(self, digests: Sequence[bytes]) -> set[bytes]:
        """See `Store.referenced_blobs`."""
        if not digests:
            return set()
        rows = await self._run(lambda c: c.fetch(self._sql.referenced_blobs, list(digests)))
        return {bytes(row[0]) for row in rows}

    async def purge_finished_jobs(self, limit: int) -> int:
        """See `Store.purge_finished_jobs`."""
        check_positive("limit", limit)
        return _deleted(await self._run(lambda c: c.execute(self._sql.purge_jobs, limit)))

    # -- usage ledger ------------------------------------------------------------------------

    async def insert_usage(self, record: UsageRecord) -> None:
        """See `Store.insert_usage`."""
        labels, usage = record.labels, record.usage
        job_id = usage_job_id(record)
        await self._run(
            lambda c: c.execute(
                self._sql.insert_usage,
                job_id,
                labels.user_id,
                labels.operation,
                labels.request_id,
                record.model,
                record.attempt,
                record.outcome,
                usage.prompt_tokens,
                usage.cached_prompt_tokens,
                usage.output_tokens,
                usage.thinking_tokens,
                usage.image_output_tokens,
                usage.total_tokens,
                Decimal(repr(record.cost_usd)),
                record.duration_s,
            )
        )

    async def list_usage(self, job_id: str) -> list[UsageEntry]:
        """See `Store.list_usage`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            return []
        rows = await self._run(lambda c: c.fetch(self._sql.list_usage, parsed))
        return [
            UsageEntry(
                UsageRecord(
                    labels=CallLabels(
                        operation=row["op"],
                        user_id=row["user_id"],
                        job_id=str(row["job_id"]),
                        request_id=row["request_id"],
                    ),
                    model=row["model"],
                    attempt=row["attempt"],
                    outcome=row["outcome"],
                    duration_s=row["duration_s"],
                    usage=Usage(
                        prompt_tokens=row["prompt_tokens"],
                        cached_prompt_tokens=row["cached_prompt_tokens"],
                        output_tokens=row["output_tokens"],
                        thinking_tokens=row["thinking_tokens"],
                        image_output_tokens=row["image_output_tokens"],
                        total_tokens=row["total_tokens"],
                    ),
                    cost_usd=float(row["cost_usd"]),
                ),
                row["created_at"],
            )
            for row in rows
        ]


def _retrieve(task: asyncio.Task[Any]) -> None:
    # An attempt whose callers all gave up: its failure was handled (circuit), not lost.
    if not task.cancelled():
        task.exception()


class _Retry(Exception):
    """Rolls back one join attempt (raised inside its transaction)."""


async def run_migrations(settings: StoreSettings) -> list[int]:
    """Applies pending migrations to the configured schema on a dedicated connection.

    Returns the versions applied (empty when the schema was up to date). Raises `Unavailable`
    when the database cannot be reached within the connect timeout.
    """
    if settings.database_url is None:
        raise ValueError("migrations need store.database_url")
    try:
        conn = await asyncpg.connect(
            settings.database_url.get_secret_value(), timeout=settings.connect_timeout_s
        )
    except _UNREACHABLE_OR_SLOW as exc:
        raise errors.Unavailable(
            f"cannot connect to PostgreSQL to migrate ({type(exc).__name__})"
        ) from None
    try:
        return await migrations.migrate(conn, settings.schema_name)
    finally:
        await conn.close()
