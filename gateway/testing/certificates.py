"""Certificates for tests of TLS: a throwaway CA, and server and client certificates it signs.

Keys are ECDSA P-256 (quick to make); certificates are valid from an hour ago for a day, so
clock skew between the machine's processes does not matter (a server certificate's start can be
moved, to make one expired or not yet valid). `python -m
gateway.testing.certificates DIR` writes a CA, a server certificate for 127.0.0.1 and localhost
and a client certificate into DIR (`ca.pem`, `server.pem`, `server.key`, `client.pem`,
`client.key`), for tests outside Python (the TypeScript client's).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The names a test server's certificate covers.
LOOPBACK_NAMES = ("127.0.0.1", "localhost")


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    valid_from: datetime.timedelta = -datetime.timedelta(hours=1),
    valid_for: datetime.timedelta = datetime.timedelta(days=1, hours=1),
) -> x509.CertificateBuilder:
    start = datetime.datetime.now(datetime.UTC) + valid_from
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + valid_for)
    )


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


@dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    certificate: x509.Certificate
    key_pem: bytes

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def serial(self) -> int:
        return self.certificate.serial_number

    def write(self, cert_path: Path, key_path: Path) -> tuple[Path, Path]:
        """Writes the certificate and the key; returns their paths."""
        cert_path.write_bytes(self.cert_pem)
        key_path.write_bytes(self.key_pem)
        return cert_path, key_path


class Authority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str = "ViewBait test CA") -> None:
        self._key = _key()
        self._name = _name(common_name)
        self.certificate = (
            _builder(self._name, self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM-encoded (what clients trust)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def write(self, path: Path) -> Path:
        """Writes the CA certificate; returns its path."""
        path.write_bytes(self.cert_pem)
        return path

    def _issue(
        self,
        common_name: str,
        names: Sequence[str],
        usage: x509.ObjectIdentifier,
        valid_from: datetime.timedelta,
    ) -> Issued:
        key = _key()
        builder = _builder(_name(common_name), self._name, key.public_key(), valid_from)
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(name) for name in names]), critical=False
            )
        certificate = (
            builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(certificate, _key_pem(key))

    def issue_server(
        self,
        names: Sequence[str] = LOOPBACK_NAMES,
        *,
        valid_from: datetime.timedelta = -datetime.timedelta(hours=1),
    ) -> Issued:
        """A server certificate for `names` (IP addresses and DNS names), valid for a day from
        `valid_from` after now (a test of an expired one passes minus two days)."""
        return self._issue(names[0], names, ExtendedKeyUsageOID.SERVER_AUTH, valid_from)

    def issue_client(self, common_name: str = "viewbait-backend") -> Issued:
        """A client certificate (for mutual TLS)."""
        return self._issue(
            common_name, (), ExtendedKeyUsageOID.CLIENT_AUTH, -datetime.timedelta(hours=1)
        )


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """A CA, a loopback server certificate and a client certificate it signed, as files."""

    authority: Authority
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    #: The server certificate's serial number.
    server_serial: int


def write_certificates(directory: Path, common_name: str = "ViewBait test CA") -> CertificateFiles:
    """Makes a CA and the certificates it signs and writes them into `directory` (created):
    `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = Authority(common_name)
    server = authority.issue_server()
    server_cert, server_key = server.write(directory / "server.pem", directory / "server.key")
    client_cert, client_key = authority.issue_client().write(
        directory / "client.pem", directory / "client.key"
    )
    return CertificateFiles(
        authority=authority,
        ca=authority.write(directory / "ca.pem"),
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        server_serial=server.serial,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Writes a CA, a loopback server certificate and a client certificate into a directory."""
    parser = argparse.ArgumentParser(prog="python -m gateway.testing.certificates")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    write_certificates(args.directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
