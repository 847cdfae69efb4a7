"""GatewayService: the AI operations over gRPC.

Each handler converts the request, runs it through the shared pipeline as the authenticated
caller, and converts the result, all by its operation's binding (`gateway.rpc.bindings`).
Errors are domain errors raised below; the error-mapping interceptor reports them. A unary
result that takes longer than the long-poll window is answered as a pending job handle (the
work goes on; asking again joins it).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc import aio
from viewbait.ai.v1 import common_pb2, gateway_service_pb2, operations_pb2

from gateway.auth import Principal
from gateway.execution import Checked, Outcome, Pending, Pipeline, Prepared
from gateway.jobs import progress as job_progress
from gateway.operations.base import ProgressEvent, ProgressKind
from gateway.operations.generate_thumbnail import GeneratedThumbnails, ThumbnailVariation
from gateway.rpc import bindings, convert
from gateway.rpc import context as request_context
from gateway.rpc.bindings.generate_thumbnail import generated_thumbnail
from gateway.tasks import settle

Context = aio.ServicerContext[Any, Any]
ResponseT = TypeVar("ResponseT", bound=Message)


@functools.cache
def _recallable(message: Descriptor) -> bool:
    """Whether requests of type `message` may be recalled once checked (`Pipeline.recall`):
    those that carry no bytes (no images), whose checks read the message alone."""
    return not _carries_bytes(message, set())


def _carries_bytes(message: Descriptor, seen: set[str]) -> bool:
    seen.add(message.full_name)
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return True
        nested = field.message_type
        if nested is not None and nested.full_name not in seen and _carries_bytes(nested, seen):
            return True
    return False


def _caller() -> tuple[request_context.RequestContext, Principal]:
    rc = request_context.current()
    assert rc.principal is not None, "AuthInterceptor runs before every servicer"
    return rc, rc.principal


class GatewayServicer:
    """Serves GatewayService from a `Pipeline` (registered by `add_to_server`: its unary
    behaviours may answer encoded bytes, which the generated servicer's types do not allow)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    async def _unary(
        self, binding: bindings.UnaryBinding[ResponseT], request: Any
    ) -> ResponseT | bytes:
        """Runs one unary operation for the caller and builds its response message (encoded
        already for a hit in the hot copy: see `add_to_server`)."""
        rc, principal = _caller()
        pipeline = self._pipeline
        prepared: Prepared | Checked | None = None
        encoded = None
        if _recallable(request.DESCRIPTOR):
            encoded = request.SerializeToString()
            prepared = pipeline.recall(binding.name, encoded, principal)
        if prepared is None:
            prepared = pipeline.prepare(
                binding.name, binding.to_request(request), principal, encoded=encoded
            )
        outcome = await pipeline.run(prepared, deadline=rc.deadline, request_id=rc.request_id)
        if isinstance(outcome, Outcome) and outcome.views is not None:
            return binding.encoded_hit(outcome, rc.request_id)
        if isinstance(outcome, Pending):
            return binding.response_type(
                pending=convert.pending_job(outcome),
                metadata=common_pb2.ResponseMetadata(request_id=rc.request_id),
            )
        metadata = convert.response_metadata(
            rc.request_id,
            model=outcome.model,
            spend=outcome.spend,
            cached=outcome.cached,
            coalesced=outcome.coalesced,
        )
        return binding.response_type(result=outcome.view(binding.to_result), metadata=metadata)

    async def AnalyzeVideo(
        self, request: operations_pb2.AnalyzeVideoRequest, context: Context
    ) -> gateway_service_pb2.AnalyzeVideoResponse | bytes:
        return await self._unary(bindings.ANALYZE_VIDEO, request)

    async def SuggestThumbnailConcepts(
        self, request: operations_pb2.SuggestThumbnailConceptsRequest, context: Context
    ) -> gateway_service_pb2.SuggestThumbnailConceptsResponse | bytes:
        return await self._unary(bindings.SUGGEST_THUMBNAIL_CONCEPTS, request)

    async def ComputeAttentionHeatmap(
        self, request: operations_pb2.ComputeAttentionHeatmapRequest, context: Context
    ) -> gateway_service_pb2.ComputeAttentionHeatmapResponse | bytes:
        return await self._unary(bindings.COMPUTE_ATTENTION_HEATMAP, request)

    async def CheckChannelConsistency(
        self, request: operations_pb2.CheckChannelConsistencyRequest, context: Context
    ) -> gateway_service_pb2.CheckChannelConsistencyResponse | bytes:
        return await self._unary(bindings.CHECK_CHANNEL_CONSISTENCY, request)

    async def GenerateThumbnail(
        self, request: operations_pb2.GenerateThumbnailRequest, context: Context
    ) -> AsyncIterator[gateway_service_pb2.GenerateThumbnailResponse]:
        """Streams progress and images while the generation runs, then the summary.

        The generation runs in a task of its own; if the caller goes away, the stream is
        cancelled and so is that task (nobody else waits for these images). With an idempotency
        key the generation finishes anyway: a repeat of the request with the same key (a retry
        after a lost connection) gets the first generation's images without a new model call,
        joining it if it still runs.
        """
        rc, principal = _caller()
        # The tier and the sizes are checked before the stream starts; the rest of validation
        # follows admission inside the run, and refuses before the first message too.
        binding = bindings.GENERATE_THUMBNAIL
        prepared = self._pipeline.prepare(
            binding.name,
            binding.to_request(request),
            principal,
            idempotency_key=request.idempotency_key,
        )
        # The run's messages, then None once it ended (its done callback: after its last event).
        events: asyncio.Queue[gateway_service_pb2.GenerateThumbnailResponse | None]
        events = asyncio.Queue()
        sent: set[int] = set()

        async def progress(event: ProgressEvent) -> None:
            message = _stream_event(event, done=len(sent))
            if message is not None:
                if event.kind is ProgressKind.IMAGE_READY:
                    sent.add(event.index)
                events.put_nowait(message)

        run = asyncio.create_task(
            self._pipeline.run(
                prepared,
                deadline=rc.deadline,
                request_id=rc.request_id,
                progress=progress,
                long_poll=False,
            )
        )
        run.add_done_callback(lambda _: events.put_nowait(None))
        try:
            # Waiting on the queue alone (no helper task): a cancelled stream leaves nothing.
            while (message := await events.get()) is not None:
                yield message
            outcome = run.result()
        finally:
            await settle(run)
        result: GeneratedThumbnails = outcome.result
        # Images the run produced without announcing them still reach the caller, in order.
        for variation in result.variations:
            if variation.index not in sent:
                yield _image_message(variation)
        yield gateway_service_pb2.GenerateThumbnailResponse(
            summary=gateway_service_pb2.GenerateThumbnailSummary(
                image_count=len(result.variations),
                metadata=convert.response_metadata(
                    rc.request_id,
                    model=outcome.model,
                    spend=outcome.spend,
                    cached=outcome.cached,
                    coalesced=outcome.coalesced,
                ),
            )
        )


