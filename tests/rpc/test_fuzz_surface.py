"""Property-based fuzzing of the whole gRPC surface against a live gateway.

Hypothesis generates requests for every RPC of every service the gateway serves (the five
operations, JobService, UsageService, health), from the protos' descriptors: any field set or
not, adversarial text (empty, huge, control characters, NUL, bidi overrides, combining marks,
emoji), random bytes where images go (and real images cut short or scribbled on), any number
where enums go, now and then raw bytes that are no message at all. Half of them start from a
valid request with a few fields overwritten, so many are accepted and do real work against the
offline Gemini emulator (no latency); the rest are refused. Each is sent over a real socket to
one in-process gateway on a fresh PostgreSQL schema, with a deadline.

What must hold for every call:

- no INTERNAL or UNKNOWN status, no hang (a unary call or a finite stream that reaches its
  deadline is a hang; the two watch streams are read once and cancelled, as callers do);
- every failure of the gateway's services has ErrorInfo with the request id, also in the
  message; every INVALID_ARGUMENT that is an input error (not the model's safety block) has a
  BadRequest field violation;
- a refused request leaves nothing behind: the rows of the results, jobs, blobs and batches
  tables are counted before and after it (once the work of earlier accepted requests has
  settled), and at the end no job or usage-ledger row belongs to a caller whose request was
  refused (each request is its own caller).

The number of requests is `GATEWAY_TEST_FUZZ_EXAMPLES` (default `DEFAULT_EXAMPLES`, sized for
CI); docs/fuzzing.md says how to run longer.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from viewbait.ai.v1 import (
    gateway_service_pb2,
    job_service_pb2,
    usage_service_pb2,
)

from gateway.config import BatchSettings, Tier, UsageSettings
from gateway.emulator import EmulatorServer
from gateway.rpc.status import ERROR_DOMAIN
from gateway.server import GatewayServer
from gateway.testing.postgres import fresh_schema
from tests.fixtures.gateways import SERVICE_TOKEN, Samples, gateway_settings
from tests.fixtures.stores import DATABASE_URL, store_settings

T = TypeVar("T")

#: Requests in a CI run (about 80 s on two cores busy with other work).
DEFAULT_EXAMPLES = 4000
EXAMPLES = int(os.environ.get("GATEWAY_TEST_FUZZ_EXAMPLES", str(DEFAULT_EXAMPLES)))
#: Per-call deadline: far above what any request takes here, so reaching it is a hang.
CALL_TIMEOUT_S = 30.0
#: How long the work of accepted requests may take to settle before a refused one is counted.
SETTLE_PATIENCE_S = 20.0

_SERVICES = [
    gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"],
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"],
    usage_service_pb2.DESCRIPTOR.services_by_name["UsageService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
METHODS: list[descriptor.MethodDescriptor] = [m for s in _SERVICES for m in s.methods]
#: Streams that never end by themselves: read once, then cancelled.
WATCHES = {"viewbait.ai.v1.JobService.WatchJob", "grpc.health.v1.Health.Watch"}
#: Refusals of the caller's request (as opposed to failures of work that ran).
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
}
#: INVALID_ARGUMENT reasons that are not input errors: the model declined the content.
NOT_INPUT_ERRORS = {"SAFETY_BLOCKED"}
#: Tables whose rows a refused request must not add (the ledger is checked per caller).
COUNTED_TABLES = ("ai_results", "ai_jobs", "ai_blobs", "ai_batches")


# --- the gateway, live on a loop of its own ----------------------------------------------


class LiveGateway:
    """The emulator and an in-process gateway on a fresh PostgreSQL schema, served from an
    event loop on a thread of their own, so the test calls them through plain blocking
    channels (and Hypothesis drives plain functions)."""

    def __init__(self, blob_dir: Path) -> None:
        self._blob_dir = blob_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._schema: Any = None
        self.schema = ""
        self.server: GatewayServer | None = None
        self.emulator: EmulatorServer | None = None
        self._db: asyncpg.Connection | None = None

    def run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 120.0) -> T:
        """Runs `coroutine` on the gateway's loop and returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def start(self) -> None:
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        self.emulator = EmulatorServer(host="127.0.0.1", port=0, api_key="fuzz-emulator-key")
        await self.emulator.start()
        self._schema = fresh_schema(DATABASE_URL, "viewbait_fuzz_")
        self.schema = await self._schema.__aenter__()
        settings = gateway_settings(
            self.emulator,
            self._blob_dir,
            store=store_settings(self.schema, migrate_on_start=True, command_timeout_s=10.0),
            # Batch jobs wait in the queue for the whole run: no background work from them.
            batch=BatchSettings(gather_window_s=86400, max_batch_size=10_000),
            usage=UsageSettings(flush_interval_s=0.05),
        )
        self.server = GatewayServer(settings)
        await self.server.start()
        self._db = await asyncpg.connect(DATABASE_URL)

    def stop(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    async def _stop(self) -> None:
        if self._db is not None:
            await self._db.close()
        if self.server is not None:
            await self.server.stop(grace=1.0)
        if self.emulator is not None:
            await self.emulator.stop()
        if self._schema is not None:
            await self._schema.__aexit__(None, None, None)

    @property
    def target(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.port}"

    def counts(self) -> dict[str, int]:
        """Rows in each counted table."""
        return self.run(self._counts())

    async def _counts(self) -> dict[str, int]:
        assert self._db is not None
        parts = ", ".join(f'(SELECT count(*) FROM "{self.schema}".{t})' for t in COUNTED_TABLES)
        row = await self._db.fetchrow(f"SELECT {parts}")
        assert row is not None
        return dict(zip(COUNTED_TABLES, (int(v) for v in row), strict=True))

    def settle(self) -> None:
        """Waits until no interactive job is queued or running and the executor's background
        writes are done: what the work of accepted requests leaves is then written."""
        self.run(self._settle(), timeout_s=SETTLE_PATIENCE_S + 30)

    async def _settle(self) -> None:
        assert self._db is not None and self.server is not None
        give_up = time.monotonic() + SETTLE_PATIENCE_S
        query = (
            f'SELECT count(*) FROM "{self.schema}".ai_jobs '
            "WHERE status IN ('queued', 'running') AND delivery = 'interactive'"
        )
        while True:
            executor = self.server.executor
            if executor is not None:
                await executor.flush()
            if await self._db.fetchval(query) == 0:
                break
            if time.monotonic() > give_up:
                raise AssertionError("the work of accepted requests did not settle")
            await asyncio.sleep(0.02)
        if executor is not None:
            await executor.flush()
        # The usage ledger writes in the background: what it holds now is written before the
        # rows are counted.
        usage = self.server.usage
        if usage is not None:
            assert await usage.flush(), "the usage ledger could not write to the store"

    def rows_of(self, users: list[str]) -> dict[str, int]:
        """Job and usage-ledger rows belonging to any of `users`."""
        return self.run(self._rows_of(users))

    async def _rows_of(self, users: list[str]) -> dict[str, int]:
        assert self._db is not None
        found = {}
        for table in ("ai_jobs", "ai_usage", "ai_usage_daily"):
            found[table] = int(
                await self._db.fetchval(
                    f'SELECT count(*) FROM "{self.schema}".{table} WHERE user_id = ANY($1)', users
                )
            )
        return found


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    gateway = LiveGateway(tmp_path_factory.mktemp("fuzz-blobs"))
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


# --- what to send ------------------------------------------------------------------------

EDGE_TEXT = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "\x1b[31mred\x1b[0m",
    "\u202eevil\u202c",
    "\ufeff",
    "\u200b\u200d",
    "e\u0301\u0301\u0301",
    "🦄🏳️‍🌈",
    "\U0010ffff",
    "𝕏" * 70,
    "dQw4w9WgXcQ",
    "{}",
    '{"views": 1}',
    "[]",
    "null",
    "' OR 1=1 --",
    "../../etc/passwd",
    "%s%n%x",
    "SAFETY_BLOCKED",
    "00000000-0000-0000-0000-000000000000",
]

