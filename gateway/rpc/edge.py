"""Decisions made from an RPC's metadata alone, before grpc reads its request.

grpc.aio receives and parses a unary request (up to `server.max_receive_message_bytes`) before
it calls the handler's behaviour, whatever the behaviour does first. The edge interceptors
(`AuthInterceptor`, `InFlightInterceptor`) decide at `intercept_service`, where only the method
and the metadata are known. To refuse, one returns `refuse(handler, error)`: a request-streaming
handler, for which grpc asks the transport for no message at all, whose behaviour raises `error`
for the outer interceptors to log, count and report like any other error. Once the status is
sent, the transport resets the stream, and the caller stops sending the rest of its message.

Each RPC runs in an asyncio task of its own from `intercept_service` to its end, so a context
variable set there is what the RPC's behaviour reads: the authenticated caller (`caller`), or
the refusal.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from gateway.auth import Principal

#: An RPC's metadata as grpc hands it: (key, value) pairs, binary values as bytes.
Metadata = tuple[tuple[str, str | bytes], ...]

_caller: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "viewbait_caller", default=None
)
_refusal: contextvars.ContextVar[Exception | None] = contextvars.ContextVar(
    "viewbait_refusal", default=None
)
_metadata: contextvars.ContextVar[Metadata | None] = contextvars.ContextVar(
    "viewbait_metadata", default=None
)


def received(metadata: Metadata | None) -> None:
    """Records the metadata of the RPC being decided, as the interceptors got it (grpc builds
    it anew for each reader: the servicer context converts it again on every call)."""
    _metadata.set(metadata)


def metadata() -> Metadata | None:
    """The metadata `received` recorded for the current RPC (None: not recorded)."""
    return _metadata.get()


def admit(principal: Principal) -> None:
    """Records the authenticated caller of the RPC being decided."""
    _caller.set(principal)


def caller() -> Principal | None:
    """The authenticated caller of the current RPC (None: not authenticated, or refused)."""
    return _caller.get()


def refuse(
    handler: grpc.RpcMethodHandler[Any, Any], error: Exception
) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler that answers the current RPC with `error` without reading its request: one
    per response kind (unary or streamed) of `handler`, shared by every method."""
    _refusal.set(error)
    return _STREAM_REFUSAL if handler.response_streaming else _UNARY_REFUSAL


def _pending() -> Exception:
    error = _refusal.get()
    assert error is not None, "a refusal handler runs only after `refuse`"
    return error


async def _refused(requests: Any, context: Any) -> Any:
    raise _pending()


async def _refused_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
    raise _pending()
    yield  # an async generator, as grpc expects of a streamed response


_UNARY_REFUSAL: grpc.RpcMethodHandler[Any, Any] = grpc.stream_unary_rpc_method_handler(_refused)
_STREAM_REFUSAL: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(
    _refused_stream
)