def add_to_server(servicer: GatewayServicer, server: aio.Server) -> None:
    """Registers `servicer` as GatewayService on `server`, as the generated
    `add_GatewayServiceServicer_to_server` does, except that a unary response may also be
    `bytes`: its message encoded already (a hit in the hot copy), sent as they are, and that
    the methods are found through the generic handler alone (below)."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in _SERVICE.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=_encoded_or(response_type.SerializeToString),
            )
    # Looked up by the generic handler only, not registered with grpc as well (as the generated
    # function does): in grpc.aio 1.85 a registered method's call costs the server about 26k
    # more instructions (callgrind, `bench/hit_instructions.py`: 770k -> 744k a hit), a tenth
    # of what the gateway adds to a hit. Reflection reads the descriptors, not this table.
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(_SERVICE.full_name, handlers),)
    )


_SERVICE = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]


def _encoded_or(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """`serialize`, passing what is encoded already through."""

    def encode(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return encode


def _image_message(variation: ThumbnailVariation) -> gateway_service_pb2.GenerateThumbnailResponse:
    return gateway_service_pb2.GenerateThumbnailResponse(image=generated_thumbnail(variation))


def _stream_event(
    event: ProgressEvent, *, done: int
) -> gateway_service_pb2.GenerateThumbnailResponse | None:
    """The stream message for a progress event (`done` images delivered so far), or None for
    events the stream does not carry."""
    if event.kind is ProgressKind.IMAGE_READY and event.image is not None:
        return _image_message(ThumbnailVariation(event.index, event.image, event.text))
    if event.kind is ProgressKind.STARTED:
        progress = job_progress.describe(event, done)
        assert progress is not None, "a started step is always described"
        return gateway_service_pb2.GenerateThumbnailResponse(
            progress=common_pb2.Progress(
                fraction=progress.fraction, stage=progress.stage, message=progress.message
            )
        )
    return None
