"""Spend budgets in USD: per user per period (day, month) and fleet-wide per model per day.

Every upstream attempt reserves its estimated cost against the budgets that apply to it before
it is made, and settles the actual cost (from Gemini's `usageMetadata`) after it; an attempt that
fails without charge is refunded. Cache hits and coalesced joins make no upstream attempt, so a
spent budget never refuses them.

This module holds what the rest of the gateway reads about budgets (`BudgetState`,
`BudgetReader`); the enforcement lives beside it (docs/budgets.md):

- `periods`: UTC days and months of an injected wall clock.
- `estimate`: an attempt's expected cost from its request, at the price table.
- `keys`: the key layout (a user's budgets in one Cluster slot, each model cap in its own).
- `backend`: the contract of a budget backend; `embedded` (in process) and `shared` (Redis, one
  script) implement it.
- `enforcement`: `Budgets` (reserve, settle, failure modes; it is the `BudgetReader` a running
  gateway exposes as `GatewayServer.budgets`) and `RunBudget` (one run's reservations).
- `checks`: budget settings that cannot work, for `gateway.config.deployment_problems`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget as it stands now."""

    #: Which budget: "user_day", "user_month", or "model_day" (fleet-wide cap per model).
    kind: str
    #: What it applies to: the user id, or the model name for a fleet cap.
    subject: str
    limit_usd: float
    #: Settled spend plus the reservations of attempts in flight.
    spent_usd: float
    #: When the period ends and the budget starts again at zero.
    resets_at: datetime

    @property
    def remaining_usd(self) -> float:
        """What is left (never negative; in-flight attempts may overrun it slightly)."""
        return max(0.0, self.limit_usd - self.spent_usd)


class BudgetReader(Protocol):
    """Reads budgets without changing them (the usage API, metrics)."""

    async def user_budgets(self, user_id: str, tier: str) -> Sequence[BudgetState]:
        """The budgets that apply to the user (none when the tier has no budget)."""
        ...

    async def model_budgets(self) -> Sequence[BudgetState]:
        """The fleet-wide daily caps, one per capped model."""
        ...


__all__ = ["BudgetReader", "BudgetState"]
