"""Helpers shared by the client's tests against live gateways."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str, patience_s: float = 20
) -> None:
    """Waits until `condition()` (awaited if it must be) holds; fails after `patience_s`."""
    give_up = time.monotonic() + patience_s
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > give_up:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.02)
