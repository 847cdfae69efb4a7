"""The Batch API of the offline Gemini emulator (not Gemini): batches of inline requests that
move PENDING -> RUNNING -> a terminal state, each line answered exactly as `generateContent`
answers the same request alone (text, images and `usageMetadata`), so results are deterministic.

The wire, as google-genai's `batches` module sends and reads it (Gemini Developer API):

- create: `POST /{version}/models/{model}:batchGenerateContent` with
  `{"batch": {"displayName", "inputConfig": {"requests": {"requests": [{"request":
  GenerateContentRequest, "metadata": {...}}, ...]}}}}`; answers an Operation
  `{"name": "batches/ID", "metadata": GenerateContentBatch}`.
- get: `GET /{version}/batches/ID`: the Operation; a finished one is `done`, and a succeeded
  one carries its lines in `metadata.output.inlinedResponses.inlinedResponses`, in request
  order, each `{"response": GenerateContentResponse}` or `{"error": Status}` with the line's
  `metadata` echoed.
- cancel: `POST /{version}/batches/ID:cancel`: a pending or running batch ends CANCELLED
  (nothing is delivered); a finished one is left as it is.
- list: `GET /{version}/batches?pageSize=&pageToken=`: `{"operations": [...],
  "nextPageToken"}`, oldest first.

How batches move is set by knobs (`gateway.emulator.knobs.Knobs`): the least time in PENDING
and RUNNING, a hold that keeps running batches RUNNING, the end of batches created from now on
(succeeded, failed, expired) and which of their lines fail. A batch moves at most one state
each time it is read, so a client always sees PENDING, then RUNNING, then the end.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from gateway.emulator import answer as answers
from gateway.emulator.knobs import Knobs
from gateway.emulator.wire import (
    ApiError,
    GenerateRequest,
    get_field,
    json_object,
    parse_generate_request,
)

#: The `@type` of a batch's metadata and of a finished batch's response.
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.{version}.GenerateContentBatch"
_OUTPUT_TYPE = (
    "type.googleapis.com/google.ai.generativelanguage.{version}.GenerateContentBatchOutput"
)
#: google.rpc.Code INTERNAL: what a failed line reports.
_INTERNAL = 13
_MAX_PAGE = 100


class BatchState(StrEnum):
    """A batch's state as the Gemini API spells it."""

    PENDING = "BATCH_STATE_PENDING"
    RUNNING = "BATCH_STATE_RUNNING"
    SUCCEEDED = "BATCH_STATE_SUCCEEDED"
    FAILED = "BATCH_STATE_FAILED"
    CANCELLED = "BATCH_STATE_CANCELLED"
    EXPIRED = "BATCH_STATE_EXPIRED"

    @property
    def done(self) -> bool:
        """Whether the batch has ended."""
        return self not in (BatchState.PENDING, BatchState.RUNNING)


