"""Ending the helper tasks a request starts, however the request ends.

A task left pending when its request goes away is destroyed pending ("Task was destroyed but it
is pending!"); one that failed and is never awaited logs "Task exception was never retrieved"
with its traceback. Streams end in many ways (finished, failed, the caller cancelled, the
server stopping), so each `finally` that owns a task hands it to `settle`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def settle(*tasks: asyncio.Future[Any]) -> None:
    """Cancels each of `tasks` still running and waits for all of them to end, retrieving every
    outcome (what they returned or raised is not wanted any more)."""
    for task in tasks:
        if not task.done():
            task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
