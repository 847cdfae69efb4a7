"""Server reflection that also resolves method symbols.

grpcurl's `describe pkg.Service.Method` asks reflection for the file containing the method's
full name. The default (upb) descriptor pool does not index methods, so the stock servicer
answers NOT_FOUND; this pool view falls back to the enclosing service's file.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import descriptor, descriptor_pool
from grpc import aio
from grpc_reflection.v1alpha import reflection


class _MethodAwarePool:
    """The default descriptor pool, plus method symbols in FindFileContainingSymbol."""

    def __init__(self, pool: descriptor_pool.DescriptorPool) -> None:
        self._pool = pool

    def FindFileContainingSymbol(self, symbol: str) -> descriptor.FileDescriptor:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                raise KeyError(symbol) from None
            if method not in service.methods_by_name:
                raise KeyError(symbol) from None
            return service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def enable(service_names: Iterable[str], server: aio.Server) -> None:
    """Adds reflection for `service_names` (and reflection itself) to `server`."""
    reflection.enable_server_reflection(
        (*service_names, reflection.SERVICE_NAME),
        server,
        pool=_MethodAwarePool(descriptor_pool.Default()),  # type: ignore[arg-type]
    )
