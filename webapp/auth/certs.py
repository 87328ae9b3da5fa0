"""Client certificates: where they come from, and how they are parsed.

Two sources, never both:
- TLS mode (gunicorn terminating TLS itself): the DER straight from the TLS socket.
- Proxy mode (Apache in front, docs/apache.md): a PEM in a request header that Apache sets. mod_headers
  folds its newlines into spaces; the PEM is rebuilt strictly. The header is trusted only when the
  app is configured to run behind the proxy AND the request arrived on a Unix socket (the app's
  private socket, reachable only by Apache); anywhere else the header is ignored and an event raised.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
PEM_END = "-----END CERTIFICATE-----"
MAX_PEM_HEADER = 16 * 1024
_B64_CHUNK = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")

# What tells a machine client's certificate from a person's: the CA's service profile (ca/pki.py,
# `python -m ca service NAME`) puts both OU=Services and this certificate policy in it. Copied, not
# imported (the web app imports no operator tool); tests/webapp/api checks the two stay equal.
SERVICE_OU = "Services"
POLICY_SERVICE = "2.25.49452677250441379777008201441656671832"
PERSON, SERVICE, AMBIGUOUS = "person", "service", "ambiguous"


class BadCertificate(Exception):
    """The presented certificate cannot be parsed. One type: callers only ever refuse."""


@dataclass(frozen=True)
class CertInfo:
    der: bytes
    fingerprint: str  # SHA-256 of the DER, lowercase hex
    serial: str  # hex
    subject: str
    not_after: datetime
    # PERSON (an employee's, or any certificate without the service markers), SERVICE (OU=Services
    # and the service policy, both), AMBIGUOUS (one marker without the other: no door accepts it).
    kind: str = PERSON

    @property
    def is_service(self) -> bool:
        return self.kind == SERVICE

    @classmethod
    def from_der(cls, der: bytes) -> CertInfo:
        try:
            cert = x509.load_der_x509_certificate(der)
            subject = cert.subject.rfc4514_string()
            kind = _kind(cert)
        except ValueError as exc:
            raise BadCertificate("not a DER X.509 certificate") from exc
        return cls(
            der=der,
            fingerprint=hashlib.sha256(der).hexdigest(),
            serial=format(cert.serial_number, "x"),
            subject=subject[:512],
            not_after=cert.not_valid_after_utc.astimezone(UTC),
            kind=kind,
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> CertInfo:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise BadCertificate("not a PEM X.509 certificate") from exc
        return cls.from_der(cert.public_bytes(Encoding.DER))


def _kind(cert: x509.Certificate) -> str:
    """PERSON, SERVICE or AMBIGUOUS, from the OU and the certificate policies the CA wrote."""
    ous = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.CERTIFICATE_POLICIES)
        policies = {p.policy_identifier.dotted_string for p in ext.value}  # type: ignore[attr-defined]
    except x509.ExtensionNotFound:
        policies = set()
    by_ou, by_policy = SERVICE_OU in ous, POLICY_SERVICE in policies
    if by_ou and by_policy:
        return SERVICE
    return AMBIGUOUS if by_ou or by_policy else PERSON


def der_from_folded_pem(value: str) -> bytes:
    """Rebuild a PEM whose newlines a proxy folded into spaces; refuse anything else."""
    if len(value) > MAX_PEM_HEADER:
        raise BadCertificate("certificate header too long")
    text = value.strip()
    if not (text.startswith(PEM_BEGIN) and text.endswith(PEM_END)):
        raise BadCertificate("certificate header is not one PEM certificate")
    body = text[len(PEM_BEGIN) : -len(PEM_END)]
    chunks = body.split()
    if not chunks or any(not _B64_CHUNK.match(c) for c in chunks):
        raise BadCertificate("certificate header has a malformed body")
    try:
        der = base64.b64decode("".join(chunks), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadCertificate("certificate header is not valid base64") from exc
    return CertInfo.from_der(der).der


@functools.lru_cache(maxsize=256)
def from_folded_pem(value: str) -> CertInfo:
    """The certificate of a proxy's header, parsed once per worker for each exact header value.

    A worker sees the same few hundred employees' certificates all day: rebuilding and parsing the
    same PEM on every request is work for nothing. Only what the bytes themselves say is kept (the
    parse is a pure function of them); whether the certificate is still bound and unrevoked is asked
    of the database on every request (auth/service.py: active_binding), so a revocation takes effect
    at the next request. A header that does not parse raises, and is not kept."""
    return CertInfo.from_der(der_from_folded_pem(value))


def der_from_tls(environ: dict[str, Any]) -> bytes | None:
    sock = environ.get("gunicorn.socket")
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    der = getpeercert(binary_form=True)
    return der if isinstance(der, bytes) and der else None


def came_over_unix_socket(environ: dict[str, Any]) -> bool:
    sock = environ.get("gunicorn.socket")
    return getattr(sock, "family", None) == socket.AF_UNIX
