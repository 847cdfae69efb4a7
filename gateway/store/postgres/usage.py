"""The usage ledger in PostgreSQL: one `ai_usage` row per upstream attempt, and per savings
record or fold of savings records (`events` of them, `gateway.store.base.UsageEntry`), rolled
up after their retention into `ai_usage_daily` (one row per UTC day, user, operation and
model)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from gateway.model import CallLabels, Usage, UsageRecord
from gateway.store.base import (
    UsageDay,
    UsageEntry,
    UsageTotals,
    check_positive,
    entry_job_id,
    parse_job_id,
)
from gateway.store.postgres.pool import Pool, Record, deleted, usd
from gateway.store.postgres.queries import Queries


def usage_of(row: Record) -> Usage:
    """The token counts of a row with the ledger's token columns (`ai_usage`, `ai_jobs`,
    `ai_usage_daily`)."""
    return Usage(
        prompt_tokens=row["prompt_tokens"],
        cached_prompt_tokens=row["cached_prompt_tokens"],
        output_tokens=row["output_tokens"],
        thinking_tokens=row["thinking_tokens"],
        image_output_tokens=row["image_output_tokens"],
        total_tokens=row["total_tokens"],
    )


def _entry(row: Record) -> UsageEntry:
    return UsageEntry(
        UsageRecord(
            labels=CallLabels(
                operation=row["op"],
                user_id=row["user_id"],
                job_id="" if row["job_id"] is None else str(row["job_id"]),
                request_id=row["request_id"],
                fence=row.get("fence"),
            ),
            model=row["model"],
            attempt=row["attempt"],
            outcome=row["outcome"],
            duration_s=row["duration_s"],
            usage=usage_of(row),
            cost_usd=float(row["cost_usd"]),
            saved_usd=float(row["saved_usd"]),
        ),
        row["created_at"],
        row["events"],
    )


def _day(row: Record) -> UsageDay:
    return UsageDay(
        row["day"],
        row["op"],
        row["model"],
        UsageTotals(
            upstream_calls=row["upstream_calls"],
            usage=usage_of(row),
            cost_usd=float(row["cost_usd"]),
            cache_hits=row["cache_hits"],
            joins=row["joins"],
            saved_usd=float(row["saved_usd"]),
        ),
    )


class PostgresUsage:
    """`UsageStore` on PostgreSQL."""

    def __init__(self, pool: Pool, queries: Queries) -> None:
        self._pool = pool
        self._q = queries

    async def insert_usage_entries(self, entries: Sequence[UsageEntry]) -> None:
        """See `UsageStore.insert_usage_entries`: one multi-row insert."""
        if not entries:
            return
        # Every label is checked before anything is sent: the write is all or nothing.
        job_ids = [entry_job_id(e) for e in entries]
        records = [e.record for e in entries]
        usages = [r.usage for r in records]
        statement = self._q(
            "insert_usage",
            job_ids=job_ids,
            user_ids=[r.labels.user_id for r in records],
            ops=[r.labels.operation for r in records],
            request_ids=[r.labels.request_id for r in records],
            models=[r.model for r in records],
            attempts=[r.attempt for r in records],
            outcomes=[r.outcome for r in records],
            fences=[r.labels.fence for r in records],
            prompt_tokens=[u.prompt_tokens for u in usages],
            cached_prompt_tokens=[u.cached_prompt_tokens for u in usages],
            output_tokens=[u.output_tokens for u in usages],
            thinking_tokens=[u.thinking_tokens for u in usages],
            image_output_tokens=[u.image_output_tokens for u in usages],
            total_tokens=[u.total_tokens for u in usages],
            costs=[usd(r.cost_usd) for r in records],
            saved=[usd(r.saved_usd) for r in records],
            durations=[float(r.duration_s) for r in records],
            created_at=[e.created_at for e in entries],
            events=[e.events for e in entries],
        )
        await self._pool.run(lambda c: c.execute(*statement))

    async def list_usage(self, job_id: str) -> list[UsageEntry]:
        """See `UsageStore.list_usage`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            return []
        statement = self._q("list_usage", job_id=parsed)
        return [_entry(row) for row in await self._pool.run(lambda c: c.fetch(*statement))]

    async def usage_by_day(
        self, user_id: str | None, start: datetime, end: datetime
    ) -> list[UsageDay]:
        """See `UsageStore.usage_by_day`."""
        if user_id is None:
            statement = self._q("usage_by_day_of_fleet", start=start, end=end)
        else:
            statement = self._q("usage_by_day_of_user", user_id=user_id, start=start, end=end)
        return [_day(row) for row in await self._pool.run(lambda c: c.fetch(*statement))]

    async def roll_up_usage(self, before: date, limit: int) -> int:
        """See `UsageStore.roll_up_usage`."""
        check_positive("limit", limit)
        statement = self._q("roll_up_usage", before=before, limit=limit)
        moved = await self._pool.run(lambda c: c.fetchval(*statement))
        return int(moved or 0)

    async def purge_usage_days(self, before: date, limit: int) -> int:
        """See `UsageStore.purge_usage_days`."""
        check_positive("limit", limit)
        statement = self._q("purge_usage_days", before=before, limit=limit)
        return deleted(await self._pool.run(lambda c: c.execute(*statement)))
