"""JobService: defined in the contract now; its handlers arrive with the durable jobs feature.

Until then every RPC answers UNIMPLEMENTED with a message saying so, through the same error
mapping as everything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

from grpc import aio
from viewbait.ai.v1 import job_service_pb2, job_service_pb2_grpc

from gateway.errors import Unimplemented

Context = aio.ServicerContext[Any, Any]


def _not_yet(rpc: str) -> NoReturn:
    raise Unimplemented(
        f"JobService.{rpc} is not served yet: durable jobs are not implemented in this gateway "
        "version; call the GatewayService RPCs, which answer inline"
    )


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    """Answers UNIMPLEMENTED for every JobService RPC."""

    async def SubmitJob(
        self, request: job_service_pb2.SubmitJobRequest, context: Context
    ) -> job_service_pb2.SubmitJobResponse:
        _not_yet("SubmitJob")

    async def GetJob(
        self, request: job_service_pb2.GetJobRequest, context: Context
    ) -> job_service_pb2.GetJobResponse:
        _not_yet("GetJob")

    async def WatchJob(
        self, request: job_service_pb2.WatchJobRequest, context: Context
    ) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        _not_yet("WatchJob")
        yield  # pragma: no cover - makes this an async generator like the real handler

    async def CancelJob(
        self, request: job_service_pb2.CancelJobRequest, context: Context
    ) -> job_service_pb2.CancelJobResponse:
        _not_yet("CancelJob")

    async def ListJobs(
        self, request: job_service_pb2.ListJobsRequest, context: Context
    ) -> job_service_pb2.ListJobsResponse:
        _not_yet("ListJobs")
