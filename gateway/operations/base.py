"""What every operation spec has in common.

An operation spec holds everything that differs between AI features and nothing that does not:

- `check_sizes(request, bounds)`: what the message says of the request's size (its images' byte
  sizes), checked without reading any content: the pipeline runs it before the admission limit.
- `validate(request, bounds)`: bounded, sniffed inputs; returns the canonical request or raises
  `InvalidArgument` with one `FieldViolation` per bad field. It writes nothing anywhere.
- `cache_key(request, user_id, model, scope)`: SHA-256 over an unambiguous encoding of the
  operation name, prompt and schema versions, model, scope (the user id for user scope) and the
  operation's own key fields; None for operations whose results are never cached.
- `run(request, client, ctx)`: the model call(s) through `ModelClient` and the parse into a typed
  result. The only I/O a spec does is that call.
- `result_to_json` / `result_blobs` / `result_from_json`: how the result cache stores a result
  (images as blob references, see `gateway.operations.codec`).

Tiers, route ids and TTLs live in `Settings.policies`, keyed by the spec's `name`; its default
entries take the model kind and scope from the spec (`model_kind`, `default_scope`), and an
operator may override both there. The pipeline, limits, caching and RPCs are shared code outside
the specs; `gateway.rpc.bindings` ties each spec to its gRPC messages.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from gateway.config import InputBounds, Scope
from gateway.errors import UpstreamBadResponse
from gateway.model import (
    CallLabels,
    ModelClient,
    ModelRequest,
    ModelResponse,
    Part,
    generate_parsed,
)
from gateway.operations import codec, schema
from gateway.operations.images import Image, ImageInput
from gateway.operations.keys import KeyFields, derive_key
from gateway.operations.normalise import RuleBroken
from gateway.operations.validation import Violations

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")
AnswerT = TypeVar("AnswerT")
T = TypeVar("T")

#: The bounds used when a caller passes none (the configuration defaults).
DEFAULT_BOUNDS = InputBounds()


class ProgressKind(StrEnum):
    """What a progress event reports."""

    #: Work on one unit began (for GenerateThumbnail: one variation's model call).
    STARTED = "started"
    #: One generated image is ready; the event carries it so a stream can forward it at once.
    IMAGE_READY = "image_ready"
    #: A chunk of the model's streamed text. A retried call streams its text again from the start.
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A step of a running operation, for streams and job watchers."""

    kind: ProgressKind
    #: Which unit of work (0-based variation index; 0 for single-call operations).
    index: int = 0
    #: How many units the operation runs in all.
    total: int = 1
    #: For TEXT: the chunk.
    text: str = ""
    #: For IMAGE_READY: the image.
    image: Image | None = None