_ENDS = {
    "succeeded": BatchState.SUCCEEDED,
    "failed": BatchState.FAILED,
    "expired": BatchState.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One inline request of a batch."""

    request: GenerateRequest
    #: The request's JSON as a `generateContent` body (what seeds its answer).
    body: bytes
    metadata: dict[str, str] | None


@dataclass(slots=True)
class EmulatedBatch:
    """One batch the emulator holds."""

    name: str
    api_version: str
    model: str
    display_name: str
    lines: list[BatchLine]
    #: Lines that fail, and the google.rpc.Code they fail with (fixed at creation).
    failing: frozenset[int]
    fail_code: int
    #: How it ends unless cancelled (fixed when the batch is created).
    end: BatchState
    state: BatchState
    created_at: datetime
    updated_at: datetime
    #: `time.monotonic()` of the last state change.
    changed: float
    #: The lines' answers once it succeeded.
    output: list[dict[str, Any]] | None = None

    def summary(self) -> dict[str, Any]:
        """A compact description for the emulator's stats."""
        return {
            "name": self.name,
            "model": self.model,
            "display_name": self.display_name,
            "lines": len(self.lines),
            "state": self.state.value,
        }


class BatchBook:
    """The batches the emulator holds, in creation order. Not thread-safe: one event loop.

    `clock` (monotonic seconds) times the states; `wall` stamps the times reported.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._batches: dict[str, EmulatedBatch] = {}
        #: Batches created and lines received since start (or the last `clear`).
        self.creates = 0
        self.lines = 0

    def clear(self) -> None:
        """Forgets every batch and resets the counters."""
        self._batches.clear()
        self.creates = self.lines = 0

    def summaries(self) -> list[dict[str, Any]]:
        """Every batch, oldest first, as the stats report it."""
        return [batch.summary() for batch in self._batches.values()]

    # -- the routes' work ----------------------------------------------------------------------

    def create(self, version: str, model: str, body: bytes, knobs: Knobs) -> dict[str, Any]:
        """Creates a batch from a `batchGenerateContent` body; its Operation, PENDING.

        Raises `ApiError` (400) for a body Gemini would refuse, naming the bad line.
        """
        payload = json_object(body)
        batch = payload.get("batch")
        if not isinstance(batch, dict):
            raise ApiError(400, "* BatchGenerateContentRequest.batch: batch is not specified\n")
        config = get_field(batch, "inputConfig", "input_config")
        requests = get_field(get_field(config, "requests"), "requests")
        if not isinstance(requests, list) or not requests:
            raise ApiError(
                400,
                "* GenerateContentBatch.input_config: the emulator accepts inline requests "
                "only, and at least one\n",
            )
        lines = [_line(version, model, i, item) for i, item in enumerate(requests)]
        now, wall = self._clock(), self._wall()
        name = f"batches/emulated-{uuid.uuid4().hex[:16]}"
        emulated = EmulatedBatch(
            name=name,
            api_version=version,
            model=model,
            display_name=str(get_field(batch, "displayName", "display_name") or ""),
            lines=lines,
            failing=frozenset(i for i in knobs.batch_fail_lines if 0 <= i < len(lines)),
            fail_code=knobs.batch_fail_code,
            end=_ENDS[knobs.batch_outcome],
            state=BatchState.PENDING,
            created_at=wall,
            updated_at=wall,
            changed=now,
        )
        self._batches[name] = emulated
        self.creates += 1
        self.lines += len(lines)
        return self.operation(emulated)

    def get(self, name: str, knobs: Knobs) -> dict[str, Any]:
        """The Operation of batch `name` after it moved on if it may (`ApiError` 404)."""
        batch = self._find(name)
        self._advance(batch, knobs)
        return self.operation(batch)

    def cancel(self, name: str) -> None:
        """Ends a pending or running batch as CANCELLED (`ApiError` 404 for an unknown one)."""
        batch = self._find(name)
        if not batch.state.done:
            self._move(batch, BatchState.CANCELLED)

    def page(self, size: int, token: str, knobs: Knobs) -> dict[str, Any]:
        """One page of every batch, oldest first (each moved on if it may)."""
        size = min(size, _MAX_PAGE) if size > 0 else _MAX_PAGE
        try:
            start = int(token) if token else 0
        except ValueError:
            raise ApiError(400, f"Invalid page token {token!r}.") from None
        names = list(self._batches)
        chosen = [self._batches[n] for n in names[start : start + size]]
        for batch in chosen:
            self._advance(batch, knobs)
        body: dict[str, Any] = {"operations": [self.operation(b) for b in chosen]}
        if start + size < len(names):
            body["nextPageToken"] = str(start + size)
        return body

    # -- states --------------------------------------------------------------------------------

    def _find(self, name: str) -> EmulatedBatch:
        batch = self._batches.get(name)
        if batch is None:
            raise ApiError(404, f"Batch {name!r} not found.")
        return batch

    def _advance(self, batch: EmulatedBatch, knobs: Knobs) -> None:
        """Moves `batch` one state on when it has stayed long enough in its state."""
        waited = self._clock() - batch.changed
        if batch.state is BatchState.PENDING and waited >= knobs.batch_pending_s:
            self._move(batch, BatchState.RUNNING)
        elif (
            batch.state is BatchState.RUNNING
            and waited >= knobs.batch_running_s
            and not knobs.batch_hold
        ):
            if batch.end is BatchState.SUCCEEDED:
                batch.output = [self._answer(batch, i) for i in range(len(batch.lines))]
            self._move(batch, batch.end)

    def _move(self, batch: EmulatedBatch, state: BatchState) -> None:
        batch.state = state
        batch.changed = self._clock()
        batch.updated_at = self._wall()

    def _answer(self, batch: EmulatedBatch, index: int) -> dict[str, Any]:
        """Line `index`'s inlined response: `generateContent`'s answer, or an error."""
        line = batch.lines[index]
        answered: dict[str, Any]
        if index in batch.failing:
            answered = {
                "error": {
                    "code": batch.fail_code,
                    "message": (
                        "Processing this request failed (offline Gemini emulator: injected "
                        "line failure)."
                    ),
                }
            }
        else:
            seed = answers.request_seed(line.request.model, line.body)
            plan = answers.image_plan(line.request, seed)
            images = [answers.render_image(plan)] if plan else []
            answered = {
                "response": answers.synthesize(line.request, seed, image_bytes=images).body()
            }
        if line.metadata is not None:
            answered["metadata"] = line.metadata
        return answered

    def operation(self, batch: EmulatedBatch) -> dict[str, Any]:
        """The Operation resource of `batch` as `batches.get` answers it."""
        version = batch.api_version
        failed = len(batch.failing) if batch.output is not None else 0
        done = len(batch.lines) if batch.output is not None else 0
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE.format(version=version),
            "name": batch.name,
            "model": f"models/{batch.model}",
            "displayName": batch.display_name,
            "createTime": _timestamp(batch.created_at),
            "updateTime": _timestamp(batch.updated_at),
            "batchStats": {
                "requestCount": str(len(batch.lines)),
                "pendingRequestCount": str(len(batch.lines) - done),
                "successfulRequestCount": str(done - failed),
                "failedRequestCount": str(failed),
            },
            "state": batch.state.value,
        }
        operation: dict[str, Any] = {"name": batch.name, "metadata": metadata}
        if batch.state.done:
            metadata["endTime"] = _timestamp(batch.updated_at)
            operation["done"] = True
        if batch.output is not None:
            output = {"inlinedResponses": {"inlinedResponses": batch.output}}
            metadata["output"] = output
            operation["response"] = {"@type": _OUTPUT_TYPE.format(version=version), **output}
        elif batch.state in (BatchState.FAILED, BatchState.EXPIRED):
            operation["error"] = {
                "code": _INTERNAL,
                "message": f"The batch ended {batch.state.value} (offline Gemini emulator).",
            }
        return operation


def _line(version: str, model: str, index: int, item: Any) -> BatchLine:
    """Line `index` of a create request, validated as a `generateContent` body would be."""
    where = f"batch.input_config.requests.requests[{index}]"
    request = get_field(item, "request")
    if not isinstance(request, dict):
        raise ApiError(400, f"* {where}.request: request is not specified\n")
    request = dict(request)
    named = request.pop("model", None)
    if named is not None and str(named).removeprefix("models/") != model:
        raise ApiError(400, f"* {where}.request.model: every line must ask for models/{model}\n")
    metadata = get_field(item, "metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, f"* {where}.metadata: expected a map of strings\n")
    body = json.dumps(request).encode()
    try:
        parsed = parse_generate_request(version, model, False, body)
    except ApiError as exc:
        raise ApiError(exc.code, f"{where}: {exc.message}", details=exc.details) from None
    return BatchLine(
        parsed, body, None if metadata is None else {str(k): str(v) for k, v in metadata.items()}
    )


def _timestamp(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
