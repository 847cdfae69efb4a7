"""Server interceptors, each doing one job, in the order they wrap an RPC (outermost first):

1. `RequestContextInterceptor`: request id (from `x-request-id` or new), deadline and the caller
   into context, and the RPC's span, its parent the caller's W3C `traceparent`
   (`gateway.telemetry.tracing`).
2. `LoggingInterceptor`: one structured log line per RPC with its outcome and duration, and the
   same outcome and duration counted in the RPC metrics (one layer, not two: every call pays for
   each layer it passes).
3. `ErrorMappingInterceptor`: domain errors to gRPC statuses through the single table.
4. `InFlightInterceptor`: caps the RPCs in flight, on the replica and per user (load shedding).
5. `AuthInterceptor`: authenticates the caller; nothing unauthenticated reaches a servicer.

The last two decide at `intercept_service`, from the metadata alone, before grpc reads the
request (`gateway.rpc.edge`): authentication first, then the caps. What they refuse never costs
the receiving and parsing of its message, yet passes the first three like any other RPC.

They apply to the gateway's own services (`/viewbait.`); health checking and reflection pass
through untouched so probes need no credentials and are never shed.

The server installs them as one `GatewayInterceptors`: grpc runs one `intercept_service`
coroutine per interceptor for every RPC, and each of these would only ask the one below for
the handler and then take its turn with it; one dispatch gives each its turn in the same order.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc import aio

from gateway import errors
from gateway.auth import Authenticator
from gateway.limiter.concurrency import InFlight
from gateway.rpc import context as request_context
from gateway.rpc import edge
from gateway.rpc.status import to_rpc_status
from gateway.telemetry import tracing

if TYPE_CHECKING:
    from gateway.telemetry.metrics import RpcMetrics

    _Handler = grpc.RpcMethodHandler[Any, Any]

log = logging.getLogger("gateway.rpc")

UnaryBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]

_OWN_SERVICES = "/viewbait."
_MAX_REQUEST_ID = 128

#: (request streaming, response streaming) -> the attribute of a handler's behaviour, and how
#: to build a handler of that kind.
_KINDS: dict[tuple[bool, bool], tuple[str, Callable[..., _Handler]]] = {
    (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
    (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
    # Only refusals decided at the edge (`gateway.rpc.edge`): the request is never read.
    (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
    (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
}


class _GatewayInterceptor(aio.ServerInterceptor):
    """Intercepts the RPCs of the gateway's own services; the others pass untouched."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_OWN_SERVICES):
            return handler
        return self.handle(handler, handler_call_details)

    def handle(self, handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
        """The handler an RPC of the gateway's services runs with (override)."""
        raise NotImplementedError


class GatewayInterceptors(aio.ServerInterceptor):
    """`interceptors` (outermost first) as one grpc interceptor: the handler is looked up once,
    then each interceptor's `handle` takes its turn with it, innermost first, exactly as they
    would nested (each asks the one below it first)."""

    def __init__(self, *interceptors: _GatewayInterceptor) -> None:
        self._innermost_first = tuple(reversed(interceptors))

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_OWN_SERVICES):
            return handler
        for interceptor in self._innermost_first:
            handler = interceptor.handle(handler, handler_call_details)
        return handler


