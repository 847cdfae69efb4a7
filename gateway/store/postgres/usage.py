"""The usage ledger in PostgreSQL: one `ai_usage` row per upstream attempt."""

from __future__ import annotations

from decimal import Decimal

from gateway.model import CallLabels, Usage, UsageRecord
from gateway.store.base import UsageEntry, parse_job_id, usage_job_id
from gateway.store.postgres.pool import Pool, Record
from gateway.store.postgres.queries import Queries


def _entry(row: Record) -> UsageEntry:
    return UsageEntry(
        UsageRecord(
            labels=CallLabels(
                operation=row["op"],
                user_id=row["user_id"],
                job_id=str(row["job_id"]),
                request_id=row["request_id"],
                fence=row.get("fence"),
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


class PostgresUsage:
    """`UsageStore` on PostgreSQL."""

    def __init__(self, pool: Pool, queries: Queries) -> None:
        self._pool = pool
        self._q = queries

    async def insert_usage(self, record: UsageRecord) -> None:
        """See `UsageStore.insert_usage`."""
        labels, usage = record.labels, record.usage
        statement = self._q(
            "insert_usage",
            job_id=usage_job_id(record),
            user_id=labels.user_id,
            op=labels.operation,
            request_id=labels.request_id,
            model=record.model,
            attempt=record.attempt,
            outcome=record.outcome,
            fence=labels.fence,
            prompt_tokens=usage.prompt_tokens,
            cached_prompt_tokens=usage.cached_prompt_tokens,
            output_tokens=usage.output_tokens,
            thinking_tokens=usage.thinking_tokens,
            image_output_tokens=usage.image_output_tokens,
            total_tokens=usage.total_tokens,
            cost_usd=Decimal(repr(record.cost_usd)),
            duration_s=record.duration_s,
        )
        await self._pool.run(lambda c: c.execute(*statement))

    async def list_usage(self, job_id: str) -> list[UsageEntry]:
        """See `UsageStore.list_usage`."""
        parsed = parse_job_id(job_id)
        if parsed is None:
            return []
        statement = self._q("list_usage", job_id=parsed)
        return [_entry(row) for row in await self._pool.run(lambda c: c.fetch(*statement))]