texts = st.one_of(
    st.sampled_from(EDGE_TEXT),
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=20),
    st.builds(
        lambda piece, times: piece * times,
        st.sampled_from(["a", "é", "\x00", "🦄", "\u0301", " ", "{"]),
        st.integers(0, 300_000),
    ),
)


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (90, 120, 200)).save(buffer, "PNG")
    return buffer.getvalue()


_IMAGES = [_png((320, 180)), _png((1, 1)), _png((16, 9))]


@st.composite
def _scribbled(draw: st.DrawFn) -> bytes:
    """A real image cut short, or with a few bytes overwritten."""
    data = bytearray(draw(st.sampled_from(_IMAGES)))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


blobs = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from(_IMAGES),
    _scribbled(),
    st.just(b"\x89PNG\r\n\x1a\n"),
    st.just(b"GIF89a" + b"\x00" * 32),
)

_T = descriptor.FieldDescriptor
_INTS = {
    _T.TYPE_INT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    _T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    _T.TYPE_UINT32: (0, 2**32 - 1),
    _T.TYPE_FIXED32: (0, 2**32 - 1),
    _T.TYPE_INT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    _T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    _T.TYPE_UINT64: (0, 2**64 - 1),
    _T.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _T.TYPE_STRING:
        return texts
    if kind == _T.TYPE_BYTES:
        return blobs
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind in (_T.TYPE_FLOAT, _T.TYPE_DOUBLE):
        return st.floats(width=32 if kind == _T.TYPE_FLOAT else 64)
    if kind == _T.TYPE_ENUM:
        values = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(values), st.integers(-(2**31), 2**31 - 1))
    low, high = _INTS[kind]
    return st.one_of(
        st.integers(-3, 1000).filter(lambda n: low <= n <= high), st.integers(low, high)
    )


