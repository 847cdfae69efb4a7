"""The shared life of one operation request, whatever the feature.

tier check -> validate -> admission limit -> result cache, single-flight, cross-replica
coalescing (`gateway.execution`) -> run the spec against the model (each model call passes the
upstream limits first) -> result with its usage and cost, or a pending job handle.

Every RPC (and later the job runner) goes through here, so specs and servicers stay unaware of
caching and coalescing.
"""

from __future__ import annotations

from typing import Any, Literal, overload

from gateway import operations
from gateway.auth import Principal, require_tier
from gateway.config import Settings
from gateway.errors import InvalidArgument, Unimplemented
from gateway.execution import Call, Executor, InputWrite, Outcome, Pending, Runner, Spend
from gateway.jobs.priority import priority_of_tier
from gateway.limiter import RateLimiter
from gateway.model import (
    AttemptGate,
    CallLabels,
    ModelClient,
    ModelRequest,
    ModelResponse,
    TextCallback,
)
from gateway.operations.base import OperationSpec, ProgressCallback, RunContext
from gateway.store.base import MAX_IDEMPOTENCY_KEY_CHARS, JoinOutcome


class _GuardedClient:
    """The `ModelClient` a spec runs against: every upstream attempt, retries included, first
    passes the upstream limits (the user's on the route and the model's fleet-wide one), so the
    limits count what Gemini is asked, 429 storms included. A denial of the first attempt raises
    `RateLimited` before any spend; a denied retry ends the call with the failure it retried
    (see `ModelClient.generate`). Every answer is added to the request's `Spend`. The request's
    input images are written (`inputs`) only once an attempt has passed those limits."""

    def __init__(
        self,
        inner: ModelClient,
        limiter: RateLimiter,
        operation: str,
        principal: Principal,
        spend: Spend,
        inputs: InputWrite,
    ) -> None:
        self._inner = inner
        self._limiter = limiter
        self._operation = operation
        self._principal = principal
        self._spend = spend
        self._inputs = inputs

    async def generate(
        self,
        request: ModelRequest,
        *,
        labels: CallLabels,
        deadline: float | None = None,
        on_text: TextCallback | None = None,
        before_attempt: AttemptGate | None = None,
    ) -> ModelResponse:
        principal = self._principal

        async def charge(attempt: int) -> None:
            await self._limiter.check_upstream(
                self._operation, principal.user_id, principal.tier, request.model
            )
            await self._inputs()
            if before_attempt is not None:
                await before_attempt(attempt)

        response = await self._inner.generate(
            request, labels=labels, deadline=deadline, on_text=on_text, before_attempt=charge
        )
        self._spend.add(response)
        return response


