"""Retry timing: exponential backoff with full jitter, and Google's RetryInfo delays.

Pure functions, shared by the Gemini adapter (retries of one call) and the job runner (retries
of one job). Randomness is passed in so tests can fix it.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"


def full_jitter(
    attempt: int,
    *,
    initial_s: float,
    max_s: float,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number `attempt` (1 for the first retry): uniform in
    [0, min(max_s, initial_s * 2**(attempt-1))] ("full jitter": spreads synchronized clients).
    """
    if attempt < 1:
        raise ValueError("attempt counts from 1")
    ceiling = min(max_s, initial_s * 2.0 ** min(attempt - 1, 62))
    return (rng or random).uniform(0.0, ceiling)


def parse_duration(text: str) -> float | None:
    """Seconds in a protobuf JSON Duration ("2s", "0.250s"); None when it is not one."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    return float(match.group(1)) if match else None


def retry_delay_from_details(details: Iterable[Any]) -> float | None:
    """The `retryDelay` of a google.rpc.RetryInfo among an error's `details`, if any."""
    for detail in details:
        if isinstance(detail, Mapping) and detail.get("@type") == _RETRY_INFO_TYPE:
            delay = parse_duration(detail.get("retryDelay", ""))
            if delay is not None:
                return delay
    return None


def next_delay(
    attempt: int,
    *,
    initial_s: float,
    max_s: float,
    server_delay_s: float | None,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry `attempt`: the jittered backoff, but never less than what the server
    asked for (RetryInfo), since retrying earlier only burns quota on another refusal.
    """
    jittered = full_jitter(attempt, initial_s=initial_s, max_s=max_s, rng=rng)
    return jittered if server_delay_s is None else max(jittered, server_delay_s)