@st.composite
def messages(draw: st.DrawFn, message: descriptor.Descriptor, depth: int = 0) -> Message:
    """Any message of type `message`: each field set or not, one member of each oneof."""
    cls = _message_class(message)
    built = cls()
    chosen_oneofs = {
        oneof.name: draw(st.sampled_from([None, *[f.name for f in oneof.fields]]))
        for oneof in message.oneofs
    }
    for f in message.fields:
        oneof = f.containing_oneof
        if oneof is not None and chosen_oneofs[oneof.name] != f.name:
            continue
        if oneof is None and not draw(st.booleans()):
            continue
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            continue  # no map fields in requests
        if f.message_type is not None:
            if depth >= 3:
                continue
            if f.is_repeated:
                count = draw(st.integers(0, 4))
                for _ in range(count):
                    getattr(built, f.name).add().CopyFrom(draw(messages(f.message_type, depth + 1)))
            else:
                getattr(built, f.name).CopyFrom(draw(messages(f.message_type, depth + 1)))
        elif f.is_repeated:
            getattr(built, f.name).extend(draw(st.lists(_scalar(f), max_size=5)))
        else:
            setattr(built, f.name, draw(_scalar(f)))
    return built


def _message_class(message: descriptor.Descriptor) -> type[Message]:
    from google.protobuf import message_factory

    return message_factory.GetMessageClass(message)


@dataclass
class Valid:
    """Valid requests to start from, and the jobs the run has seen (so job ids are real)."""

    samples: Samples
    job_ids: list[str] = field(default_factory=list)

    def request(self, method: descriptor.MethodDescriptor) -> Message:
        name = method.full_name
        if method.containing_service.full_name == "viewbait.ai.v1.GatewayService":
            return self.samples.request(_OPERATION_OF[method.name])
        if name.endswith("SubmitJob"):
            return job_service_pb2.SubmitJobRequest(
                analyze_video=self.samples.request("analyze_video")  # type: ignore[arg-type]
            )
        cls = _message_class(method.input_type)
        request = cls()
        if "job_id" in method.input_type.fields_by_name and self.job_ids:
            request.job_id = self.job_ids[-1]  # type: ignore[attr-defined]
        return request


_OPERATION_OF = {
    "GenerateThumbnail": "generate_thumbnail",
    "AnalyzeVideo": "analyze_video",
    "SuggestThumbnailConcepts": "suggest_thumbnail_concepts",
    "ComputeAttentionHeatmap": "compute_attention_heatmap",
    "CheckChannelConsistency": "check_channel_consistency",
}


@dataclass(frozen=True)
class Call:
    """One request to send: the method, and a message or raw bytes."""

    method: descriptor.MethodDescriptor
    request: Message | bytes
    tier: Tier

    def __repr__(self) -> str:
        shown = self.request if isinstance(self.request, bytes) else str(self.request)[:2000]
        return f"Call({self.method.full_name}, tier={self.tier.value}, {shown!r})"


@st.composite
def calls(draw: st.DrawFn, valid: Valid) -> Call:
    method = draw(st.sampled_from(METHODS))
    tier = draw(st.sampled_from(list(Tier)))
    mode = draw(st.sampled_from(["valid", "mutated", "mutated", "generated", "raw"]))
    request: Message | bytes
    if mode == "raw":
        request = draw(st.binary(max_size=512))
    elif mode == "generated":
        request = draw(messages(method.input_type))
    else:
        request = valid.request(method)
        if mode == "mutated":
            request.MergeFrom(draw(messages(method.input_type)))
        # Drawn whatever the run has seen, so a replayed example draws the same choices.
        pick = draw(st.none() | st.integers(0, 2**16))
        if pick is not None and valid.job_ids and "job_id" in method.input_type.fields_by_name:
            request.job_id = valid.job_ids[pick % len(valid.job_ids)]  # type: ignore[union-attr]
    return Call(method, request, tier)


# --- sending and judging -----------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    message: str = ""
    details: bytes = b""
    responses: list[Message] = field(default_factory=list)