class _WrappingInterceptor(_GatewayInterceptor):
    """Wraps the behaviours of the gateway's own RPCs.

    grpc asks every interceptor for every RPC; the wrapped handler of a method is built once and
    reused while the handler below it stays the same (it does: handlers are registered once,
    and an edge refusal is one shared handler per response kind, kept apart).
    """

    def __init__(self) -> None:
        #: Method -> (the handler below, its wrapped handler).
        self._wrapped: dict[str, tuple[_Handler, _Handler]] = {}
        #: Method -> (the edge refusal below, its wrapped handler).
        self._refusals: dict[str, tuple[_Handler, _Handler]] = {}

    def handle(self, handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
        method: str = details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        cache = self._refusals if handler.request_streaming else self._wrapped
        known = cache.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(method, handler)
        cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: _Handler) -> _Handler:
        """`handler` with its behaviour passed through `unary` or `stream` (a streamed
        request, an edge refusal's, goes through as the `request`, untouched)."""
        attribute, build = _KINDS[handler.request_streaming, handler.response_streaming]
        behaviour = getattr(handler, attribute)
        wrapped: Callable[..., Any]
        if handler.response_streaming:
            inner_stream = cast(StreamBehavior, behaviour)

            async def stream(
                request: Any, ctx: aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                async for item in self.stream(method, request, ctx, inner_stream):
                    yield item

            wrapped = stream
        else:
            # grpc.aio hands coroutine behaviours to aio servers; the stubs only know sync ones.
            inner_unary = cast(UnaryBehavior, behaviour)

            async def unary(request: Any, ctx: aio.ServicerContext[Any, Any]) -> Any:
                return await self.unary(method, request, ctx, inner_unary)

            wrapped = unary
        return build(wrapped, handler.request_deserializer, handler.response_serializer)

    async def unary(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: UnaryBehavior
    ) -> Any:
        """Runs a unary-response behaviour (override)."""
        return await inner(request, ctx)

    async def stream(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: StreamBehavior
    ) -> AsyncIterator[Any]:
        """Runs a streamed-response behaviour (override)."""
        async for item in inner(request, ctx):
            yield item


def _metadata(ctx: aio.ServicerContext[Any, Any]) -> list[tuple[str, str | bytes]]:
    return [(m.key, m.value) for m in ctx.invocation_metadata() or ()]  # type: ignore[attr-defined]


class RequestContextInterceptor(_WrappingInterceptor):
    """Binds a `RequestContext` (request id, deadline, the caller authenticated at the edge)
    and the RPC's span for the RPC's duration; the span ends with the RPC's status."""

    def _context(
        self, method: str, ctx: aio.ServicerContext[Any, Any]
    ) -> tuple[request_context.RequestContext, tracing.RpcSpan | None]:
        request_id = ""
        traceparent = tracestate = None
        for key, value in _metadata(ctx):
            if not isinstance(value, str):
                continue
            if key == "x-request-id":
                request_id = value.strip()[:_MAX_REQUEST_ID]
            elif key == "traceparent":
                traceparent = value
            elif key == "tracestate":
                tracestate = value
        remaining = ctx.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        rc = request_context.RequestContext(
            method=method,
            request_id=request_id or uuid.uuid4().hex,
            deadline=deadline,
            principal=edge.caller(),
        )
        return rc, tracing.start_rpc(method, rc.request_id, traceparent, tracestate)

    async def unary(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: UnaryBehavior
    ) -> Any:
        rc, span = self._context(method, ctx)
        token = request_context.bind(rc)
        error: BaseException | None = None
        try:
            return await inner(request, ctx)
        except BaseException as exc:
            error = exc
            raise
        finally:
            if span is not None:
                _end_span(span, ctx, error)
            request_context.unbind(token)

    async def stream(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: StreamBehavior
    ) -> AsyncIterator[Any]:
        rc, span = self._context(method, ctx)
        token = request_context.bind(rc)
        error: BaseException | None = None
        try:
            async for item in inner(request, ctx):
                yield item
        except BaseException as exc:
            error = exc
            raise
        finally:
            if span is not None:
                _end_span(span, ctx, error)
            request_context.unbind(token)


def _end_span(
    span: tracing.RpcSpan, ctx: aio.ServicerContext[Any, Any], error: BaseException | None
) -> None:
    code = _final_code(ctx, error)
    span.end(code.value[0], code.name, error)


def _final_code(ctx: aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    """The status an RPC ended with: the one it was aborted with, else what grpc makes of
    how its behaviour ended."""
    code: object = ctx.code()
    return code if isinstance(code, grpc.StatusCode) else _unaborted_code(ctx, error)


def _unaborted_code(
    ctx: aio.ServicerContext[Any, Any], error: BaseException | None
) -> grpc.StatusCode:
    """The status of an RPC that ended without an abort (the context's code is unset then)."""
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError):
        # grpc cancels the handler when the caller goes away or its deadline passes.
        remaining = ctx.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    # Any other exception from below becomes UNKNOWN in grpc.
    return grpc.StatusCode.UNKNOWN


class LoggingInterceptor(_WrappingInterceptor):
    """One log line per RPC (method, code, duration, request id, user) and, given `metrics`,
    its code and duration counted there."""

    def __init__(self, metrics: RpcMetrics | None = None) -> None:
        super().__init__()
        self._metrics = metrics

    def _log(self, ctx: aio.ServicerContext[Any, Any], error: BaseException | None) -> None:
        logging_rpcs = log.isEnabledFor(logging.INFO)
        metrics = self._metrics
        if not logging_rpcs and metrics is None:
            return  # nothing to build: this is on every RPC's path
        rc = request_context.current()
        code = _final_code(ctx, error)
        elapsed = time.monotonic() - rc.started
        if metrics is not None:
            metrics.finished(rc.method, code, elapsed)
        if not logging_rpcs:
            return
        log.info(
            "rpc finished",
            extra={
                "rpc_method": rc.method,
                "rpc_code": code.name,
                "duration_ms": round(elapsed * 1000, 2),
                "request_id": rc.request_id,
                "user_id": rc.principal.user_id if rc.principal else None,
            },
        )

    async def unary(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: UnaryBehavior
    ) -> Any:
        try:
            response = await inner(request, ctx)
        except BaseException as exc:
            self._log(ctx, exc)
            raise
        self._log(ctx, None)
        return response

    async def stream(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: StreamBehavior
    ) -> AsyncIterator[Any]:
        try:
            async for item in inner(request, ctx):
                yield item
        except BaseException as exc:
            self._log(ctx, exc)
            raise
        self._log(ctx, None)


class ErrorMappingInterceptor(_WrappingInterceptor):
    """Turns domain errors into statuses with rich details; hides everything else as INTERNAL."""

    async def _abort(self, ctx: aio.ServicerContext[Any, Any], exc: Exception) -> None:
        rc = request_context.current()
        if not isinstance(exc, errors.GatewayError):
            log.exception("unexpected error", extra={"request_id": rc.request_id})
            exc = errors.Internal(f"internal error (request id {rc.request_id})")
        status = to_rpc_status(exc, request_id=rc.request_id)
        await ctx.abort(status.code, status.message, status.trailing_metadata)

    async def unary(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: UnaryBehavior
    ) -> Any:
        try:
            return await inner(request, ctx)
        except aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(ctx, exc)
            raise AssertionError("abort returned") from exc

    async def stream(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: StreamBehavior
    ) -> AsyncIterator[Any]:
        try:
            async for item in inner(request, ctx):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await self._abort(ctx, exc)


class AuthInterceptor(_GatewayInterceptor):
    """Authenticates every RPC of the gateway's services from its metadata, before grpc reads
    its request: a caller without acceptable credentials is refused (UNAUTHENTICATED) without
    its message ever being received. The caller reaches the servicers through the request
    context (`gateway.rpc.edge.caller`, bound by `RequestContextInterceptor`)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._authenticator = authenticator

    def handle(self, handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
        try:
            principal = self._authenticator.authenticate(details.invocation_metadata)
        except Exception as exc:
            # Reported by the error mapping like any other error (a bug below as INTERNAL).
            return edge.refuse(handler, exc)
        edge.admit(principal)
        return handler


class InFlightInterceptor(_GatewayInterceptor):
    """Caps the RPCs in flight (`gateway.limiter.concurrency.InFlight`): on the replica, per
    user, and per user's open streams. Decided after authentication and before grpc reads the
    request; a refused RPC is RESOURCE_EXHAUSTED with a retry-after. The slot an RPC takes is
    given back when the RPC's task ends, however it ends (even before its request arrived)."""

    def __init__(self, caps: InFlight) -> None:
        self._caps = caps

    def handle(self, handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
        principal = edge.caller()
        if principal is None:
            return handler  # refused by authentication: nothing runs, nothing to count
        caps, user_id, stream = self._caps, principal.user_id, handler.response_streaming
        try:
            caps.acquire(user_id, principal.tier, stream=stream)
        except errors.ConcurrencyLimited as exc:
            return edge.refuse(handler, exc)
        task = asyncio.current_task()
        assert task is not None, "grpc.aio runs every RPC in a task of its own"
        task.add_done_callback(lambda _: caps.release(user_id, stream=stream))
        return handler
