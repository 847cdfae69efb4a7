"""The standard health service, with `List` served too.

grpcio-health-checking's asyncio servicer answers `Check` and `Watch` but not `List` (its base
class's `List` is the generated UNIMPLEMENTED stub), while reflection advertises the whole
`grpc.health.v1.Health` service. This servicer answers `List` from the same statuses `Check`
reads, so a probe sees every component (the overall `""`, the store, the limiter, the model
backend) in one call.
"""

from __future__ import annotations

from typing import Any

from grpc import aio
from grpc_health.v1 import health, health_pb2

_LIST_RESPONSE: Any = getattr(health_pb2, "HealthListResponse")  # noqa: B009


class HealthServicer(health.aio.HealthServicer):
    """`grpc.health.v1.Health` with `Check`, `Watch` and `List`."""

    async def List(self, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        """Every service's status; statuses change only on this event loop, so the snapshot is
        consistent."""
        # The upstream servicer keeps the statuses in this mapping and offers no reader of it;
        # the typing stubs predate `List` (HealthListRequest and HealthListResponse).
        statuses: dict[str, Any] = dict(getattr(self, "_server_status"))  # noqa: B009
        return _LIST_RESPONSE(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )
