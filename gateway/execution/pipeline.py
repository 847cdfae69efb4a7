"""The shared life of one operation request, whatever the feature.

The cheapest checks that can refuse a request come first, the work that costs CPU, disk or
money last: `prepare` (idempotency key, tier, the sizes the message states) -> `run` or
`submit`: admission limit -> validation (images sniffed and hashed, once) -> result cache,
single-flight, cross-replica coalescing (`gateway.execution.executor`) -> run the spec against
the model (each model call passes the upstream limits first; input images are written to the
blob store only after that) -> result with its usage and cost, or a pending job handle.
Authentication comes before all of it, at the edge (`gateway.rpc.edge`).

Every RPC and the job workers go through here, so specs and servicers stay unaware of caching
and coalescing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import unicodedata
from dataclasses import dataclass
from typing import Any, Final, Literal, overload

from gateway import operations
from gateway.auth import Principal, require_tier
from gateway.budgets.enforcement import Budgets, Reservation, RunBudget
from gateway.config import Settings
from gateway.errors import InvalidArgument
from gateway.execution.executor import Executor
from gateway.execution.types import Call, InputWrite, Outcome, Pending, Runner, Spend
from gateway.jobs.priority import priority_of_tier
from gateway.limiter import RateLimiter
from gateway.model import (
    AttemptCallback,
    AttemptGate,
    CallLabels,
    ModelClient,
    ModelRequest,
    ModelResponse,
    TextCallback,
    UsageRecord,
)
from gateway.operations.base import OperationSpec, ProgressCallback, RunContext
from gateway.store.base import MAX_IDEMPOTENCY_KEY_CHARS, Claim, Delivery, JoinOutcome
from gateway.telemetry import tracing


class _GuardedClient:
    """The `ModelClient` a spec runs against: every upstream attempt, retries included, first
    passes the upstream limits (the user's on the route and the model's fleet-wide one), so the
    limits count what Gemini is asked, 429 storms included, then reserves its estimated cost
    against the spend budgets (`budget`; settled at its actual cost once made). A denial of the
    first attempt raises `RateLimited` (or `BudgetExceeded`) before any spend; a denied retry
    ends the call with the failure it retried (see `ModelClient.generate`). Every attempt is
    added to the request's `Spend`. The request's input images are written (`inputs`) only once
    an attempt has passed those limits and budgets.

    A run that makes several calls (`OperationSpec.upstream_calls`, e.g. one per thumbnail
    variation) has them all charged at once, before the first: admitted whole, or refused with
    nothing spent and a retry-after long enough for all of them. Charged call by call, a run
    could pay for some calls and be refused the rest, and a queued job retried at each
    retry-after would do so for as long as the limit stayed tight. Retries are charged one by
    one, when they happen. The budgets reserve those first attempts together the same way
    (`RunBudget`).
    """

    def __init__(
        self,
        inner: ModelClient,
        limiter: RateLimiter,
        operation: str,
        principal: Principal,
        spend: Spend,
        inputs: InputWrite,
        calls: int = 1,
        budget: RunBudget | None = None,
    ) -> None:
        self._inner = inner
        self._budget = budget
        self._limiter = limiter
        self._operation = operation
        self._principal = principal
        self._spend = spend
        self._inputs = inputs
        #: First attempts charged together, in advance, when there are several.
        self._calls = calls
        self._charged = False
        #: First attempts charged in advance and not made yet.
        self._prepaid = 0
        #: Why the advance charge was refused (every first attempt then fails the same way).
        self._refused: Exception | None = None
        self._lock = asyncio.Lock()

    async def _charge(self, model: str, attempt: int) -> None:
        principal = self._principal
        if attempt == 1 and self._calls > 1:
            async with self._lock:
                if self._refused is not None:
                    raise self._refused
                if not self._charged:
                    try:
                        await self._limiter.check_upstream(
                            self._operation, principal.user_id, principal.tier, model, self._calls
                        )
                    except Exception as exc:
                        self._refused = exc
                        raise
                    self._charged, self._prepaid = True, self._calls
                if self._prepaid > 0:
                    self._prepaid -= 1
                    return
        await self._limiter.check_upstream(
            self._operation, principal.user_id, principal.tier, model
        )

    async def generate(
        self,
        request: ModelRequest,
        *,
        labels: CallLabels,
        deadline: float | None = None,
        on_text: TextCallback | None = None,
        before_attempt: AttemptGate | None = None,
        on_attempt: AttemptCallback | None = None,
    ) -> ModelResponse:
        budget = self._budget
        #: The reservation of the attempt under way (attempts of one call are sequential).
        held: list[Reservation | None] = []

        async def charge(attempt: int) -> None:
            await self._charge(request.model, attempt)
            reservation = None if budget is None else await budget.reserve(request, attempt)
            try:
                await self._inputs()
                if before_attempt is not None:
                    await before_attempt(attempt)
            except BaseException:
                if budget is not None:
                    await asyncio.shield(budget.release(reservation))
                raise
            held.append(reservation)

        async def attempted(record: UsageRecord) -> None:
            self._spend.add(record)
            if budget is not None and held:
                # Shielded: a cancelled call still settles what its attempt cost.
                await asyncio.shield(budget.settle(held.pop(), record.cost_usd))
            if on_attempt is not None:
                await on_attempt(record)

        return await self._inner.generate(
            request,
            labels=labels,
            deadline=deadline,
            on_text=on_text,
            before_attempt=charge,
            on_attempt=attempted,
        )


#: Requests encoded in at most this many bytes are remembered once checked (`Pipeline.recall`).
RECALL_MAX_REQUEST_BYTES: Final = 8192
#: What the remembered requests may hold in all, their encodings counted twice (for the checked
#: copy); when full, they are forgotten and remembering starts again.
RECALL_MAX_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request `Pipeline.prepare` checked: its operation, the request, the caller and the
    caller's idempotency key ("" for none)."""

    operation: str
    #: The request as sent, its sizes checked (`OperationSpec.check_sizes`); `run` and `submit`
    #: validate it after admission.
    request: Any
    principal: Principal
    idempotency_key: str = ""
    #: The request message's encoding when an identical request may be recalled
    #: (`Pipeline.recall`): `run` remembers its checks under it.
    encoded: bytes | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """A request `Pipeline.run` admitted, validated and keyed before (`Pipeline.recall`): an
    identical one (the same operation, encoding and caller) is admitted like any request, but
    neither converted, validated nor hashed again."""

    prepared: Prepared
    validated: Any
    key: bytes | None
    #: The spec's prompt and schema versions the key was derived with (a request checked
    #: under other versions is checked again).
    versions: tuple[str, str]


