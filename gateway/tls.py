"""TLS for the gRPC listener: the certificate files read and checked, and watched for changes.

`load_material` reads `tls.cert_file`, `tls.key_file` and `tls.client_ca_file` and checks that
they are what a handshake needs (PEM certificates, an unencrypted key that belongs to the leaf
certificate); every problem names the setting to fix. Start-up refuses on any of them
(`tls_problems`, part of `gateway.config.deployment_problems`).

`CertificateWatcher` turns the files into grpc's dynamic server credentials: gRPC calls its
`fetch` before every TLS handshake, on a core thread. It compares each file's stat (inode, size,
mtime, ctime) with what it last read, so an unchanged set costs three `stat` calls; changed files
are read and checked as at start. A good set replaces the certificate for the handshakes that
follow, while connections already open keep theirs. A bad set (a half-written file during a
rotation, a key that does not match yet) is logged at ERROR once per change and the last good
certificate stays in use, so a broken rotation never takes the listener down.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from gateway.config import ConfigError, TlsSettings
from gateway.settings_sources import env_name

log = logging.getLogger("gateway.tls")

#: What identifies one version of a file: (inode, size, mtime ns, ctime ns), or the error that
#: `stat` raised. An atomic rename or a Kubernetes secret's symlink swap changes the inode; an
#: in-place write changes the ctime, which no tool sets back.
_Stamp = tuple[int, int, int, int] | str


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """One checked set of PEM files, as the listener serves them."""

    #: The certificate chain as read (leaf first).
    chain: bytes
    private_key: bytes
    #: CA certificates of client certificates (None: clients present none).
    client_ca: bytes | None
    #: The leaf certificate's subject, serial number and validity (for the logs).
    subject: str
    serial: int
    not_before: datetime
    not_after: datetime

    def certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        """What grpc serves the handshakes with."""
        return grpc.ssl_server_certificate_configuration(
            [(self.private_key, self.chain)], root_certificates=self.client_ca
        )

    def validity_problem(self, now: datetime) -> str | None:
        """Why clients will refuse the certificate at `now` (expired or not yet valid), if so."""
        if now > self.not_after:
            when = f"expired at {self.not_after.isoformat()}"
        elif now < self.not_before:
            when = f"is not valid before {self.not_before.isoformat()}"
        else:
            return None
        return (
            f"the certificate of {env_name('tls.cert_file')} ({self.subject}, serial "
            f"{self.serial:x}) {when}: clients will refuse it; replace the files"
        )

    def describe(self) -> dict[str, object]:
        """Log fields naming the certificate."""
        return {
            "subject": self.subject,
            "serial": format(self.serial, "x"),
            "not_after": self.not_after.isoformat(),
            "mutual_tls": self.client_ca is not None,
        }


def _read(setting: str, path: str, problems: list[str]) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        problems.append(f"{env_name(setting)}: cannot read {path}: {exc.strerror or exc}")
        return None


def _certificates(
    setting: str, path: str, data: bytes, problems: list[str]
) -> list[x509.Certificate]:
    """The PEM certificates in `data` (none, with a problem, when there are none)."""
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        problems.append(
            f"{env_name(setting)}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
    return certificates


def _private_key(path: str, data: bytes, problems: list[str]) -> PrivateKeyTypes | None:
    setting = env_name("tls.key_file")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        problems.append(
            f"{setting}: the key in {path} is encrypted; give the listener an unencrypted key "
            "(e.g. `openssl pkey -in KEY -out KEY.plain`) and restrict who may read the file"
        )
    except (ValueError, UnsupportedAlgorithm):
        problems.append(f"{setting}: {path} holds no PEM private key this gateway can use")
    return None


def _public_der(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_material(tls: TlsSettings) -> TlsMaterial:
    """Reads and checks the files `tls` names; raises `ConfigError` with every problem, each
    naming the setting to fix. `tls` must be enabled."""
    assert tls.cert_file is not None and tls.key_file is not None
    problems: list[str] = []
    chain = _read("tls.cert_file", tls.cert_file, problems)
    certificates = (
        [] if chain is None else _certificates("tls.cert_file", tls.cert_file, chain, problems)
    )
    key_pem = _read("tls.key_file", tls.key_file, problems)
    key = None if key_pem is None else _private_key(tls.key_file, key_pem, problems)
    client_ca = None
    if tls.client_ca_file is not None:
        client_ca = _read("tls.client_ca_file", tls.client_ca_file, problems)
        if client_ca is not None:
            _certificates("tls.client_ca_file", tls.client_ca_file, client_ca, problems)
    if certificates and key is not None:
        leaf = certificates[0]
        if _public_der(leaf.public_key()) != _public_der(key.public_key()):
            problems.append(
                f"{env_name('tls.key_file')}: the key in {tls.key_file} does not belong to the "
                f"first certificate of {tls.cert_file} ({env_name('tls.cert_file')}, "
                f"{leaf.subject.rfc4514_string() or 'no subject'}): give the key and the "
                "certificate of one pair, the leaf first in the chain"
            )
    if problems:
        raise ConfigError(problems)
    assert chain is not None and key_pem is not None
    leaf = certificates[0]
    return TlsMaterial(
        chain=chain,
        private_key=key_pem,
        client_ca=client_ca,
        subject=leaf.subject.rfc4514_string(),
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
    )


def tls_problems(tls: TlsSettings) -> list[str]:
    """Why the listener cannot serve the TLS files `tls` names; empty when it can (or when TLS
    is off)."""
    if not tls.enabled:
        return []
    try:
        load_material(tls)
    except ConfigError as exc:
        return exc.problems
    return []


def _stamp(path: Path) -> _Stamp:
    try:
        info = path.stat()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc.strerror}"
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _warn_if_invalid(material: TlsMaterial) -> None:
    # Served all the same: refusing to serve would not help clients that refuse it anyway, and
    # a replica that keeps its listener picks up the replacement without a restart.
    problem = material.validity_problem(datetime.now(UTC))
    if problem is not None:
        log.warning("%s", problem)


class CertificateWatcher:
    """The listener's certificate, re-read when its files change (see the module docstring)."""

    def __init__(self, tls: TlsSettings) -> None:
        """Reads the files now; raises `ConfigError` when they cannot be served."""
        self._tls = tls
        self._paths = [
            Path(path)
            for path in (tls.cert_file, tls.key_file, tls.client_ca_file)
            if path is not None
        ]
        # Stamped before reading: a change while reading shows as a change on the next check.
        self._stamps = self._stamp_all()
        self._material = load_material(tls)
        _warn_if_invalid(self._material)
        self._lock = threading.Lock()
        #: How many times a changed set of files was taken into use.
        self.reloads = 0

    @property
    def material(self) -> TlsMaterial:
        """The certificate handshakes are served with now."""
        return self._material

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that serve the current certificate and ask `fetch` before each
        handshake; with a client CA, clients must present a certificate it signed."""
        return grpc.dynamic_ssl_server_credentials(
            self._material.certificate_configuration(),
            # grpc documents None as "no change"; its type stubs leave it out.
            self.fetch,  # type: ignore[arg-type]
            require_client_authentication=self._tls.mutual,
        )

    def _stamp_all(self) -> list[_Stamp]:
        return [_stamp(path) for path in self._paths]

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new certificate configuration when the files changed and are good, else None
        (the current one stays). Called by gRPC before every handshake; never raises."""
        try:
            with self._lock:
                return self._check()
        except Exception:
            # An exception would fail this handshake; the current certificate still serves.
            log.exception("checking the TLS certificate files failed")
            return None

    def _check(self) -> grpc.ServerCertificateConfiguration | None:
        stamps = self._stamp_all()
        if stamps == self._stamps:
            return None
        # Remembered whatever the outcome: a bad set is reported once, not on every handshake,
        # and read again as soon as any of its files changes.
        self._stamps = stamps
        try:
            material = load_material(self._tls)
        except ConfigError as exc:
            # The problems in the message itself: the text log format drops `extra` fields.
            log.error(
                "TLS certificate files changed but cannot be served, the previous certificate "
                "(serial %x) stays in use until they are fixed: %s",
                self._material.serial,
                "; ".join(exc.problems),
                extra={"problems": exc.problems},
            )
            return None
        if material == self._material:
            return None
        self._material = material
        self.reloads += 1
        log.info(
            "TLS certificate reloaded: %s, serial %x",
            material.subject,
            material.serial,
            extra=material.describe(),
        )
        _warn_if_invalid(material)
        return material.certificate_configuration()


__all__ = ["CertificateWatcher", "TlsMaterial", "load_material", "tls_problems"]
