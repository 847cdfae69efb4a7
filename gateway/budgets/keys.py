"""Names of budget keys, laid out for Redis Cluster like the limiter's (`gateway.limiter.keys`).

A user's budgets (day and month) share the user's hash tag, so one script call reserves both
atomically in one slot: `{<prefix>:budget:u:<user>}:<day|month>:<period label>`. A model's
fleet-wide daily cap has a tag of its own, `{<prefix>:budget:m:<model>}:day:<label>`, so the
slot of a busy model is not also the slot of every user's budgets; it is reserved in a second
step (see `gateway.budgets.enforcement`). The period is part of the name, so a new day or month
starts on a fresh key and the old one expires on its own. Caller-supplied parts are escaped as
the limiter's are.
"""

from __future__ import annotations

from gateway.budgets.periods import Period
from gateway.limiter.keys import key_part


def user_budget_key(prefix: str, user_id: str, period: Period) -> str:
    """The key of one user's spend in one period."""
    return f"{{{prefix}:budget:u:{key_part(user_id)}}}:{period.kind.value}:{period.label}"


def model_budget_key(prefix: str, model: str, period: Period) -> str:
    """The key of the fleet's spend on one model in one period."""
    return f"{{{prefix}:budget:m:{key_part(model)}}}:{period.kind.value}:{period.label}"


__all__ = ["model_budget_key", "user_budget_key"]