class Pipeline:
    """Runs operations for authenticated callers.

    `limiter` enforces the policy table's rate limits (the embedded one, exact for a single
    replica, or the shared one when Redis is configured); `budgets` the spend budgets (None, or
    none configured: no budget). `executor` answers through the result cache and coalescing; a
    request that is neither cacheable nor keyed runs straight through it.
    """

    def __init__(
        self,
        settings: Settings,
        client: ModelClient,
        limiter: RateLimiter,
        executor: Executor,
        budgets: Budgets | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._limiter = limiter
        self._executor = executor
        self._budgets = budgets if budgets is not None and budgets.enabled else None
        #: (operation, encoding, caller) -> the checks `run` made of that request.
        self._checked: dict[tuple[str, bytes, Principal], Checked] = {}
        self._checked_bytes = 0

    @property
    def executor(self) -> Executor:
        """The cache and coalescing layer (and the job store behind it)."""
        return self._executor

    def recall(self, operation: str, encoded: bytes, principal: Principal) -> Checked | None:
        """The checks `run` made of an identical earlier request of `principal` (prepared with
        this `encoded`), or None. Only requests whose checks read nothing but the message (no
        images, nothing fetched) are prepared with their encoding; the settings those checks
        read (tiers, bounds, the model, the cache scope) do not change while the process runs.
        """
        if len(encoded) > RECALL_MAX_REQUEST_BYTES:
            return None
        checked = self._checked.get((operation, encoded, principal))
        if checked is None:
            return None
        spec = operations.get(operation)
        if checked.versions != (spec.prompt_version, spec.schema_version):
            return None
        tracing.annotate("viewbait.operation", operation)
        tracing.annotate("viewbait.recalled", True)
        return checked

    def _remember(self, prepared: Prepared, validated: Any, key: bytes | None) -> None:
        encoded = prepared.encoded
        assert encoded is not None
        size = 2 * len(encoded)
        if self._checked_bytes + size > RECALL_MAX_BYTES:
            self._checked.clear()
            self._checked_bytes = 0
        spec = operations.get(prepared.operation)
        self._checked[prepared.operation, encoded, prepared.principal] = Checked(
            prepared, validated, key, (spec.prompt_version, spec.schema_version)
        )
        self._checked_bytes += size

    def prepare(
        self,
        operation: str,
        request: Any,
        principal: Principal,
        *,
        idempotency_key: str = "",
        encoded: bytes | None = None,
    ) -> Prepared:
        """Checks what refuses a request before anything is spent on it: the idempotency key,
        the caller's tier and the sizes the request's message states (`check_sizes`: nothing is
        sniffed or hashed); returns the request for `run` or `submit`, which admit it, then
        validate it in full.

        Raises `InvalidArgument` or `PermissionDenied`; nothing has been spent or written then.
        With `encoded` (the request message's encoding; see `recall`), `run` remembers what
        it checks of the request.
        """
        if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise InvalidArgument.field(
                "idempotency_key",
                f"is {len(idempotency_key)} characters; the limit is {MAX_IDEMPOTENCY_KEY_CHARS}",
            )
        if any(unicodedata.category(c) == "Cc" for c in idempotency_key):
            # PostgreSQL's text cannot hold NUL; no key needs the others either.
            raise InvalidArgument.field(
                "idempotency_key", "holds a control character (NUL, tab, newline, ...); remove it"
            )
        policy = self._settings.policy(operation)
        tracing.annotate("viewbait.operation", operation)
        require_tier(principal, policy.tiers, operation)
        operations.get(operation).check_sizes(request, self._settings.bounds)
        if encoded is not None and len(encoded) > RECALL_MAX_REQUEST_BYTES:
            encoded = None
        return Prepared(operation, request, principal, idempotency_key, encoded)

    def validate(self, prepared: Prepared) -> Any:
        """The prepared request validated in full (`OperationSpec.validate`: images sniffed and
        hashed); raises `InvalidArgument`."""
        operation = prepared.operation
        with tracing.leaf("validate", {"viewbait.operation": operation}):
            return operations.get(operation).validate(prepared.request, self._settings.bounds)

    @overload
    async def run(
        self,
        prepared: Prepared | Checked,
        *,
        deadline: float | None,
        request_id: str = "",
        progress: ProgressCallback | None = None,
        long_poll: Literal[True] = True,
    ) -> Outcome[Any] | Pending: ...

    @overload
    async def run(
        self,
        prepared: Prepared | Checked,
        *,
        deadline: float | None,
        request_id: str = "",
        progress: ProgressCallback | None = None,
        long_poll: Literal[False],
    ) -> Outcome[Any]: ...

    async def run(
        self,
        prepared: Prepared | Checked,
        *,
        deadline: float | None,
        request_id: str = "",
        progress: ProgressCallback | None = None,
        long_poll: bool = True,
    ) -> Outcome[Any] | Pending:
        """Runs one prepared request end to end: the admission limit, validation, then the
        work.

        With `long_poll` (unary RPCs) a request still running after the configured long-poll
        window (bounded by `deadline`) answers `Pending`; otherwise it waits for the result.
        A non-empty idempotency key makes a repeat of the request return (or join) the first.
        Raises `RateLimited` (with the retry-after) when the caller is over the route's
        admission limit; a refused request has cost nothing upstream, nor been hashed.
        A request `recall` gave (`Checked`) is admitted like any other, then answered from its
        earlier checks.
        """
        if type(prepared) is Checked:
            checked = prepared
            prepared = checked.prepared
            await self._admit(prepared)
            operation, principal = prepared.operation, prepared.principal
            validated, key = checked.validated, checked.key
        else:
            assert isinstance(prepared, Prepared)
            await self._admit(prepared)
            operation, principal = prepared.operation, prepared.principal
            validated = self.validate(prepared)
            key = self._cache_key(operation, validated, principal)
            if prepared.encoded is not None:
                self._remember(prepared, validated, key)
        if key is not None:
            # A hit in the hot copy needs none of what a miss runs with (the `Call`).
            hit = await self._executor.hot_answer(operation, key, principal.user_id, request_id)
            if hit is not None:
                return hit
        call = self._call(
            operation,
            validated,
            principal,
            key,
            request_id=request_id,
            progress=progress,
            idempotency_key=prepared.idempotency_key,
            deadline=deadline,
            long_poll=long_poll,
        )
        return await self._executor.execute(call)

    async def submit(
        self, prepared: Prepared, *, delivery: Delivery = Delivery.INTERACTIVE
    ) -> JoinOutcome:
        """Queues a prepared request as a job for the workers (or, `delivery` BATCH, for the
        batchers), after the admission limit and validation (exactly the checks `run` makes).

        Returns the caller's job: an earlier one with the same idempotency key, the active job
        with the same cache key (joined), or a new queued one (`created`).
        """
        await self._admit(prepared)
        call = self.call(
            prepared.operation,
            self.validate(prepared),
            prepared.principal,
            idempotency_key=prepared.idempotency_key,
            long_poll=False,
        )
        return await self._executor.enqueue(dataclasses.replace(call, delivery=delivery))

    async def _admit(self, prepared: Prepared) -> None:
        principal = prepared.principal
        with tracing.leaf("admit", {"viewbait.operation": prepared.operation}):
            await self._limiter.admit(prepared.operation, principal.user_id, principal.tier)

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
        """What the executor needs to answer a request `run` admitted (or a queued job)."""
        return self._call(
            operation,
            validated,
            principal,
            self._cache_key(operation, validated, principal),
            request_id=request_id,
            progress=progress,
            idempotency_key=idempotency_key,
            deadline=deadline,
            long_poll=long_poll,
        )

    def _cache_key(self, operation: str, validated: Any, principal: Principal) -> bytes | None:
        """The result-cache key of a validated request; None when its route caches nothing."""
        policy = self._settings.policy(operation)
        if policy.ttl_s <= 0:
            return None
        # The identity, not the bare name: emulated answers never share keys or rows with
        # Gemini's.
        model = self._settings.model_identity(policy)
        return operations.get(operation).cache_key(
            validated, principal.user_id, model, policy.scope
        )

    def _call(
        self,
        operation: str,
        validated: Any,
        principal: Principal,
        key: bytes | None,
        *,
        request_id: str,
        progress: ProgressCallback | None,
        idempotency_key: str,
        deadline: float | None,
        long_poll: bool,
    ) -> Call:
        """`call` with the cache key `_cache_key` gave."""
        spec = operations.get(operation)
        policy = self._settings.policy(operation)
        model = self._settings.model_identity(policy)
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
            request_id=request_id,
        )

    def _runner(
        self,
        operation: str,
        validated: Any,
        principal: Principal,
        request_id: str,
        progress: ProgressCallback | None,
        inputs: InputWrite,
    ) -> Runner:
        spec = operations.get(operation)
        policy = self._settings.policy(operation)
        model = self._settings.model_name(policy)
        identity = self._settings.model_identity(policy)

        async def run(
            claim: Claim | None, run_deadline: float | None, spend: Spend
        ) -> Outcome[Any]:
            return await self._run_spec(
                spec,
                validated,
                principal,
                model,
                identity,
                claim=claim,
                request_id=request_id,
                deadline=run_deadline,
                progress=progress,
                inputs=inputs,
                spend=spend,
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
        claim: Claim | None,
        request_id: str,
        deadline: float | None,
        progress: ProgressCallback | None,
        inputs: InputWrite,
        spend: Spend,
    ) -> Outcome[Any]:
        """One run of the spec against `model` (the name Gemini is asked for), metered into
        `spend` and limited; the outcome names `identity` (`Settings.model_identity`). Its usage
        records name the execution it runs for and the fencing token of `claim`."""
        job_id = "" if claim is None else claim.job_id
        ctx = RunContext(
            user_id=principal.user_id,
            model=model,
            labels=CallLabels(
                operation=spec.name,
                user_id=principal.user_id,
                job_id=job_id,
                request_id=request_id,
                fence=None if claim is None else claim.fence,
            ),
            deadline=deadline,
            progress=progress,
        )
        calls = spec.upstream_calls(validated)
        budget = None
        if self._budgets is not None:
            budget = RunBudget(self._budgets, principal.user_id, principal.tier, calls)
        client = _GuardedClient(
            self._client,
            self._limiter,
            spec.name,
            principal,
            spend,
            inputs,
            calls=calls,
            budget=budget,
        )
        attributes = {"viewbait.operation": spec.name, "viewbait.job_id": job_id}
        try:
            with tracing.stage("operation.run", attributes):
                result = await spec.run(validated, client, ctx)
        finally:
            if budget is not None:
                await asyncio.shield(budget.close())
        return Outcome(result=result, model=identity, spend=spend)


__all__ = ["Pipeline", "Prepared"]
