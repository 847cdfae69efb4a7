"""`TlsConfig`: what it refuses before any channel is opened, and what it hands to grpc.
Calls over TLS against a real gateway: tests/rpc/test_tls.py."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from viewbait_gateway_client import GatewayClient, TlsConfig


def test_a_client_certificate_goes_with_its_key() -> None:
    with pytest.raises(ValueError, match="go together"):
        TlsConfig(certificate_chain=b"cert")
    with pytest.raises(ValueError, match="go together"):
        TlsConfig(private_key=b"key")
    with pytest.raises(ValueError, match="must not be empty"):
        TlsConfig(server_name=" ")


def test_files_are_read_and_a_missing_one_is_named(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    assert TlsConfig.from_files(ca_file=ca).root_certificates == ca.read_bytes()
    with pytest.raises(FileNotFoundError, match=r"client\.pem"):
        TlsConfig.from_files(cert_file=tmp_path / "client.pem", key_file=tmp_path / "client.key")


def test_the_server_name_becomes_the_target_name_override() -> None:
    assert TlsConfig().channel_options() == []
    assert TlsConfig(server_name="gateway.internal").channel_options() == [
        ("grpc.ssl_target_name_override", "gateway.internal")
    ]
    assert isinstance(TlsConfig().credentials(), grpc.ChannelCredentials)


async def test_tls_and_ready_made_credentials_are_one_or_the_other() -> None:
    with pytest.raises(ValueError, match="tls or credentials"):
        GatewayClient(
            "127.0.0.1:50051", tls=TlsConfig(), credentials=grpc.ssl_channel_credentials()
        )
