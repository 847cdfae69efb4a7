"""Server interceptors, each doing one job, in the order they wrap an RPC (outermost first):

1. `RequestContextInterceptor`: request id (from `x-request-id` or new), deadline and the caller
   into context, and the RPC's span, its parent the caller's W3C `traceparent`
   (`gateway.telemetry.tracing`).
2. `LoggingInterceptor`: one structured log line per RPC with its outcome and duration, and the
   same outcome and duration counted in the RPC metrics (one layer, not two: every call pays for
   each layer it passes).
3. `ErrorMappingInterceptor`: domain errors to gRPC statuses through the single table.
4. `DecodingInterceptor`: a request that does not parse is refused as bad input naming the
   field (`gateway.rpc.decoding`), not left to grpc's UNKNOWN.
5. `InFlightInterceptor`: caps the RPCs in flight, on the replica and per user (load shedding).
6. `AuthInterceptor`: authenticates the caller; nothing unauthenticated reaches a servicer.

The last two decide at `intercept_service`, from the metadata alone, before grpc reads the
request (`gateway.rpc.edge`): authentication first, then the caps. What they refuse never costs
the receiving and parsing of its message, yet passes the first three like any other RPC.

They apply to the gateway's own services (`/viewbait.`); health checking passes through
untouched so probes need no credentials and are never shed. Reflection passes untouched too,
unless `server.reflection` is `authenticated`: then every interceptor but the caps applies to it
(`guarded_prefixes`), so only authenticated callers see the schema, and each probe is logged.
The decoding applies to every service: a health check that does not parse is refused as bad
input as well.

The server installs them as one `GatewayInterceptors`: grpc runs one `intercept_service`
coroutine per interceptor for every RPC, and each of these would only ask the one below for
the handler and then take its turn with it; one dispatch gives each its turn in the same order.
The first four wrap the behaviour, and `RpcLayers` runs them as one: a unary RPC passes
through one coroutine that calls each one's part in the same order, not four nested ones.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import grpc
from grpc import aio

from gateway import errors
from gateway.auth import Authenticator
from gateway.limiter.concurrency import InFlight
from gateway.rpc import context as request_context
from gateway.rpc import decoding, edge
from gateway.rpc.status import to_rpc_status
from gateway.telemetry import tracing
from gateway.telemetry.logs import info_line

if TYPE_CHECKING:
    from gateway.telemetry.metrics import RpcMetrics

    _Handler = grpc.RpcMethodHandler[Any, Any]

log = logging.getLogger("gateway.rpc")

UnaryBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Any]]
StreamBehavior = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[Any]]

_OWN_SERVICES = "/viewbait."
#: Method prefix of server reflection (v1alpha, and v1 where served).
REFLECTION_SERVICES = "/grpc.reflection."
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


def guarded_prefixes(*, authenticated_reflection: bool) -> tuple[str, ...]:
    """The method prefixes the gateway's interceptors apply to: its own services, and server
    reflection when only authenticated callers may use it."""
    if authenticated_reflection:
        return (_OWN_SERVICES, REFLECTION_SERVICES)
    return (_OWN_SERVICES,)


class _GatewayInterceptor:
    """One of the gateway's interceptors (run by `GatewayInterceptors`): it applies to the RPCs
    whose method starts with one of `guarded` (by default the gateway's own services); the
    others pass untouched."""

    def __init__(self, *, guarded: tuple[str, ...] = (_OWN_SERVICES,)) -> None:
        self._guarded = guarded

    def covers(self, method: str) -> bool:
        """Whether this interceptor applies to `method`."""
        return method.startswith(self._guarded)

    async def decide(self, handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
        """The handler a covered RPC runs with: `handle`'s, unless a subclass must wait on
        something to decide (override)."""
        return self.handle(handler, details)

    def handle(self, handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
        """The handler a covered RPC runs with (override)."""
        raise NotImplementedError


class GatewayInterceptors(aio.ServerInterceptor):
    """`interceptors` (outermost first) as one grpc interceptor: the handler is looked up once,
    then each interceptor that covers the method takes its turn with it (`handle`, or `decide`
    where it may wait), innermost first, as nested interceptors would (each asking the one
    below it first)."""

    def __init__(self, *interceptors: _GatewayInterceptor) -> None:
        self._innermost_first = tuple(reversed(interceptors))
        #: Whether each may wait to decide (overrides `decide`); the others decide at once.
        self._waits = tuple(
            type(interceptor).decide is not _GatewayInterceptor.decide
            for interceptor in self._innermost_first
        )
        #: Method -> the interceptors covering it with whether each waits (methods are the
        #: registered ones, so this stays small; an unknown method finds no handler first).
        self._plans: dict[str, tuple[tuple[_GatewayInterceptor, bool], ...]] = {}

    def _plan(self, method: str) -> tuple[tuple[_GatewayInterceptor, bool], ...]:
        plan = self._plans.get(method)
        if plan is None:
            plan = self._plans[method] = tuple(
                (interceptor, waits)
                for interceptor, waits in zip(self._innermost_first, self._waits, strict=True)
                if interceptor.covers(method)
            )
        return plan

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        edge.received(handler_call_details.invocation_metadata)
        for interceptor, waits in self._plan(handler_call_details.method):
            if waits:
                handler = await interceptor.decide(handler, handler_call_details)
            else:
                handler = interceptor.handle(handler, handler_call_details)
        return handler


class _WrappingInterceptor(_GatewayInterceptor):
    """Wraps the behaviours of the gateway's own RPCs.

    grpc asks every interceptor for every RPC; the wrapped handler of a method is built once and
    reused while the handler below it stays the same (it does: handlers are registered once,
    and an edge refusal is one shared handler per response kind, kept apart).
    """

    def __init__(self, *, guarded: tuple[str, ...] = (_OWN_SERVICES,)) -> None:
        super().__init__(guarded=guarded)
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
        # A streamed response comes from an async generator, or from a coroutine that writes it
        # with `context.write` (grpc's health Watch): that one is wrapped like a unary behaviour.
        if handler.response_streaming and inspect.isasyncgenfunction(behaviour):
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
        deserialize = handler.request_deserializer
        if not handler.request_streaming:
            deserialize = self.deserializer(method, deserialize)
        return build(wrapped, deserialize, handler.response_serializer)

    def deserializer(
        self, method: str, deserialize: decoding.Deserializer | None
    ) -> decoding.Deserializer | None:
        """The request deserializer of `method`'s wrapped handler (override)."""
        return deserialize

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


class RequestContextInterceptor(_WrappingInterceptor):
    """Binds a `RequestContext` (request id, deadline, the caller authenticated at the edge)
    and the RPC's span for the RPC's duration; the span ends with the RPC's status."""

    def _context(
        self, method: str, ctx: aio.ServicerContext[Any, Any]
    ) -> tuple[request_context.RequestContext, tracing.RpcSpan | None]:
        request_id = ""
        traceparent = tracestate = None
        # As the interceptors got it (`GatewayInterceptors`), else converted again.
        for key, value in edge.metadata() or ctx.invocation_metadata() or ():
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
            # 128 random bits in hex, as a version-4 UUID's hex but without building one.
            request_id=request_id or os.urandom(16).hex(),
            deadline=deadline,
            principal=edge.caller(),
        )
        span = tracing.start_rpc(method, rc.request_id, traceparent, tracestate)
        token_name = rc.principal.service_token if rc.principal else None
        if span is not None and token_name is not None:
            span.span.set_attribute("viewbait.service_token", token_name)
        return rc, span

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
    """One log line per RPC (method, code, duration, request id, user, and the name of the
    service token a trusted backend called with) and, given `metrics`,
    its code and duration counted there."""

    def __init__(
        self, metrics: RpcMetrics | None = None, *, guarded: tuple[str, ...] = (_OWN_SERVICES,)
    ) -> None:
        super().__init__(guarded=guarded)
        self._metrics = metrics

    def _log(
        self, ctx: aio.ServicerContext[Any, Any], error: BaseException | None, traced: bool = True
    ) -> None:
        """Logs and counts the RPC's end; `traced=False`: no span is current (none to name)."""
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
        info_line(
            log,
            "rpc finished",
            {
                "rpc_method": rc.method,
                "rpc_code": code.name,
                "duration_ms": round(elapsed * 1000, 2),
                "request_id": rc.request_id,
                "user_id": rc.principal.user_id if rc.principal else None,
                # The name of the service token, never the token.
                "service_token": rc.principal.service_token if rc.principal else None,
            },
            traced=traced,
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
            exc = errors.Internal("internal error; quote the request id when reporting it")
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


class DecodingInterceptor(_WrappingInterceptor):
    """Parses requests without letting a parse failure escape as UNKNOWN: a request that does
    not parse reaches the behaviour as `decoding.Undecodable` and is refused here as
    `InvalidArgument`, inside the RPC, so the error mapping reports it with the request id.
    Health checking's requests too: they pass no other interceptor, so the refusal is reported
    here, with the same details."""

    def covers(self, method: str) -> bool:
        return True

    def deserializer(
        self, method: str, deserialize: decoding.Deserializer | None
    ) -> decoding.Deserializer | None:
        message = decoding.method_input(method)
        if deserialize is None or message is None:
            return deserialize
        return decoding.safe_deserializer(deserialize, message)

    async def unary(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: UnaryBehavior
    ) -> Any:
        if isinstance(request, decoding.Undecodable):
            await self._refuse(method, request, ctx)
        return await inner(request, ctx)

    @staticmethod
    async def _refuse(
        method: str, request: decoding.Undecodable, ctx: aio.ServicerContext[Any, Any]
    ) -> None:
        if method.startswith(_OWN_SERVICES):
            raise request.error()  # reported by the error mapping, like any bad input
        status = to_rpc_status(request.error())
        await ctx.abort(status.code, status.message, status.trailing_metadata)

    async def stream(
        self, method: str, request: Any, ctx: aio.ServicerContext[Any, Any], inner: StreamBehavior
    ) -> AsyncIterator[Any]:
        if isinstance(request, decoding.Undecodable):
            await self._refuse(method, request, ctx)
        async for item in inner(request, ctx):
            yield item


class RpcLayers(_WrappingInterceptor):
    """The four wrapping interceptors (context, logging, error mapping, decoding) run as one
    layer: each keeps its job and its order, but a unary RPC of the guarded services runs
    through one coroutine that calls their parts in turn, not four nested coroutines (each
    nesting costs every call a coroutine, its frame and an await, twice over with the
    wrappers). Streamed responses, and the methods only the decoding covers (health
    checking, open reflection), go through the interceptors nested as before."""

    def __init__(
        self,
        context: RequestContextInterceptor,
        logging_: LoggingInterceptor,
        error_mapping: ErrorMappingInterceptor,
        decoding_: DecodingInterceptor,
    ) -> None:
        guarded = context._guarded
        if not logging_._guarded == error_mapping._guarded == guarded:
            raise ValueError("the folded interceptors must guard the same methods")
        super().__init__(guarded=guarded)
        self._context = context
        self._logging = logging_
        self._errors = error_mapping
        self._decoding = decoding_
        #: Innermost first, as `GatewayInterceptors` runs them.
        self._nested = (decoding_, error_mapping, logging_, context)

    def covers(self, method: str) -> bool:
        return True  # the decoding covers every method

    def _wrap(self, method: str, handler: _Handler) -> _Handler:
        guarded = method.startswith(self._guarded)
        if not guarded or handler.response_streaming:
            for layer in self._nested:
                if layer.covers(method):
                    handler = layer._wrap(method, handler)
            return handler
        attribute, build = _KINDS[handler.request_streaming, handler.response_streaming]
        inner = cast(UnaryBehavior, getattr(handler, attribute))
        enter, log_end = self._context._context, self._logging._log
        abort, refuse = self._errors._abort, DecodingInterceptor._refuse
        bind, unbind = request_context.bind, request_context.unbind

        async def unary(request: Any, ctx: aio.ServicerContext[Any, Any]) -> Any:
            # RequestContextInterceptor.unary around LoggingInterceptor.unary around
            # ErrorMappingInterceptor.unary around DecodingInterceptor.unary, in one frame.
            rc, span = enter(method, ctx)
            token = bind(rc)
            error: BaseException | None = None
            try:
                try:
                    if isinstance(request, decoding.Undecodable):
                        await refuse(method, request, ctx)
                    return await inner(request, ctx)
                except aio.AbortError:
                    raise
                except Exception as exc:
                    await abort(ctx, exc)
                    raise AssertionError("abort returned") from exc
            except BaseException as exc:
                error = exc
                raise
            finally:
                log_end(ctx, error, span is not None)
                if span is not None:
                    _end_span(span, ctx, error)
                unbind(token)

        deserialize = handler.request_deserializer
        if not handler.request_streaming:
            deserialize = self._decoding.deserializer(method, deserialize)
        return build(unary, deserialize, handler.response_serializer)


class AuthInterceptor(_GatewayInterceptor):
    """Authenticates every RPC of the gateway's services from its metadata, before grpc reads
    its request: a caller without acceptable credentials is refused (UNAUTHENTICATED) without
    its message ever being received. The caller reaches the servicers through the request
    context (`gateway.rpc.edge.caller`, bound by `RequestContextInterceptor`).

    A JWT signed by a key the cached JWKS lacks makes it fetch the set again (rate-limited,
    `gateway.jwks`) before deciding: the one case where deciding waits on I/O."""

    def __init__(
        self, authenticator: Authenticator, *, guarded: tuple[str, ...] = (_OWN_SERVICES,)
    ) -> None:
        super().__init__(guarded=guarded)
        self._authenticator = authenticator

    async def decide(self, handler: _Handler, details: grpc.HandlerCallDetails) -> _Handler:
        try:
            principal = await self._authenticator.authenticate_refreshing(
                details.invocation_metadata
            )
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
        super().__init__()
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
