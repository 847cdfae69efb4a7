"""What operations ask of a generative model, and what they get back.

Operations build a `ModelRequest` and call a `ModelClient`; they never see google-genai. The Gemini
adapter (`gateway.gemini`) is the one implementation that talks to a real (or emulated) Gemini
endpoint; it owns retries, deadlines, error mapping and cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, Literal, Protocol, TypeVar

from gateway.errors import DeadlineExceeded, GatewayError, UpstreamBadResponse

log = logging.getLogger(__name__)

Modality = Literal["TEXT", "IMAGE"]


@dataclass(frozen=True, slots=True)
class Blob:
    """Inline bytes with their MIME type (an uploaded image, a generated image)."""

    data: bytes
    mime_type: str


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file the model fetches itself by URI (e.g. a YouTube URL for video understanding)."""

    uri: str
    mime_type: str | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """One part of the user turn: exactly one of text, inline blob or file reference."""

    text: str | None = None
    blob: Blob | None = None
    file: FileRef | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.text, self.blob, self.file)) != 1:
            raise ValueError("a Part holds exactly one of text, blob or file")


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One generation request: a single user turn plus configuration."""

    model: str
    parts: Sequence[Part]
    system_instruction: str | None = None
    #: JSON Schema the answer must satisfy (sent as `responseJsonSchema`); None for free text.
    response_schema: Mapping[str, Any] | None = None
    response_modalities: Sequence[Modality] = ("TEXT",)
    temperature: float | None = None
    #: For image-output models: the aspect ratio of generated images, e.g. "16:9".
    image_aspect_ratio: str | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one upstream call, by kind."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    #: Text output tokens (candidates minus image output).
    output_tokens: int = 0
    thinking_tokens: int = 0
    image_output_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        """The counts of both, kind by kind."""
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            thinking_tokens=self.thinking_tokens + other.thinking_tokens,
            image_output_tokens=self.image_output_tokens + other.image_output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """A successful answer."""

    text: str
    images: Sequence[Blob]
    usage: Usage
    cost_usd: float
    finish_reason: str
    model_version: str
    #: How many upstream attempts this answer took (1 when the first one succeeded).
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class CallLabels:
    """Who and what a call is for; copied onto every usage record."""

    operation: str
    user_id: str = ""
    job_id: str = ""
    request_id: str = ""
    #: The fencing token of the claim the job's attempt runs under (None outside a job): the
    #: ledger records an attempt of a claim that was lost meanwhile as abandoned.
    fence: int | None = None


#: Outcome of a ledger record of an answer taken from the result cache (no upstream call).
CACHE_HIT = "cache_hit"
#: Outcome of a ledger record of an answer that joined work another caller paid for.
COALESCED = "coalesced"
#: The outcomes of savings records: answers that cost nothing upstream.
SAVINGS_OUTCOMES = frozenset({CACHE_HIT, COALESCED})


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One record of the usage ledger: an upstream attempt, successful or not, or a savings
    record (an answer from the cache or from joined work, outcome `CACHE_HIT` or `COALESCED`:
    no tokens, no cost, and `saved_usd` the cost of the upstream work it did not repeat). The
    ledger stores a record as a row, except savings records outside jobs, which it folds per
    second (`gateway.store.ledger`)."""

    labels: CallLabels
    #: The model called (for a savings record: the one that produced the result).
    model: str
    #: The attempt's number within its call (0 for a savings record).
    attempt: int
    #: "ok", or the domain error's reason (e.g. "UPSTREAM_UNAVAILABLE", "SAFETY_BLOCKED"), or a
    #: savings outcome.
    outcome: str
    duration_s: float
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    saved_usd: float = 0.0

    @property
    def upstream(self) -> bool:
        """Whether this records an upstream attempt (not a savings record)."""
        return self.outcome not in SAVINGS_OUTCOMES


class UsageSink(Protocol):
    """Where usage records go: the store's ledger (`gateway.store.ledger.StoreUsageSink`, which
    queues them and writes them in the background)."""

    async def record(self, record: UsageRecord) -> None:
        """Records one record. Must be quick and must not raise for storage trouble: it runs on
        the request path."""
        ...


#: Called with each chunk of text as it streams in.
TextCallback = Callable[[str], Awaitable[None]]
#: Called before every upstream attempt with its number (1 for the first, retries included),
#: e.g. to charge it to the rate limits. An error it raises before the first attempt reaches the
#: caller unchanged; before a retry it ends the call with the failure being retried (see
#: `ModelClient.generate`).
AttemptGate = Callable[[int], Awaitable[None]]
#: Called after every upstream attempt, successful or not, with its `UsageRecord` (the one the
#: usage sink gets), e.g. to settle a budget reservation at the attempt's actual cost.
AttemptCallback = Callable[[UsageRecord], Awaitable[None]]


