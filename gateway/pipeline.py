"""The shared life of one operation request, whatever the feature.

tier check -> validate -> run the spec against the model -> result with its usage and cost.

Admission limits, the result cache, single-flight and cross-replica coalescing slot in here (in
that order, see DESIGN.md section 2) so that every RPC and the job runner share them; specs and
servicers stay unaware of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway import operations
from gateway.auth import Principal, require_tier
from gateway.config import Settings
from gateway.model import (
    CallLabels,
    ModelClient,
    ModelRequest,
    ModelResponse,
    TextCallback,
    Usage,
)
from gateway.operations.base import ProgressCallback, RunContext

ResultT = TypeVar("ResultT")


@dataclass(slots=True)
class Spend:
    """Usage and cost summed over the model calls behind one answer."""

    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    upstream_calls: int = 0

    def add(self, response: ModelResponse) -> None:
        """Adds one successful call (its attempts count as upstream calls)."""
        u, r = self.usage, response.usage
        self.usage = Usage(
            prompt_tokens=u.prompt_tokens + r.prompt_tokens,
            cached_prompt_tokens=u.cached_prompt_tokens + r.cached_prompt_tokens,
            output_tokens=u.output_tokens + r.output_tokens,
            thinking_tokens=u.thinking_tokens + r.thinking_tokens,
            image_output_tokens=u.image_output_tokens + r.image_output_tokens,
            total_tokens=u.total_tokens + r.total_tokens,
        )
        self.cost_usd += response.cost_usd
        self.upstream_calls += response.attempts


class _MeteredClient:
    """A `ModelClient` that adds every answer it passes on to a `Spend`."""

    def __init__(self, inner: ModelClient, spend: Spend) -> None:
        self._inner = inner
        self._spend = spend

    async def generate(
        self,
        request: ModelRequest,
        *,
        labels: CallLabels,
        deadline: float | None = None,
        on_text: TextCallback | None = None,
    ) -> ModelResponse:
        response = await self._inner.generate(
            request, labels=labels, deadline=deadline, on_text=on_text
        )
        self._spend.add(response)
        return response


@dataclass(frozen=True, slots=True)
class Outcome(Generic[ResultT]):
    """A finished operation and how it was produced."""

    result: ResultT
    model: str
    spend: Spend
    cached: bool = False
    coalesced: bool = False


class Pipeline:
    """Runs operations for authenticated callers."""

    def __init__(self, settings: Settings, client: ModelClient) -> None:
        self._settings = settings
        self._client = client

    def prepare(self, operation: str, request: Any, principal: Principal) -> Any:
        """Checks the caller's tier and validates the request; returns the validated request.

        Raises `PermissionDenied` or `InvalidArgument`; nothing has been spent or written then.
        """
        policy = self._settings.policy(operation)
        require_tier(principal, policy.tiers, operation)
        return operations.get(operation).validate(request, self._settings.bounds)

    async def run(
        self,
        operation: str,
        request: Any,
        principal: Principal,
        *,
        deadline: float | None,
        request_id: str = "",
        progress: ProgressCallback | None = None,
    ) -> Outcome[Any]:
        """Runs one request end to end for `principal`."""
        validated = self.prepare(operation, request, principal)
        spec = operations.get(operation)
        model = self._settings.model_name(self._settings.policy(operation))
        spend = Spend()
        ctx = RunContext(
            user_id=principal.user_id,
            model=model,
            labels=CallLabels(
                operation=operation, user_id=principal.user_id, request_id=request_id
            ),
            deadline=deadline,
            progress=progress,
        )
        result = await spec.run(validated, _MeteredClient(self._client, spend), ctx)
        return Outcome(result=result, model=model, spend=spend)
