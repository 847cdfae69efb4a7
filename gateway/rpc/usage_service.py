"""UsageService over gRPC: converts messages and asks the usage reporter
(`gateway.usage_report`), which decides who may see what; its domain errors reach the caller
through the error-mapping interceptor."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf import timestamp_pb2
from grpc import aio
from viewbait.ai.v1 import common_pb2, usage_service_pb2, usage_service_pb2_grpc

from gateway.auth import Principal
from gateway.budgets import BudgetState
from gateway.errors import InvalidArgument
from gateway.rpc import bindings, convert
from gateway.rpc import context as request_context
from gateway.store.base import UsageTotals
from gateway.usage_report import UsageReport, UsageReporter

Context = aio.ServicerContext[Any, Any]

_BUDGET_KINDS = {
    "user_day": usage_service_pb2.BUDGET_KIND_USER_DAY,
    "user_month": usage_service_pb2.BUDGET_KIND_USER_MONTH,
    "model_day": usage_service_pb2.BUDGET_KIND_MODEL_DAY,
}


def _principal() -> Principal:
    principal = request_context.current().principal
    assert principal is not None, "AuthInterceptor runs before every servicer"
    return principal


def _time(
    request: usage_service_pb2.GetUsageRequest, name: Literal["start_time", "end_time"]
) -> datetime | None:
    """A timestamp field of the request (None when unset); `InvalidArgument` names a bad one."""
    if not request.HasField(name):
        return None
    stamp: timestamp_pb2.Timestamp = getattr(request, name)
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidArgument.field(name, f"is not a valid timestamp ({exc})") from None


def _timestamp(at: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _operation(op: str) -> common_pb2.Operation.ValueType:
    """The `Operation` of a ledger row (UNSPECIFIED for one this gateway no longer serves)."""
    binding = bindings.BINDINGS.get(op)
    return common_pb2.OPERATION_UNSPECIFIED if binding is None else binding.operation


#: Dollar amounts are reported to the ledger's precision (PostgreSQL keeps 12 decimals), so both
#: stores answer alike and sums carry no binary noise.
USD_DECIMALS = 12


def usd(amount: float) -> float:
    """A dollar amount as reported."""
    return round(amount, USD_DECIMALS)


def usage_totals(totals: UsageTotals) -> usage_service_pb2.UsageTotals:
    """Summed ledger rows in RPC terms."""
    return usage_service_pb2.UsageTotals(
        cost_usd=usd(totals.cost_usd),
        upstream_calls=totals.upstream_calls,
        **convert.token_counts(totals.usage),
        cache_hits=totals.cache_hits,
        coalesced_joins=totals.joins,
        saved_usd=usd(totals.saved_usd),
    )


def budget_status(budget: BudgetState) -> usage_service_pb2.BudgetStatus:
    """A budget as it stands now, in RPC terms."""
    return usage_service_pb2.BudgetStatus(
        kind=_BUDGET_KINDS.get(budget.kind, usage_service_pb2.BUDGET_KIND_UNSPECIFIED),
        subject=budget.subject,
        limit_usd=budget.limit_usd,
        spent_usd=budget.spent_usd,
        remaining_usd=budget.remaining_usd,
        reset_time=_timestamp(budget.resets_at),
    )


def usage_response(report: UsageReport) -> usage_service_pb2.GetUsageResponse:
    """A usage report in RPC terms."""
    query = report.query
    return usage_service_pb2.GetUsageResponse(
        user_id=query.user_id or "",
        fleet=query.user_id is None,
        start_time=_timestamp(query.start),
        end_time=_timestamp(query.end),
        rows=[
            usage_service_pb2.UsageRow(
                date=day.day.isoformat(),
                operation=_operation(day.op),
                model=day.model,
                totals=usage_totals(day.totals),
            )
            for day in report.days
        ],
        totals=usage_totals(report.totals),
        savings=[
            usage_service_pb2.OperationSavings(
                operation=_operation(saving.op),
                cache_hits=saving.cache_hits,
                coalesced_joins=saving.joins,
                saved_usd=usd(saving.saved_usd),
            )
            for saving in report.savings
        ],
        budgets=[budget_status(budget) for budget in report.budgets],
    )


class UsageServicer(usage_service_pb2_grpc.UsageServiceServicer):
    """Serves UsageService from a `UsageReporter`."""

    def __init__(self, reporter: UsageReporter) -> None:
        self._reporter = reporter

    async def GetUsage(
        self, request: usage_service_pb2.GetUsageRequest, context: Context
    ) -> usage_service_pb2.GetUsageResponse:
        report = await self._reporter.report(
            _principal(),
            user_id=request.user_id,
            fleet=request.fleet,
            start=_time(request, "start_time"),
            end=_time(request, "end_time"),
        )
        return usage_response(report)