class ModelClient(Protocol):
    """Something that answers `ModelRequest`s."""

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
        """Runs the request to completion.

        `deadline` is an absolute `time.monotonic()` instant; no attempt or retry runs past it.
        With `on_text`, the answer is streamed and each text chunk is passed on as it arrives;
        an attempt retried after a mid-stream failure streams again from its start, so chunks
        are progress and `ModelResponse.text` is the answer. An exception raised by `on_text`
        ends the call and reaches the caller unchanged.
        `before_attempt` runs before every attempt; when it raises a `GatewayError` before a
        retry, no further attempt is made and the call fails with the retried failure, its
        retry-after raised to at least the gate's.
        `on_attempt` runs after every attempt `before_attempt` let through, whatever its end
        (an answer, a failure, a cancellation), with the attempt's `UsageRecord`, before the
        call retries, returns or raises; an exception it raises is logged and dropped.
        Raises a `gateway.errors.GatewayError` subclass on failure.
        """
        ...


class BatchState(StrEnum):
    """Where a batch of the model's Batch API is: PENDING and RUNNING go on, the rest are ends."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def done(self) -> bool:
        """Whether the batch has ended (its lines, if any, are final)."""
        return self not in (BatchState.PENDING, BatchState.RUNNING)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a finished batch: its answer or its error, and what it cost either way
    (at the Batch API's prices)."""

    #: The key the request was sent with (`BatchClient.create_batch`); None if the answer
    #: lost it (then lines are matched by position).
    key: str | None
    response: ModelResponse | None = None
    #: Why there is no response: a domain error, retryable or not, as for an interactive call.
    error: GatewayError | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """A batch as the model's Batch API reports it; `lines` in request order once it succeeded
    (empty before, and for a batch that ended otherwise)."""

    name: str
    state: BatchState
    display_name: str = ""
    lines: tuple[BatchLine, ...] = ()


class BatchClient(Protocol):
    """The model's Batch API: many requests of one model answered together, later, cheaper.

    Every call is one attempt bounded by the client's attempt timeout; failures raise
    `gateway.errors.GatewayError` subclasses (retryable ones may be tried again later).
    """

    async def create_batch(
        self, model: str, requests: Sequence[tuple[str, ModelRequest]], *, display_name: str
    ) -> BatchStatus:
        """Submits `requests` (each with its key, echoed on its line) as one batch of `model`
        named `display_name` (how `find_batch` finds it again)."""
        ...

    async def get_batch(self, name: str, model: str) -> BatchStatus:
        """The batch `name` (of `model`, which prices its lines) as it is now."""
        ...

    async def cancel_batch(self, name: str) -> None:
        """Asks for the batch `name` to be cancelled (a finished one stays as it is)."""
        ...

    async def find_batch(self, display_name: str, model: str) -> BatchStatus | None:
        """The batch created with `display_name`, if there is one (a submitter that stopped
        before it recorded the batch's name finds it by the name it gave it)."""
        ...


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Parsed(Generic[T]):
    """An answer parsed into an operation's result, with the response it came from."""

    value: T
    response: ModelResponse


async def generate_parsed(
    client: ModelClient,
    request: ModelRequest,
    parse: Callable[[ModelResponse], T],
    *,
    labels: CallLabels,
    deadline: float | None = None,
    on_text: TextCallback | None = None,
) -> Parsed[T]:
    """`client.generate` plus `parse`, with the one rule for answers that do not parse.

    `parse` raises `UpstreamBadResponse` when the answer does not match the operation's schema.
    Such an answer is a retryable upstream error once: the request is sent again (if the
    deadline allows). A second bad answer raises `UpstreamBadResponse` saying so. Both calls
    are billed and recorded by the client as usual.
    """
    for call in (1, 2):
        response = await client.generate(request, labels=labels, deadline=deadline, on_text=on_text)
        try:
            return Parsed(parse(response), response)
        except UpstreamBadResponse as exc:
            if call == 2:
                raise UpstreamBadResponse(
                    f"Gemini answered {labels.operation} twice in a shape that does not match "
                    f"its schema ({exc.message}); try again later",
                    metadata=exc.metadata,
                ) from None
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"Gemini's answer to {labels.operation} did not match its schema and the "
                    "deadline leaves no time to ask again"
                ) from None
            log.warning(
                "Gemini's answer to %s did not parse (%s); asking once more",
                labels.operation,
                exc.message,
            )
    raise AssertionError("unreachable")
