"""The shared life of one operation request, whatever the feature.

tier check -> validate -> admission limit -> run the spec against the model (each model call
passes the upstream limits first) -> result with its usage and cost.

The result cache, single-flight and cross-replica coalescing slot in here too (after admission,
see DESIGN.md section 2) so that every RPC and the job runner share them; specs and servicers stay
unaware of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway import operations
from gateway.auth import Principal, require_tier
from gateway.config import Settings
from gateway.limiter import RateLimiter
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


class _LimitedClient:
    """A `ModelClient` that passes every call through the upstream limits first: the user's on
    the route and the model's fleet-wide one. A denial raises `RateLimited` before any spend."""

    def __init__(
        self, inner: ModelClient, limiter: RateLimiter, operation: str, principal: Principal
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._operation = operation
        self._principal = principal

    async def generate(
        self,
        request: ModelRequest,
        *,
        labels: CallLabels,
        deadline: float | None = None,
        on_text: TextCallback | None = None,
    ) -> ModelResponse:
        principal = self._principal
        await self._limiter.check_upstream(
            self._operation, principal.user_id, principal.tier, request.model
        )
        return await self._inner.generate(
            request, labels=labels, deadline=deadline, on_text=on_text
        )


@dataclass(frozen=True, slots=True)
class Outcome(Generic[ResultT]):
    """A finished operation and how it was produced."""

    result: ResultT
    model: str
    spend: Spend
    cached: bool = False
    coalesced: bool = False


class Pipeline:
    """Runs operations for authenticated callers.

    `limiter` enforces the policy table's rate limits; by default the embedded one (exact for a
    single replica), the server passes the shared one when Redis is configured.
    """

    def __init__(
        self, settings: Settings, client: ModelClient, limiter: RateLimiter | None = None
    ) -> None:
        self._settings = settings
        self._client = client
        self._limiter = limiter if limiter is not None else RateLimiter(settings)

    def prepare(self, operation: str, request: Any, principal: Principal) -> Any:
        """Checks the caller's tier and validates the request; returns the validated request.

        Raises `PermissionDenied` or `InvalidArgument`; nothing has been spent or written then.
        """
        policy = self._settings.policy(operation)
        require_tier(principal, policy.tiers, operation)
        return operations.get(operation).validate(request, self._settings.bounds)

    async def admit(self, operation: str, request: Any, principal: Principal) -> Any:
        """`prepare`, then the admission limit; returns the validated request.

        Raises what `prepare` raises, or `RateLimited` (with the retry-after) when the caller is
        over the route's admission limit; a refused request has cost nothing upstream.
        """
        validated = self.prepare(operation, request, principal)
        await self._limiter.admit(operation, principal.user_id, principal.tier)
        return validated

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
        validated = await self.admit(operation, request, principal)
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
        client = _LimitedClient(
            _MeteredClient(self._client, spend), self._limiter, operation, principal
        )
        result = await spec.run(validated, client, ctx)
        return Outcome(result=result, model=model, spend=spend)
