"""What the usage API answers (`UsageService.GetUsage`, without the wire): a user's usage, or
the fleet's, over a time range, from the usage ledger.

The ledger (`gateway.store.UsageStore`) holds every upstream attempt and every savings record
(an answer from the result cache, or one that joined work another caller paid for, with the
cost of the upstream work it did not repeat); savings records outside jobs are stored folded,
one row per user, operation, model and outcome per UTC second (`gateway.store.ledger`), so a
report's range resolves them to the second. A report sums it by UTC day, operation and model,
adds it all up, sums the savings by operation, and lists the budgets that remain
(`gateway.budgets.BudgetReader`, when budgets are wired in).

Who may see what: a user sees only their own usage; the service token (the trusted backend)
may ask for any user's, and for the fleet's. A range left open ends now and starts
`DEFAULT_RANGE` before its end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from gateway.auth import Principal, valid_user_id
from gateway.budgets import BudgetReader, BudgetState
from gateway.errors import FieldViolation, InvalidArgument, PermissionDenied
from gateway.store.base import UsageDay, UsageStore, UsageTotals

#: The range of a report that names no start: this long before its end.
DEFAULT_RANGE = timedelta(days=30)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """What a report covers, checked and with its defaults filled in."""

    #: Whose usage; None: the fleet's (every user).
    user_id: str | None
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class OperationSavings:
    """What the cache and coalescing saved on one operation."""

    op: str
    cache_hits: int
    joins: int
    saved_usd: float


@dataclass(frozen=True, slots=True)
class UsageReport:
    """A report: the query it answers, the ledger by day, operation and model, its sum, the
    savings by operation, and the budgets that remain."""

    query: UsageQuery
    days: list[UsageDay]
    totals: UsageTotals
    savings: list[OperationSavings]
    budgets: list[BudgetState]


def check_query(
    principal: Principal,
    *,
    user_id: str,
    fleet: bool,
    start: datetime | None,
    end: datetime | None,
    now: datetime,
) -> UsageQuery:
    """The query a caller may run: `user_id` empty means the caller's own; another user's, or
    the fleet's (`fleet`), needs the service token (`PermissionDenied` otherwise). Open ends
    default to now and `DEFAULT_RANGE` before the end. `InvalidArgument` names every bad field.
    """
    violations = []
    if fleet and user_id:
        violations.append(FieldViolation("user_id", "must be empty with fleet"))
    elif user_id and not valid_user_id(user_id):
        violations.append(FieldViolation("user_id", "is not a user id"))
    end = now if end is None else end
    if start is None:
        try:
            start = end - DEFAULT_RANGE
        except OverflowError:
            start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        violations.append(FieldViolation("start_time", "must be before end_time"))
    if violations:
        raise InvalidArgument(violations)
    service = principal.via == "service"
    if fleet and not service:
        raise PermissionDenied("fleet usage needs the service token; leave fleet unset")
    if user_id and user_id != principal.user_id and not service:
        raise PermissionDenied(
            "a user may see only their own usage: leave user_id empty (or set it to your own)"
        )
    return UsageQuery(None if fleet else (user_id or principal.user_id), start, end)


def savings_by_operation(days: Sequence[UsageDay]) -> list[OperationSavings]:
    """The savings of `days` by operation (those with a hit or a join), by operation name."""
    sums: dict[str, UsageTotals] = {}
    for day in days:
        earlier = sums.get(day.op)
        sums[day.op] = day.totals if earlier is None else earlier + day.totals
    return [
        OperationSavings(op, t.cache_hits, t.joins, t.saved_usd)
        for op, t in sorted(sums.items())
        if t.cache_hits or t.joins
    ]


class UsageReporter:
    """Answers usage queries from the ledger, with the budgets `budgets` reads (None: budgets
    are not listed)."""

    def __init__(
        self,
        store: UsageStore,
        budgets: BudgetReader | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._store = store
        self._budgets = budgets
        self._now = clock

    async def report(
        self,
        principal: Principal,
        *,
        user_id: str = "",
        fleet: bool = False,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> UsageReport:
        """The report `principal` asks for (see `check_query` for who may see what)."""
        query = check_query(
            principal, user_id=user_id, fleet=fleet, start=start, end=end, now=self._now()
        )
        days = await self._store.usage_by_day(query.user_id, query.start, query.end)
        totals = sum((day.totals for day in days), UsageTotals())
        return UsageReport(
            query,
            days,
            totals,
            savings_by_operation(days),
            await self._budget_states(query, principal),
        )

    async def _budget_states(self, query: UsageQuery, principal: Principal) -> list[BudgetState]:
        """The budgets of the report's subject: the user's (at the caller's tier), or the
        fleet-wide caps."""
        if self._budgets is None:
            return []
        if query.user_id is None:
            return list(await self._budgets.model_budgets())
        return list(await self._budgets.user_budgets(query.user_id, principal.tier.value))
