"""Per-request state, kept in a context variable so every layer of one RPC sees the same values."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.auth import Principal


@dataclass(slots=True)
class RequestContext:
    """What the interceptors learned about the current RPC."""

    method: str
    request_id: str
    #: Absolute `time.monotonic()` instant the caller stops waiting, or None without a deadline.
    deadline: float | None
    started: float = field(default_factory=time.monotonic)
    principal: Principal | None = None

    def remaining_s(self) -> float | None:
        """Seconds left before the caller's deadline, or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()


_current: contextvars.ContextVar[RequestContext] = contextvars.ContextVar("viewbait_request")


def current() -> RequestContext:
    """The context of the RPC being served; a programming error outside one."""
    return _current.get()


def bind(ctx: RequestContext) -> contextvars.Token[RequestContext]:
    """Makes `ctx` current for the rest of the RPC's task."""
    return _current.set(ctx)


def unbind(token: contextvars.Token[RequestContext]) -> None:
    """Restores the previous context.

    A server stream the client abandoned is closed from another context than the one that
    bound it; that context never held this request's, so there is nothing to restore.
    """
    try:
        _current.reset(token)
    except ValueError:
        return  # (a try, not contextlib.suppress: this runs at the end of every RPC)
