"""Run-time knobs of the offline Gemini emulator (not Gemini): latency and injected faults.

Knobs are set when the emulator starts and may be changed while it runs, from Python
(`EmulatorServer.set_knobs`, `EmulatorServer.inject`) or over HTTP (`POST /_emulator/knobs`,
`POST /_emulator/faults`). A fault rule fires either for the next `count` matching requests or
on each matching request with probability `rate` (drawn from a generator seeded by
`Knobs.seed`, so a run is reproducible). Rules are tried in order; the first that fires wins.
"""

from __future__ import annotations

import random
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FaultKind(StrEnum):
    """What an injected fault does to one request."""

    #: HTTP 429 RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo(`retry_delay_s`) details.
    RATE_LIMITED = "rate_limited"
    #: HTTP 503 UNAVAILABLE ("The model is overloaded").
    UNAVAILABLE = "unavailable"
    #: HTTP 500 INTERNAL.
    INTERNAL = "internal"
    #: Any HTTP error `code` (400, 403, 404, 502, 504, ...) in Google's error format.
    ERROR = "error"
    #: HTTP 200 whose body is cut off mid-JSON.
    MALFORMED = "malformed"
    #: The connection is closed before any response is sent.
    DISCONNECT = "disconnect"
    #: No answer for `hang_s` seconds (the client is expected to time out first).
    HANG = "hang"
    #: Streaming: a first chunk, then an error event. Unary: half a body, then a dropped connection.
    MIDSTREAM = "midstream"
    #: HTTP 200 with `promptFeedback.blockReason` (`block_reason`) and no candidates.
    PROMPT_BLOCKED = "prompt_blocked"
    #: HTTP 200 with a candidate that ends with `finishReason` SAFETY and no content.
    SAFETY = "safety"
    #: HTTP 200 with a candidate that ends with `finishReason` IMAGE_SAFETY and no image.
    IMAGE_SAFETY = "image_safety"
    #: HTTP 200, finishReason STOP, but the answer text does not satisfy the response schema.
    INVALID_ANSWER = "invalid_answer"
    #: HTTP 200, finishReason STOP, with the rule's `text` as the answer text: a scripted answer
    #: (say JSON that fits the schema but breaks a rule of the result, as a real model's may).
    SCRIPTED_ANSWER = "scripted_answer"


class FaultRule(BaseModel):
    """One fault to inject: what, how often, and for which model."""

    model_config = ConfigDict(extra="forbid")

    kind: FaultKind
    #: Fire for the next `count` matching requests (then the rule is spent).
    count: int | None = Field(default=None, ge=1)
    #: Fire on each matching request with this probability.
    rate: float | None = Field(default=None, ge=0.0, le=1.0)
    #: Only requests for this model name (e.g. "gemini-3.6-flash"); None: every model.
    model: str | None = None
    #: Only streaming (True) or only unary (False) requests; None: both.
    stream: bool | None = None
    #: HTTP status for kind "error".
    code: int | None = Field(default=None, ge=400, le=599)
    #: RetryInfo.retryDelay for kind "rate_limited".
    retry_delay_s: float = Field(default=2.0, ge=0.0)
    #: promptFeedback.blockReason for kind "prompt_blocked".
    block_reason: str = "SAFETY"
    #: The answer text for kind "scripted_answer".
    text: str | None = None
    #: The error body's message for kind "error" (default: one naming the injected code), to
    #: see what of an upstream error's text reaches the caller.
    message: str | None = None

    @model_validator(mode="after")
    def _check(self) -> FaultRule:
        if (self.count is None) == (self.rate is None):
            raise ValueError("a fault rule needs exactly one of 'count' or 'rate'")
        if self.kind is FaultKind.ERROR and self.code is None:
            raise ValueError("a fault of kind 'error' needs an HTTP 'code'")
        if self.message is not None and self.kind is not FaultKind.ERROR:
            raise ValueError("a 'message' goes with a fault of kind 'error', and only there")
        if (self.kind is FaultKind.SCRIPTED_ANSWER) != (self.text is not None):
            raise ValueError("a 'text' goes with a fault of kind 'scripted_answer', and only there")
        return self

    def matches(self, model: str, stream: bool) -> bool:
        """Whether this rule applies to a request for `model` (streaming or not)."""
        return (self.model is None or self.model == model) and (
            self.stream is None or self.stream == stream
        )


class Knobs(BaseModel):
    """Everything about the emulator's behaviour that tests and demos may turn."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    #: Added before every answer.
    latency_s: float = Field(default=0.0, ge=0.0)
    #: Uniform extra latency in [0, latency_jitter_s).
    latency_jitter_s: float = Field(default=0.0, ge=0.0)
    #: Pause between streamed chunks.
    stream_chunk_delay_s: float = Field(default=0.0, ge=0.0)
    #: About how many characters of text each streamed chunk carries (cut at a space). Gemini's
    #: text chunks hold tens of tokens, a few hundred characters, after a shorter first one;
    #: much smaller chunks would make a stream cost a client far more than Gemini's does.
    stream_chunk_chars: int = Field(default=300, ge=1)
    #: How long a "hang" fault holds the request before giving up on its own.
    hang_s: float = Field(default=300.0, ge=0.0)
    #: Seed of the generator behind fault rates and latency jitter.
    seed: int = 0
    faults: list[FaultRule] = Field(default_factory=list)
    #: Batch API: least time a batch stays PENDING, then RUNNING. A batch moves at most one
    #: state each time it is read (get or list), so with zeros it is PENDING when created,
    #: RUNNING at the first read and done at the second.
    batch_pending_s: float = Field(default=0.0, ge=0.0)
    batch_running_s: float = Field(default=0.0, ge=0.0)
    #: Batch API: running batches stay RUNNING while this is true (tests release them).
    batch_hold: bool = False
    #: Batch API: how batches created from now on end ("failed" and "expired" deliver no lines).
    batch_outcome: Literal["succeeded", "failed", "expired"] = "succeeded"
    #: Batch API: 0-based lines of batches created from now on that fail (an `error` instead
    #: of a `response`); an index past a batch's last line fails nothing.
    batch_fail_lines: list[int] = Field(default_factory=list)
    #: The google.rpc.Code those lines fail with (13 INTERNAL; 3 INVALID_ARGUMENT is final).
    batch_fail_code: int = Field(default=13, ge=1, le=16)


class FaultPlan:
    """Decides, request by request, which fault (if any) fires. Not thread-safe: one event loop."""

    def __init__(self, knobs: Knobs) -> None:
        self._rules = [rule.model_copy() for rule in knobs.faults]
        self._rng = random.Random(knobs.seed)

    @property
    def rules(self) -> list[FaultRule]:
        """The live rules, with counts as they stand now."""
        return list(self._rules)

    def add(self, rule: FaultRule) -> None:
        """Appends a rule (tried after the existing ones)."""
        self._rules.append(rule.model_copy())

    def jitter(self, spread: float) -> float:
        """A uniform draw in [0, spread)."""
        return self._rng.random() * spread if spread > 0 else 0.0

    def draw(self, model: str, stream: bool) -> FaultRule | None:
        """The rule that fires for this request, consuming one use of a counted rule."""
        for index, rule in enumerate(self._rules):
            if not rule.matches(model, stream):
                continue
            if rule.count is not None:
                if rule.count == 1:
                    del self._rules[index]
                else:
                    self._rules[index] = rule.model_copy(update={"count": rule.count - 1})
                return rule
            assert rule.rate is not None
            if self._rng.random() < rule.rate:
                return rule
        return None