class Pipeline:
    """Runs operations for authenticated callers.

    `limiter` enforces the policy table's rate limits; by default the embedded one (exact for a
    single replica), the server passes the shared one when Redis is configured. `executor`
    answers through the result cache and coalescing; without one, every request runs.
    """

    def __init__(
        self,
        settings: Settings,
        client: ModelClient,
        limiter: RateLimiter | None = None,
        executor: Executor | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._limiter = limiter if limiter is not None else RateLimiter(settings)
        self._executor = executor

    @property
    def executor(self) -> Executor | None:
        """The cache and coalescing layer (None: every request runs)."""
        return self._executor

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

    @overload
    async def run(
        self,
        operation: str,
        request: Any,
        principal: Principal,
        *,
        deadline: float | None,
        request_id: str = "",
        progress: ProgressCallback | None = None,
        idempotency_key: str = "",
        long_poll: Literal[True] = True,
    ) -> Outcome[Any] | Pending: ...

    @overload
    async def run(
        self,
        operation: str,
        request: Any,
        principal: Principal,
        *,
        deadline: float | None,
        request_id: str = "",
        progress: ProgressCallback | None = None,
        idempotency_key: str = "",
        long_poll: Literal[False],
    ) -> Outcome[Any]: ...

    async def run(
        self,
        operation: str,
        request: Any,
        principal: Principal,
        *,
        deadline: float | None,
        request_id: str = "",
        progress: ProgressCallback | None = None,
        idempotency_key: str = "",
        long_poll: bool = True,
    ) -> Outcome[Any] | Pending:
        """Runs one request end to end for `principal`.

        With `long_poll` (unary RPCs) a request still running after the configured long-poll
        window (bounded by `deadline`) answers `Pending`; otherwise it waits for the result.
        A non-empty `idempotency_key` makes a repeat of the request return (or join) the first.
        """
        validated = await self._admit_keyed(operation, request, principal, idempotency_key)
        if self._executor is None:
            runner = self._runner(operation, validated, principal, request_id, progress)
            return await runner("", deadline)
        call = self.call(
            operation,
            validated,
            principal,
            request_id=request_id,
            progress=progress,
            idempotency_key=idempotency_key,
            deadline=deadline,
            long_poll=long_poll,
        )
        return await self._executor.execute(call)

    async def submit(
        self, operation: str, request: Any, principal: Principal, *, idempotency_key: str = ""
    ) -> JoinOutcome:
        """Queues a request as a job for the workers, after exactly the checks `run` makes.

        Returns the caller's job: an earlier one with the same idempotency key, the active job
        with the same cache key (joined), or a new queued one (`created`).
        """
        if self._executor is None:
            raise Unimplemented("jobs need the result store; this pipeline runs inline only")
        validated = await self._admit_keyed(operation, request, principal, idempotency_key)
        call = self.call(
            operation, validated, principal, idempotency_key=idempotency_key, long_poll=False
        )
        return await self._executor.enqueue(call)

    async def _admit_keyed(
        self, operation: str, request: Any, principal: Principal, idempotency_key: str
    ) -> Any:
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument.field(
                "idempotency_key",
                f"is {len(idempotency_key)} characters; the limit is {MAX_IDEMPOTENCY_KEY_CHARS}",
            )
        return await self.admit(operation, request, principal)

    def call(
        self,
        operation: str,
        validated: Any,
        principal: Principal,
        *,
        request_id: str = "",
        progress: ProgressCallback | None = None,
        idempotency_key: str = "",
        deadline: float | None = None,
        long_poll: bool = True,
    ) -> Call:
        """What the executor needs to answer a request `admit` accepted (or a queued job)."""
        spec = operations.get(operation)
        policy = self._settings.policy(operation)
        # The identity, not the bare name: emulated answers never share keys or rows with
        # Gemini's.
        model = self._settings.model_identity(policy)
        key = None
        if policy.ttl_s > 0:
            key = spec.cache_key(validated, principal.user_id, model, policy.scope)
        inputs = InputWrite()
        return Call(
            spec=spec,
            request=validated,
            user_id=principal.user_id,
            model=model,
            run=self._runner(operation, validated, principal, request_id, progress, inputs),
            key=key,
            scope=policy.scope,
            ttl_s=policy.ttl_s,
            idempotency_key=idempotency_key or None,
            priority=priority_of_tier(principal.tier),
            deadline=deadline,
            long_poll=long_poll,
            inputs=inputs,
        )

    def _runner(
        self,
        operation: str,
        validated: Any,
        principal: Principal,
        request_id: str,
        progress: ProgressCallback | None,
        inputs: InputWrite | None = None,
    ) -> Runner:
        spec = operations.get(operation)
        policy = self._settings.policy(operation)
        model = self._settings.model_name(policy)
        identity = self._settings.model_identity(policy)

        async def run(job_id: str, run_deadline: float | None) -> Outcome[Any]:
            return await self._run_spec(
                spec,
                validated,
                principal,
                model,
                identity,
                job_id=job_id,
                request_id=request_id,
                deadline=run_deadline,
                progress=progress,
                inputs=InputWrite() if inputs is None else inputs,
            )

        return run

    async def _run_spec(
        self,
        spec: OperationSpec[Any, Any],
        validated: Any,
        principal: Principal,
        model: str,
        identity: str,
        *,
        job_id: str,
        request_id: str,
        deadline: float | None,
        progress: ProgressCallback | None,
        inputs: InputWrite,
    ) -> Outcome[Any]:
        """One run of the spec against `model` (the name Gemini is asked for), metered and
        limited; the outcome names `identity` (`Settings.model_identity`)."""
        spend = Spend()
        ctx = RunContext(
            user_id=principal.user_id,
            model=model,
            labels=CallLabels(
                operation=spec.name,
                user_id=principal.user_id,
                job_id=job_id,
                request_id=request_id,
            ),
            deadline=deadline,
            progress=progress,
        )
        client = _GuardedClient(self._client, self._limiter, spec.name, principal, spend, inputs)
        result = await spec.run(validated, client, ctx)
        return Outcome(result=result, model=identity, spend=spend)


__all__ = ["Outcome", "Pending", "Pipeline", "Spend"]
