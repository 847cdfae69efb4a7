"""The listener's TLS files (`gateway.tls`): what refuses to start, naming the setting, and how a
change of the files is taken up or, when the new files are bad, reported while the last good
certificate stays. The settings themselves: tests/test_config.py; over real sockets:
tests/rpc/test_tls.py."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.config import (
    ConfigError,
    ServerSettings,
    Settings,
    TlsSettings,
    deployment_problems,
)
from gateway.server import GatewayServer
from gateway.testing.certificates import Authority, CertificateFiles, write_certificates
from gateway.tls import CertificateWatcher, load_material, tls_problems


@pytest.fixture
def files(tmp_path: Path) -> CertificateFiles:
    return write_certificates(tmp_path / "pki")


def tls(files: CertificateFiles, *, mutual: bool = False, **paths: Path) -> TlsSettings:
    chosen = {
        "cert_file": files.server_cert,
        "key_file": files.server_key,
        "client_ca_file": files.ca if mutual else None,
        **paths,
    }
    return TlsSettings(**{k: None if v is None else str(v) for k, v in chosen.items()})


# --- the files ----------------------------------------------------------------------------


def problems_with(settings: TlsSettings) -> list[str]:
    """What start-up says of these files, checked to be what `load_material` raises."""
    problems = tls_problems(settings)
    with pytest.raises(ConfigError) as caught:
        load_material(settings)
    assert caught.value.problems == problems
    return problems


def test_good_files_load(files: CertificateFiles) -> None:
    material = load_material(tls(files, mutual=True))
    assert material.serial == files.server_serial
    assert material.subject == "CN=127.0.0.1"
    assert material.client_ca == files.ca.read_bytes()


def test_missing_files_are_named(files: CertificateFiles, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"
    problems = problems_with(
        tls(files, mutual=True, cert_file=missing, key_file=missing, client_ca_file=missing)
    )
    assert problems == [
        f"VIEWBAIT_TLS__CERT_FILE: cannot read {missing}: No such file or directory",
        f"VIEWBAIT_TLS__KEY_FILE: cannot read {missing}: No such file or directory",
        f"VIEWBAIT_TLS__CLIENT_CA_FILE: cannot read {missing}: No such file or directory",
    ]


def test_a_directory_is_not_a_file(files: CertificateFiles, tmp_path: Path) -> None:
    (problem,) = problems_with(tls(files, key_file=tmp_path))
    assert problem == f"VIEWBAIT_TLS__KEY_FILE: cannot read {tmp_path}: Is a directory"


def test_a_key_of_another_certificate_is_refused(files: CertificateFiles, tmp_path: Path) -> None:
    other = Authority().issue_server()
    _, other_key = other.write(tmp_path / "other.pem", tmp_path / "other.key")
    (problem,) = problems_with(tls(files, key_file=other_key))
    assert problem.startswith("VIEWBAIT_TLS__KEY_FILE: the key in")
    assert "does not belong to the first certificate of" in problem
    assert "VIEWBAIT_TLS__CERT_FILE" in problem


def test_an_encrypted_key_is_refused(files: CertificateFiles, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    (problem,) = problems_with(tls(files, key_file=encrypted))
    assert problem.startswith(f"VIEWBAIT_TLS__KEY_FILE: the key in {encrypted} is encrypted")


def test_files_that_are_not_pem_are_refused(files: CertificateFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    problems = problems_with(
        tls(files, mutual=True, cert_file=garbage, key_file=garbage, client_ca_file=garbage)
    )
    assert problems == [
        f"VIEWBAIT_TLS__CERT_FILE: {garbage} holds no PEM certificate "
        "(-----BEGIN CERTIFICATE-----)",
        f"VIEWBAIT_TLS__KEY_FILE: {garbage} holds no PEM private key this gateway can use",
        f"VIEWBAIT_TLS__CLIENT_CA_FILE: {garbage} holds no PEM certificate "
        "(-----BEGIN CERTIFICATE-----)",
    ]


def test_a_chain_is_served_leaf_first(files: CertificateFiles, tmp_path: Path) -> None:
    chain = tmp_path / "chain.pem"
    chain.write_bytes(files.server_cert.read_bytes() + files.ca.read_bytes())
    assert load_material(tls(files, cert_file=chain)).serial == files.server_serial
    backwards = tmp_path / "backwards.pem"
    backwards.write_bytes(files.ca.read_bytes() + files.server_cert.read_bytes())
    (problem,) = problems_with(tls(files, cert_file=backwards))
    assert "the leaf first in the chain" in problem


def test_bad_files_are_a_deployment_problem_only_with_a_listener(
    files: CertificateFiles, tmp_path: Path
) -> None:
    settings = Settings(
        server=ServerSettings(host="127.0.0.1"),
        tls=tls(files, key_file=tmp_path / "missing.key"),
    )
    (problem,) = deployment_problems(settings)
    assert problem.startswith("VIEWBAIT_TLS__KEY_FILE: cannot read")
    # A worker has no listener: nothing reads the files.
    assert deployment_problems(settings, listen=False) == []


async def test_start_refuses_bad_files_before_anything_starts(
    files: CertificateFiles, tmp_path: Path
) -> None:
    other_key = Authority().issue_server().write(tmp_path / "o.pem", tmp_path / "o.key")[1]
    local = ServerSettings(host="127.0.0.1", port=0)
    server = GatewayServer(Settings(server=local, tls=tls(files, key_file=other_key)))
    with pytest.raises(ConfigError) as caught:
        await server.start()
    (problem,) = caught.value.problems
    assert problem.startswith("VIEWBAIT_TLS__KEY_FILE: the key in")
    assert server.port == 0 and server.store is None


# --- reloading ----------------------------------------------------------------------------


def replace(files: CertificateFiles, authority: Authority) -> int:
    """Writes a new server certificate and key over the old files; returns its serial."""
    issued = authority.issue_server()
    issued.write(files.server_cert, files.server_key)
    return issued.serial


def test_unchanged_files_keep_the_certificate(files: CertificateFiles) -> None:
    watcher = CertificateWatcher(tls(files))
    assert watcher.fetch() is None
    assert watcher.fetch() is None
    assert watcher.reloads == 0 and watcher.material.serial == files.server_serial


def test_new_files_are_taken_up(files: CertificateFiles) -> None:
    watcher = CertificateWatcher(tls(files))
    serial = replace(files, Authority("next CA"))

    assert watcher.fetch() is not None
    assert watcher.reloads == 1 and watcher.material.serial == serial
    assert watcher.fetch() is None


def test_a_bad_change_keeps_the_last_good_certificate_and_is_logged_once(
    files: CertificateFiles, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = CertificateWatcher(tls(files))
    # Half-way through a rotation: the new certificate, the old key.
    new = Authority("next CA").issue_server()
    files.server_cert.write_bytes(new.cert_pem)

    with caplog.at_level(logging.ERROR, logger="gateway.tls"):
        assert watcher.fetch() is None
        assert watcher.fetch() is None
    (record,) = caplog.records
    assert "previous certificate" in record.getMessage()
    assert "does not belong to the first certificate" in record.getMessage()
    assert watcher.material.serial == files.server_serial and watcher.reloads == 0

    # The rotation completes: the new pair is served.
    files.server_key.write_bytes(new.key_pem)
    assert watcher.fetch() is not None
    assert watcher.material.serial == new.serial and watcher.reloads == 1


def test_a_vanished_file_keeps_the_certificate(
    files: CertificateFiles, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = CertificateWatcher(tls(files))
    files.server_key.unlink()
    with caplog.at_level(logging.ERROR, logger="gateway.tls"):
        assert watcher.fetch() is None
    assert "VIEWBAIT_TLS__KEY_FILE: cannot read" in caplog.text
    assert watcher.material.serial == files.server_serial


def test_a_rewrite_with_the_same_content_is_no_reload(files: CertificateFiles) -> None:
    watcher = CertificateWatcher(tls(files))
    files.server_cert.write_bytes(files.server_cert.read_bytes())
    assert watcher.fetch() is None and watcher.reloads == 0


def test_a_new_client_ca_is_taken_up(files: CertificateFiles, tmp_path: Path) -> None:
    watcher = CertificateWatcher(tls(files, mutual=True))
    other = Authority("other clients")
    files.ca.write_bytes(other.cert_pem)
    assert watcher.fetch() is not None
    assert watcher.material.client_ca == other.cert_pem


def test_an_ec_key_in_traditional_form_loads(files: CertificateFiles, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(files.server_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    traditional = tmp_path / "traditional.key"
    traditional.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    assert load_material(tls(files, key_file=traditional)).serial == files.server_serial


@pytest.mark.parametrize(
    ("valid_from", "said"),
    [
        (-datetime.timedelta(days=3), "expired at"),
        (datetime.timedelta(days=2), "is not valid before"),
    ],
    ids=["expired", "not yet valid"],
)
def test_a_certificate_out_of_its_validity_is_served_with_a_warning(
    files: CertificateFiles,
    caplog: pytest.LogCaptureFixture,
    valid_from: datetime.timedelta,
    said: str,
) -> None:
    watcher = CertificateWatcher(tls(files))
    assert not caplog.records
    issued = files.authority.issue_server(valid_from=valid_from)
    issued.write(files.server_cert, files.server_key)

    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        assert watcher.fetch() is not None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    subject = f"(CN=127.0.0.1, serial {issued.serial:x})"
    assert f"the certificate of VIEWBAIT_TLS__CERT_FILE {subject} {said}" in warning
    assert watcher.material.serial == issued.serial

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        CertificateWatcher(tls(files))
    assert said in caplog.text
