"""`GatewayClient`: an asyncio client for the gateway's services over one channel."""

from __future__ import annotations

import copy
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio
from viewbait.ai.v1 import (
    gateway_service_pb2,
    gateway_service_pb2_grpc,
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    operations_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from viewbait_gateway_client import jobs
from viewbait_gateway_client.credentials import Metadata, call_metadata, credential_metadata
from viewbait_gateway_client.errors import GatewayError
from viewbait_gateway_client.jobs import DEFAULT_BACKOFF, Backoff, RetryHook
from viewbait_gateway_client.tls import TlsConfig

_Req = TypeVar("_Req", bound=Message)
_Resp = TypeVar("_Resp", bound=Message)

#: gRPC's default 4 MiB receive limit is below one generated image plus its job; the gateway
#: sends up to 32 MiB per message by default.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class GatewayClient:
    """Calls the gateway's GatewayService, JobService and UsageService with one set of
    credentials.

    Pass a user's JWT as `token`, or the backend's service token as `token` together with the
    `user_id` and `tier` the call acts for. Every method takes the RPC's request message, raises
    `GatewayError` (with reason, retry-after and field violations decoded) on failure, and accepts
    `timeout_s` (sent as the gRPC deadline, which also bounds the gateway's work) and a
    `request_id` (sent as `x-request-id`, for tracing).
    Streaming RPCs return async iterators; leaving the loop early cancels the call, so the
    gateway stops work nobody waits for.

    Create it inside a running event loop (grpc.aio channels belong to one), and use it as an
    async context manager or call `close()`.
    """

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        user_id: str | None = None,
        tier: str | None = None,
        tls: TlsConfig | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Opens a channel to `target` ("host:port"): TLS as `tls` says (the CA to trust, a
        client certificate for mutual TLS, the server name), or with ready-made `credentials`;
        cleartext without either."""
        if tls is not None and credentials is not None:
            raise ValueError("give tls or credentials, not both")
        self._token = token
        self._metadata: Metadata = credential_metadata(token, user_id=user_id, tier=tier)
        self._owns_channel = True
        channel_options = [
            ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
            *(() if tls is None else tls.channel_options()),
            *options,  # later entries win
        ]
        if tls is not None:
            credentials = tls.credentials()
        self._channel = (
            aio.secure_channel(target, credentials, channel_options)
            if credentials is not None
            else aio.insecure_channel(target, channel_options)
        )
        self._gateway = gateway_service_pb2_grpc.GatewayServiceStub(self._channel)
        self._jobs = job_service_pb2_grpc.JobServiceStub(self._channel)
        self._usage = usage_service_pb2_grpc.UsageServiceStub(self._channel)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel, cancelling calls still in flight (a no-op on `acting_as` views)."""
        if self._owns_channel:
            await self._channel.close()

    def acting_as(self, user_id: str, tier: str) -> GatewayClient:
        """A client on this one's channel that acts for another user (service token only).

        A backend serving many users keeps one client, and so one HTTP/2 connection, and takes a
        view per user. Closing a view does nothing; close the original when done.
        """
        if self._token is None:
            raise ValueError("acting_as needs a client created with a service token")
        view = copy.copy(self)
        view._metadata = credential_metadata(self._token, user_id=user_id, tier=tier)
        view._owns_channel = False
        return view

    # GatewayService

    def generate_thumbnail(
        self,
        request: operations_pb2.GenerateThumbnailRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[gateway_service_pb2.GenerateThumbnailResponse, None]:
        """Streams progress events, each image as it is ready, then the summary."""
        return self._stream(self._gateway.GenerateThumbnail, request, timeout_s, request_id)

    async def analyze_video(
        self,
        request: operations_pb2.AnalyzeVideoRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> gateway_service_pb2.AnalyzeVideoResponse:
        """The analysis, or a pending job handle (`WhichOneof("outcome")`)."""
        return await self._unary(self._gateway.AnalyzeVideo, request, timeout_s, request_id)

    async def suggest_thumbnail_concepts(
        self,
        request: operations_pb2.SuggestThumbnailConceptsRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> gateway_service_pb2.SuggestThumbnailConceptsResponse:
        """3 to 6 concepts, or a pending job handle."""
        return await self._unary(
            self._gateway.SuggestThumbnailConcepts, request, timeout_s, request_id
        )

    async def compute_attention_heatmap(
        self,
        request: operations_pb2.ComputeAttentionHeatmapRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> gateway_service_pb2.ComputeAttentionHeatmapResponse:
        """Attention regions and a heatmap PNG, or a pending job handle."""
        return await self._unary(
            self._gateway.ComputeAttentionHeatmap, request, timeout_s, request_id
        )

    async def check_channel_consistency(
        self,
        request: operations_pb2.CheckChannelConsistencyRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> gateway_service_pb2.CheckChannelConsistencyResponse:
        """A 0-100 score with per-dimension findings, or a pending job handle."""
        return await self._unary(
            self._gateway.CheckChannelConsistency, request, timeout_s, request_id
        )

    # JobService

    async def submit_job(
        self,
        request: job_service_pb2.SubmitJobRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> job_service_pb2.SubmitJobResponse:
        """Queues an operation; `existing` says whether an active job with the key was joined."""
        return await self._unary(self._jobs.SubmitJob, request, timeout_s, request_id)

    async def get_job(
        self,
        request: job_service_pb2.GetJobRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> job_service_pb2.GetJobResponse:
        """One of the caller's jobs, with its result once it succeeded."""
        return await self._unary(self._jobs.GetJob, request, timeout_s, request_id)

    def watch_job(
        self,
        request: job_service_pb2.WatchJobRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[job_service_pb2.WatchJobResponse, None]:
        """The job's current state, then each change until it is terminal."""
        return self._stream(self._jobs.WatchJob, request, timeout_s, request_id)

    async def cancel_job(
        self,
        request: job_service_pb2.CancelJobRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> job_service_pb2.CancelJobResponse:
        """Cancels a job; returns it as it is after the request."""
        return await self._unary(self._jobs.CancelJob, request, timeout_s, request_id)

    async def list_jobs(
        self,
        request: job_service_pb2.ListJobsRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> job_service_pb2.ListJobsResponse:
        """One page of the caller's jobs, newest first, without results."""
        return await self._unary(self._jobs.ListJobs, request, timeout_s, request_id)

    async def retry_job(
        self,
        request: job_service_pb2.RetryJobRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> job_service_pb2.RetryJobResponse:
        """Re-drives a failed job (a dead letter) with a fresh attempt budget; a job queued,
        running or succeeded is returned as it is (`retried` false), so repeating it is safe."""
        return await self._unary(self._jobs.RetryJob, request, timeout_s, request_id)

    # UsageService

    async def get_usage(
        self,
        request: usage_service_pb2.GetUsageRequest,
        *,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> usage_service_pb2.GetUsageResponse:
        """Spend, tokens and upstream calls by day, operation and model, what the cache and
        coalescing saved, and the budgets that remain: the caller's own, or (service token) any
        user's or the fleet's."""
        return await self._unary(self._usage.GetUsage, request, timeout_s, request_id)

    # Jobs, followed to their end

    def run_job(
        self,
        request: job_service_pb2.SubmitJobRequest,
        *,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        cancel_on_abandon: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: RetryHook | None = None,
    ) -> AsyncGenerator[job_service_pb2.WatchJobResponse, None]:
        """Submits a job and yields its events until it is terminal: see `follow_job`.

        `idempotency_key` (or the request's own) makes the submit safe to repeat: a submit that
        could not reach the gateway is then sent again and joins the job the first one may have
        queued, as does a later `run_job` with the same key. Without a key such a failure is
        raised, since a retry could queue the job twice. `timeout_s` bounds submit and follow
        together.
        """
        return jobs.run_job(
            self,
            request,
            idempotency_key=idempotency_key,
            timeout_s=timeout_s,
            request_id=request_id,
            cancel_on_abandon=cancel_on_abandon,
            backoff=backoff,
            on_retry=on_retry,
        )

    def follow_job(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        timeout_s: float | None = None,
        request_id: str | None = None,
        cancel_on_abandon: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: RetryHook | None = None,
    ) -> AsyncGenerator[job_service_pb2.WatchJobResponse, None]:
        """Yields a job's events: its current state, then each change (progress, transitions),
        ending after the terminal state (SUCCEEDED with the result, FAILED, CANCELLED).

        Unlike `watch_job`, a broken stream (UNAVAILABLE: connection reset, gateway restarting
        or draining) is reopened after `backoff` and resumed after the last `sequence` yielded,
        so no event is yielded twice; `on_retry(error, delay_s)` hears of each reconnect. Pass
        `after_sequence` to resume a stream followed earlier (0: from the current state).
        Other errors raise `GatewayError`, and so does the end of `timeout_s` (the whole
        follow, reconnects included; DEADLINE_EXCEEDED, `error_metadata["job_id"]` set): the
        job goes on regardless.

        Leaving early (break, an exception, task cancellation) ends the stream; with
        `cancel_on_abandon` it also cancels the job on the gateway. A `break` closes the
        iterator when it is collected (at once in CPython); wrap it in
        `contextlib.aclosing(...)` to close it at a point of your choosing.
        """
        return jobs.follow_job(
            self,
            job_id,
            after_sequence=after_sequence,
            timeout_s=timeout_s,
            request_id=request_id,
            cancel_on_abandon=cancel_on_abandon,
            backoff=backoff,
            on_retry=on_retry,
        )

    async def await_job(
        self,
        request: job_service_pb2.SubmitJobRequest,
        *,
        idempotency_key: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        cancel_on_abandon: bool = False,
        backoff: Backoff = DEFAULT_BACKOFF,
        on_retry: RetryHook | None = None,
    ) -> job_pb2.Job:
        """Submits a job and waits for it (`run_job`): returns the succeeded job with its
        result, or raises `JobFailedError` (the job's error as code, reason and message),
        `JobCancelledError`, or `GatewayError` (DEADLINE_EXCEEDED after `timeout_s`)."""
        return await jobs.final_job(
            self.run_job(
                request,
                idempotency_key=idempotency_key,
                timeout_s=timeout_s,
                request_id=request_id,
                cancel_on_abandon=cancel_on_abandon,
                backoff=backoff,
                on_retry=on_retry,
            )
        )

    # The two call shapes every method above shares.

    async def _unary(
        self,
        method: aio.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        timeout_s: float | None,
        request_id: str | None,
    ) -> _Resp:
        metadata = call_metadata(self._metadata, request_id)
        try:
            return await method(request, timeout=timeout_s, metadata=metadata)
        except aio.AioRpcError as exc:
            raise GatewayError.from_rpc_error(exc) from exc

    async def _stream(
        self,
        method: aio.UnaryStreamMultiCallable[_Req, _Resp],
        request: _Req,
        timeout_s: float | None,
        request_id: str | None,
    ) -> AsyncGenerator[_Resp, None]:
        metadata = call_metadata(self._metadata, request_id)
        call = method(request, timeout=timeout_s, metadata=metadata)
        try:
            async for message in call:
                yield message
        except aio.AioRpcError as exc:
            raise GatewayError.from_rpc_error(exc) from exc
        finally:
            # A no-op once the stream ended; otherwise the caller stopped reading early (break,
            # exception, aclose), and the gateway should stop producing for nobody.
            call.cancel()