def _serialize(request: Message | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


def send(channel: grpc.Channel, call: Call, user_id: str, request_id: str) -> Outcome:
    method = call.method
    path = f"/{method.containing_service.full_name}/{method.name}"
    output = _message_class(method.output_type)
    metadata = (
        ("authorization", f"Bearer {SERVICE_TOKEN}"),
        ("x-viewbait-user-id", user_id),
        ("x-viewbait-tier", call.tier.value),
        ("x-request-id", request_id),
    )
    try:
        if not method.server_streaming:
            stub = channel.unary_unary(path, _serialize, output.FromString)
            return Outcome(
                grpc.StatusCode.OK,
                responses=[stub(call.request, metadata=metadata, timeout=CALL_TIMEOUT_S)],
            )
        stream = channel.unary_stream(path, _serialize, output.FromString)(
            call.request, metadata=metadata, timeout=CALL_TIMEOUT_S
        )
        responses = []
        for response in stream:
            responses.append(response)
            if method.full_name in WATCHES:
                stream.cancel()
                break
        return Outcome(grpc.StatusCode.OK, responses=responses)
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        if code is grpc.StatusCode.CANCELLED and method.full_name in WATCHES:
            return Outcome(grpc.StatusCode.OK)
        trailing = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
        details = trailing.get("grpc-status-details-bin", b"")
        return Outcome(code, error.details() or "", details)  # type: ignore[attr-defined]


def problems(call: Call, outcome: Outcome, request_id: str) -> list[str]:
    """What is wrong with how the gateway answered `call`."""
    found = []
    code = outcome.code
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS):
        found.append(f"{code.name}: {outcome.message}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        found.append("no answer within the deadline (a hang)")
    if code is grpc.StatusCode.OK or call.method.containing_service.full_name.startswith("grpc."):
        return found
    status = status_pb2.Status.FromString(outcome.details) if outcome.details else None
    info = error_details_pb2.ErrorInfo()
    violations: list[Any] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += bad.field_violations
    if info.domain != ERROR_DOMAIN or info.metadata.get("request_id") != request_id:
        found.append(f"{code.name} without ErrorInfo naming the request id: {outcome.message}")
    if request_id not in outcome.message:
        found.append(f"{code.name} message without the request id: {outcome.message}")
    if (
        code is grpc.StatusCode.INVALID_ARGUMENT
        and info.reason not in NOT_INPUT_ERRORS
        and not violations
    ):
        found.append(f"INVALID_ARGUMENT without a field violation: {outcome.message}")
    return found


@dataclass
class Tally:
    """What the run sent and how it was answered."""

    sent: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    refused_users: list[str] = field(default_factory=list)
    previous_accepted: bool = True


# The suite's per-test timeout is for single scenarios; this one's time grows with the count
# (about 20 ms a request on two busy cores; the bound leaves room for a slower machine).
@pytest.mark.timeout(120 + EXAMPLES * 0.06)
def test_every_rpc_survives_generated_requests(live: LiveGateway, samples: Samples) -> None:
    valid = Valid(samples)
    tally = Tally()
    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    started = time.monotonic()
    with grpc.insecure_channel(live.target, options=options) as channel:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.data())
        def one_request(data: st.DataObject) -> None:
            call = data.draw(calls(valid))
            tally.sent += 1
            user_id = request_id = f"fuzz-{tally.sent}"
            if tally.previous_accepted:
                live.settle()
            before = live.counts()
            outcome = send(channel, call, user_id, request_id)
            tally.codes[outcome.code.name] = tally.codes.get(outcome.code.name, 0) + 1
            found = problems(call, outcome, request_id)
            refused = outcome.code in REFUSALS and "SAFETY_BLOCKED" not in outcome.message
            tally.previous_accepted = not refused
            if refused:
                tally.refused_users.append(user_id)
                after = live.counts()
                if after != before:
                    found.append(f"a refused request left rows behind: {before} -> {after}")
            for response in outcome.responses:
                job = getattr(response, "job", None)
                if job is not None and job.id and job.id not in valid.job_ids:
                    valid.job_ids.append(job.id)
                pending = getattr(response, "pending", None)
                if pending is not None and pending.job_id:
                    valid.job_ids.append(pending.job_id)
            assert not found, (call, outcome.code, found)

        one_request()

    live.settle()
    leftovers = live.rows_of(tally.refused_users)
    elapsed = time.monotonic() - started
    print(f"\nfuzzed {tally.sent} requests in {elapsed:.1f} s: {dict(sorted(tally.codes.items()))}")
    assert leftovers == {"ai_jobs": 0, "ai_usage": 0, "ai_usage_daily": 0}, leftovers
    assert tally.sent >= EXAMPLES
    # The run exercised both sides: requests that did work and requests that were refused.
    assert tally.codes.get("OK", 0) > 0 and tally.refused_users, tally.codes
