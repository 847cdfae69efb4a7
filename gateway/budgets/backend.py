"""What a budget backend does: the contract the embedded and the Redis backend share.

A backend keeps one integer per key: the spend in nano-USD of one budget in one period
(settled costs plus the reservations of attempts in flight). It knows nothing of users, models
or prices; limits come with every call, so a changed setting applies at once.

- `reserve(holds)`: all or nothing. Allowed only if, for every hold, the key's spend is below
  its limit and the spend plus the amount does not exceed it; then every key grows by its
  amount. A refusal changes nothing. Either way the answer carries each key's spend.
- `adjust(changes)`: adds each delta (a settlement: actual cost minus what was reserved; a
  refund: minus the reservation). Spend never goes below zero, and a negative delta for a key
  that no longer exists does nothing (its period is over and it expired).
- `read(keys)`: each key's spend (0 for a key that does not exist).

Every write sets the key to expire `ttl_ms` later: the caller passes the time left in the
key's period plus a grace for late settlements, so keys vanish once nothing can change them.
Amounts stay integers below 2**53 (see `gateway.config.MAX_BUDGET_USD`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol


@dataclass(frozen=True, slots=True)
class Hold:
    """One budget's part of a reservation: `amount` against `limit` on `key`."""

    key: str
    amount: int
    limit: int
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Change:
    """A settlement or refund: `delta` added to `key`'s spend."""

    key: str
    delta: int
    ttl_ms: int


class Answer(NamedTuple):
    """A reservation's outcome and each key's spend: after it when allowed, as it stands when
    refused."""

    allowed: bool
    spent: tuple[int, ...]


class BudgetBackendError(Exception):
    """The backend could not answer in time (Redis unreachable, slow or failing)."""


class BudgetBackend(Protocol):
    """Where budget spend lives: in this process, or shared in Redis."""

    async def reserve(self, holds: Sequence[Hold]) -> Answer:
        """Reserves every hold or none (module docstring). Raises `BudgetBackendError`."""
        ...

    async def adjust(self, changes: Sequence[Change]) -> None:
        """Adds each change's delta (module docstring). Raises `BudgetBackendError`."""
        ...

    async def read(self, keys: Sequence[str]) -> list[int]:
        """Each key's spend. Raises `BudgetBackendError`."""
        ...


__all__ = ["Answer", "BudgetBackend", "BudgetBackendError", "Change", "Hold"]
