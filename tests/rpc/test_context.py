"""The request context the interceptors bind for each RPC."""

from __future__ import annotations

import contextvars

import pytest

from gateway.rpc.context import RequestContext, bind, current, unbind


def test_unbinding_from_another_context_leaves_both_alone() -> None:
    # A server stream the client abandoned is closed from another context than the one
    # that bound it; unbinding there must not raise (it surfaced as an unretrieved task error).
    ctx = RequestContext(
        method="/viewbait.ai.v1.JobService/WatchJob", request_id="r", deadline=None
    )
    token = bind(ctx)

    contextvars.Context().run(unbind, token)

    assert current() is ctx
    unbind(token)
    with pytest.raises(LookupError):
        current()
