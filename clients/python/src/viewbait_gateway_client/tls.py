"""TLS to the gateway: which CA to trust, the client certificate of mutual TLS, and the name the
server's certificate must carry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """How `GatewayClient` secures its channel.

    Everything is optional: `TlsConfig()` is TLS verified against the system's root
    certificates. `root_certificates` (PEM) replaces them, e.g. with a private CA's;
    `certificate_chain` and `private_key` (PEM, both or neither) are the client certificate a
    gateway with mutual TLS asks for; `server_name` is the name the gateway's certificate must
    carry when it differs from the target's host (e.g. dialling an IP address), also sent as
    SNI. `from_files` reads the PEM files.
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError(
                "certificate_chain and private_key go together: give the client certificate "
                "and its key, or neither"
            )
        if self.server_name is not None and not self.server_name.strip():
            raise ValueError("server_name must not be empty")

    @classmethod
    def from_files(
        cls,
        *,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Reads the PEM files: the CA to trust (None: the system's), and the client
        certificate and key of mutual TLS. A missing file raises `OSError` naming it."""
        return cls(
            root_certificates=None if ca_file is None else Path(ca_file).read_bytes(),
            certificate_chain=None if cert_file is None else Path(cert_file).read_bytes(),
            private_key=None if key_file is None else Path(key_file).read_bytes(),
            server_name=server_name,
        )

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """The channel options it needs (the server name override)."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]
