"""What the CA's current CRL says, for the admin console (read-only; Apache is the one that enforces it).

The file is the one Apache checks client certificates against (setting CA_CRL_FILE; the installer's
/etc/apache2/strongroom/crl.pem): the issuing CA's CRL followed by the root's, in PEM. Nothing here
verifies signatures (the web app holds no CA certificate): the file is root's, installed with Apache's.

Fail closed: a certificate is "not revoked" only when every CRL in the file could be read and is
current (this update <= now < next update) and none lists its serial. A CRL that is unset, missing,
unreadable, not a CRL, expired or not yet valid makes every answer "unknown"; a serial the file lists
is "revoked" whatever the file's dates (a revocation is never undone).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509

MAX_BYTES = 16 * 1024 * 1024  # a CRL of a few hundred employees is a few KiB
_PEM = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.S)


class Revocation(StrEnum):
    REVOKED = "revoked"
    NOT_REVOKED = "not revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class OneCrl:
    issuer: str
    number: int | None
    this_update: datetime
    next_update: datetime | None
    serials: frozenset[str]  # lowercase hex without leading zeros, as cert_bindings.serial

    def problem(self, now: datetime) -> str | None:
        if self.this_update > now:
            return "not yet valid (its this-update is in the future: check the clocks)"
        if self.next_update is None:
            return "has no next update"
        if self.next_update <= now:
            return "expired: Apache refuses every certificate until a new one is published (python -m ca crl)"
        return None


@dataclass(frozen=True)
class CrlStatus:
    path: str | None
    crls: tuple[OneCrl, ...] = ()
    problem: str | None = None  # why the file cannot be relied on; None: every CRL in it is current
    revoked: frozenset[str] = field(default_factory=frozenset)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def revocation(self, serial: str) -> Revocation:
        key = _serial_key(serial)
        if key in self.revoked:
            return Revocation.REVOKED
        return Revocation.NOT_REVOKED if self.ok else Revocation.UNKNOWN

    def issuers(self) -> frozenset[str]:
        return frozenset(c.issuer for c in self.crls)


def _serial_key(serial: str) -> str:
    cleaned = serial.strip().lower().replace(":", "").lstrip("0")
    return cleaned or "0"


def _one(crl: x509.CertificateRevocationList) -> OneCrl:
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    next_update = crl.next_update_utc
    return OneCrl(
        issuer=crl.issuer.rfc4514_string(),
        number=number,
        this_update=crl.last_update_utc.astimezone(UTC),
        next_update=next_update.astimezone(UTC) if next_update else None,
        serials=frozenset(format(r.serial_number, "x") for r in crl),
    )


def parse(data: bytes) -> tuple[OneCrl, ...]:
    """Every CRL in a PEM file (or the one CRL of a DER file); ValueError if there is none."""
    blocks = _PEM.findall(data)
    if blocks:
        return tuple(_one(x509.load_pem_x509_crl(b)) for b in blocks)
    return (_one(x509.load_der_x509_crl(data)),)


def status(path: str | None, *, now: datetime) -> CrlStatus:
    """What the CRL file at `path` says now; never raises for a bad file (the problem says why)."""
    if not path:
        return CrlStatus(None, problem="not configured (set STRONGROOM_CA_CRL_FILE to the CRL Apache uses)")
    try:
        with Path(path).open("rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        return CrlStatus(path, problem=f"unreadable ({type(exc).__name__})")
    if len(data) > MAX_BYTES:
        return CrlStatus(path, problem="too large to be our CRL")
    try:
        crls = parse(data)
    except ValueError:
        return CrlStatus(path, problem="not a CRL (neither PEM nor DER)")
    revoked = frozenset().union(*(c.serials for c in crls))
    problems = [f"the CRL of {c.issuer} is {p}" for c in crls if (p := c.problem(now))]
    return CrlStatus(path, crls, "; ".join(problems) or None, revoked)
