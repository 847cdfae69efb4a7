"""The usage ledger as a `gateway.model.UsageSink`: every upstream attempt, into the store.

The sink contract says recording must never fail the call it describes, so a store that cannot
take a record logs it (without secrets: labels, model, tokens, cost) and drops it.
"""

from __future__ import annotations

import logging

from gateway.errors import Unavailable
from gateway.model import UsageRecord
from gateway.store.base import UsageStore

log = logging.getLogger(__name__)


class StoreUsageSink:
    """Writes usage records to `UsageStore.insert_usage`."""

    def __init__(self, store: UsageStore) -> None:
        self._store = store
        #: Records that could not be written (for metrics and tests).
        self.dropped = 0

    async def record(self, record: UsageRecord) -> None:
        """Stores one record; logs and drops it when the store is unavailable."""
        try:
            await self._store.insert_usage(record)
        except (Unavailable, ValueError) as exc:
            self.dropped += 1
            log.error(
                "usage record dropped (%s): operation=%s user=%s job=%s model=%s attempt=%d "
                "outcome=%s tokens=%d cost_usd=%.6f",
                exc,
                record.labels.operation,
                record.labels.user_id,
                record.labels.job_id,
                record.model,
                record.attempt,
                record.outcome,
                record.usage.total_tokens,
                record.cost_usd,
            )