ProgressCallback = Callable[[ProgressEvent], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RunContext:
    """Who an operation runs for and under which limits."""

    user_id: str
    #: The configured Gemini model name the operation's policy resolves to.
    model: str
    #: Copied onto every usage record of the run.
    labels: CallLabels
    #: Absolute `time.monotonic()` instant; no model attempt runs past it.
    deadline: float | None = None
    #: Receives progress events; None when nobody listens.
    progress: ProgressCallback | None = None
    #: Whether `progress` wants the model's text as it streams in (TEXT events). Only then is a
    #: text answer streamed: a stream costs the client several times a unary call's CPU (every
    #: chunk is parsed and validated as a whole response), which only a caller showing the
    #: text as it arrives gets anything for. Job workers record stages, not text, and the
    #: streaming RPC carries images: neither asks for it.
    text_progress: bool = False

    async def emit(self, event: ProgressEvent) -> None:
        """Passes an event to the progress callback, if there is one."""
        if self.progress is not None:
            await self.progress(event)


async def call_model(
    client: ModelClient,
    request: ModelRequest,
    ctx: RunContext,
    parse: Callable[[ModelResponse], T],
    *,
    stream_text: bool = False,
) -> T:
    """Makes one model call and parses its answer: the one place an operation meets the model.

    `parse` raises `UpstreamBadResponse` for an answer that does not fit; the shared rule of
    `gateway.model.generate_parsed` then asks once more and fails clearly on a second bad answer.
    With `stream_text` and a progress callback that wants text (`RunContext.text_progress`),
    the answer is streamed and its chunks are forwarded as TEXT events; otherwise it is one
    unary call.
    """
    on_text = None
    if stream_text and ctx.text_progress and ctx.progress is not None:

        async def on_text(chunk: str) -> None:
            await ctx.emit(ProgressEvent(ProgressKind.TEXT, text=chunk))

    parsed = await generate_parsed(
        client, request, parse, labels=ctx.labels, deadline=ctx.deadline, on_text=on_text
    )
    return parsed.value


class OperationSpec(ABC, Generic[RequestT, ResultT]):
    """One AI feature: validation, key derivation, the model call and the typed result."""

    #: Key of the operation in `Settings.policies` and in usage records, e.g. "analyze_video".
    name: ClassVar[str]
    #: Bumped whenever the prompt (system instruction, user turn or its layout) changes.
    PROMPT_VERSION: ClassVar[str]
    #: Bumped whenever the response schema or the result type changes.
    SCHEMA_VERSION: ClassVar[str]
    #: The scope of the default policy; `Settings.policies` may override it.
    default_scope: ClassVar[Scope]
    #: "text" or "image": which configured model kind the default policy runs it on.
    model_kind: ClassVar[Literal["text", "image"]]
    request_type: ClassVar[type[Any]]
    result_type: ClassVar[type[Any]]
    #: Whether its jobs may be delivered through the Gemini Batch API (`gateway.jobs.batcher`):
    #: only a run that is one model call the batch's line answers whole.
    batchable: ClassVar[bool] = False

    def __init__(
        self, *, prompt_version: str | None = None, schema_version: str | None = None
    ) -> None:
        # Overrides exist for tests and for canarying a new prompt next to the old one.
        self.prompt_version = prompt_version or self.PROMPT_VERSION
        self.schema_version = schema_version or self.SCHEMA_VERSION

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(prompt_version={self.prompt_version!r}, "
            f"schema_version={self.schema_version!r})"
        )

    def input_images(self, request: RequestT) -> Sequence[tuple[str, ImageInput]]:
        """The images a request carries, by field path (`references[2].image`); none unless
        the operation takes images."""
        return ()

    def check_sizes(self, request: RequestT, bounds: InputBounds = DEFAULT_BOUNDS) -> None:
        """Checks the byte size of every image of the request and their total, from the message
        alone (nothing is sniffed or hashed): cheap enough to run before the admission limit,
        so an oversized request costs neither a rate-limit decision nor a hash. `validate`
        checks them again, with everything else.

        Raises `InvalidArgument` naming each image over a bound.
        """
        v = Violations()
        v.image_sizes(self.input_images(request), bounds)
        v.raise_if_any()

    @abstractmethod
    def validate(self, request: RequestT, bounds: InputBounds = DEFAULT_BOUNDS) -> RequestT:
        """The request, checked against `bounds` and canonicalized (images sniffed).

        Raises `InvalidArgument` with a violation per bad field. Only a request returned by this
        method may be passed to `cache_key` or `run`.
        """

    @abstractmethod
    def key_fields(self, request: RequestT) -> KeyFields | None:
        """The operation's own cache key fields of a validated request; None: never cached."""

    def cache_key(
        self, request: RequestT, user_id: str, model: str, scope: Scope | None = None
    ) -> bytes | None:
        """The 32-byte result-cache key of a validated request, or None if it is not cacheable.

        `scope` is the policy's scope (`Settings.policy(name).scope`); None means the spec's
        `default_scope`. User scope puts `user_id` in the key; global scope leaves it out so
        equal inputs from different users share one result.
        """
        own = self.key_fields(request)
        if own is None:
            return None
        scope = scope or self.default_scope
        if scope is Scope.USER and not user_id:
            # An empty user id would let every anonymous caller share one user's results.
            raise ValueError("a user-scoped cache key needs a user id")
        return derive_key(
            own,
            common=(
                ("operation", self.name),
                ("prompt_version", self.prompt_version),
                ("schema_version", self.schema_version),
                ("model", model),
                ("scope", scope.value),
                ("user", user_id if scope is Scope.USER else ""),
            ),
        )

    def upstream_calls(self, request: RequestT) -> int:
        """The Gemini calls one run of a validated request makes when none is retried. The
        pipeline charges them to the upstream limits together before the first, so a run is
        admitted whole or refused before it spends anything (a run admitted call by call could
        pay for some calls and be refused the rest, over and over while a limit is tight)."""
        return 1

    def max_upstream_calls(self, bounds: InputBounds) -> int:
        """The most `upstream_calls` can be for a request within `bounds` (an upstream limit's
        burst below it would refuse such a request for ever)."""
        return 1

    @abstractmethod
    async def run(self, request: RequestT, client: ModelClient, ctx: RunContext) -> ResultT:
        """Runs a validated request against the model and returns the typed result.

        Raises the `GatewayError` subclasses of the model client, and `UpstreamBadResponse` when
        the answer does not fit the response schema.
        """

    def result_to_json(self, result: ResultT) -> str:
        """The JSON the result cache stores; images appear as references, never as bytes."""
        return codec.to_json(result)

    def result_blobs(self, result: ResultT) -> dict[bytes, bytes]:
        """The bytes a result refers to, by SHA-256 digest, for the blob store."""
        return codec.collect_blobs(result)

    def result_from_json(self, text: str, blobs: codec.Blobs) -> ResultT:
        """Rebuilds a stored result from its JSON and its blobs (digest -> bytes).

        Raises `codec.DecodeError` for JSON that does not fit or a blob that is missing or does
        not match its reference.
        """
        return cast(ResultT, codec.from_json(self.result_type, text, blobs))


class StructuredOperation(OperationSpec[RequestT, ResultT], Generic[RequestT, AnswerT, ResultT]):
    """An operation that asks a text model for one JSON answer conforming to a schema.

    Subclasses give the system instruction, the user turn (`prompt_parts`), the response schema
    and its typed form (`answer_type`), `normalise` brings a checked answer to the rules the proto
    documents for its result (see `gateway.operations.normalise`), and `finish` turns the answer
    into the result (the identity unless overridden). Every rule an answer must meet is stated in
    the schema (in its descriptions where JSON Schema has no keyword for it, like a sum or an
    order), so the model is steered by exactly the rules the parser enforces.
    """

    model_kind = "text"
    # One schema-constrained call: `model_request`, then `parse_answer` and `finish`.
    batchable = True
    #: The instruction sent as `systemInstruction`.
    system_instruction: ClassVar[str]
    #: JSON Schema of the answer (the subset of `gateway.operations.schema`).
    response_schema: ClassVar[Mapping[str, Any]]
    #: Dataclass the answer decodes into; its fields mirror the schema's properties.
    answer_type: ClassVar[type[Any]]

    @abstractmethod
    def prompt_parts(self, request: RequestT) -> Sequence[Part]:
        """The user turn for a validated request."""

    def normalise(self, answer: AnswerT) -> AnswerT:
        """`answer` (which fits the schema) made to meet every rule the proto documents for the
        result, where that keeps its meaning (scale, order, canonical spelling); raises
        `RuleBroken` where it cannot. The one place an operation repairs model output; the
        identity unless overridden."""
        return answer

    def finish(self, request: RequestT, answer: AnswerT) -> ResultT:
        """The result built from a checked answer."""
        return cast(ResultT, answer)

    async def complete(self, request: RequestT, answer: AnswerT) -> ResultT:
        """`finish`, where it should run: on the event loop unless a spec with real work to do
        (rendering) sends it elsewhere. Interactive runs and batch lines both finish here."""
        return self.finish(request, answer)

    def model_request(self, request: RequestT, model: str) -> ModelRequest:
        """The model request for a validated request."""
        return ModelRequest(
            model=model,
            parts=tuple(self.prompt_parts(request)),
            system_instruction=self.system_instruction,
            response_schema=self.response_schema,
            response_modalities=("TEXT",),
        )

    def parse_answer(self, text: str, finish_reason: str = "STOP") -> AnswerT:
        """The model's JSON text as a typed, checked, normalised answer.

        Every string loses its surrounding whitespace first (so a required string of spaces is
        as missing as an empty one). Raises `UpstreamBadResponse` when the text is not JSON, does
        not satisfy the schema, or breaks a documented rule `normalise` cannot repair; an answer
        outside the schema is never clamped into it. Messages give the place and the rule, never
        the raw text.
        """
        ended = "" if finish_reason in ("STOP", "") else f" (finish reason {finish_reason})"
        try:
            data = _trimmed(codec.loads_strict(text))
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than json reads
            raise UpstreamBadResponse(
                f"the model's answer for {self.name} is not valid JSON{ended}"
            ) from None
        try:
            schema.validate(data, self.response_schema)
            answer = cast(AnswerT, codec.from_jsonable(self.answer_type, data))
        except (schema.SchemaMismatch, codec.DecodeError) as exc:
            raise UpstreamBadResponse(
                f"the model's answer for {self.name} does not fit its schema at "
                f"{exc.path}: {exc.problem}{ended}"
            ) from None
        try:
            return self.normalise(answer)
        except RuleBroken as exc:
            raise UpstreamBadResponse(
                f"the model's answer for {self.name} breaks a rule of its result at "
                f"{exc.path}: {exc.problem}{ended}"
            ) from None

    async def ask(self, request: RequestT, client: ModelClient, ctx: RunContext) -> AnswerT:
        """The schema-constrained model call for a validated request, parsed and checked."""
        return await call_model(
            client,
            self.model_request(request, ctx.model),
            ctx,
            lambda response: self.parse_answer(response.text, response.finish_reason),
            stream_text=True,
        )

    async def run(self, request: RequestT, client: ModelClient, ctx: RunContext) -> ResultT:
        """`ask`, then `complete`."""
        return await self.complete(request, await self.ask(request, client, ctx))


def _trimmed(data: Any) -> Any:
    """Parsed JSON with every string (not object keys) stripped of surrounding whitespace."""
    if isinstance(data, str):
        return data.strip()
    if isinstance(data, list):
        return [_trimmed(item) for item in data]
    if isinstance(data, dict):
        return {key: _trimmed(value) for key, value in data.items()}
    return data
