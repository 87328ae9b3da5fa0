"""The CA's index: every certificate the issuing CA ever signed, and the CRL number.

It is the source of truth for the CRL, so it is parsed strictly: one unexpected field, a duplicate
serial or a malformed date and the whole file is refused with a clear message (and nothing is
changed). A CRL built from a half-understood index could silently un-revoke someone.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ca.errors import CorruptIndex

INDEX_VERSION = 1


class Profile(StrEnum):
    EMPLOYEE = "employee"
    SERVICE = "service"
    SERVER = "server"


class Reason(StrEnum):
    """RFC 5280 reason codes an admin may give (the ones that make sense for a leaf certificate)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "keyCompromise"
    AFFILIATION_CHANGED = "affiliationChanged"  # the employee left or changed role
    SUPERSEDED = "superseded"  # replaced by a new certificate
    CESSATION_OF_OPERATION = "cessationOfOperation"
    CA_COMPROMISE = "cACompromise"  # the issuing CA's key leaked: everything it signed is revoked
    # No certificateHold: this CA never un-revokes, so a "hold" would be a lie.


LEAF_REASONS = [r for r in Reason if r is not Reason.CA_COMPROMISE]


@dataclass(frozen=True)
class RetiredCA:
    """A replaced issuing CA: listed in the root's CRL for good."""

    serial: str
    revoked_at: datetime
    reason: Reason

    @property
    def serial_int(self) -> int:
        return int(self.serial, 16)


_SERIAL = re.compile(r"^[0-9a-f]{1,40}$")
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Entry:
    serial: str  # lowercase hex, no leading zeros
    profile: Profile
    name: str
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the DER, lowercase hex: what the web app binds
    bound: bool  # the web app holds an active binding for it (employee certificates)
    revoked_at: datetime | None = None
    reason: Reason | None = None

    @property
    def serial_int(self) -> int:
        return int(self.serial, 16)

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if now >= self.not_after:
            return "expired"
        return "valid"

    def revoke(self, at: datetime, reason: Reason) -> Entry:
        return replace(self, revoked_at=at, reason=reason)


@dataclass(frozen=True)
class Index:
    entries: tuple[Entry, ...] = ()
    crl_number: int = 0  # of the last issuing-CA CRL published; strictly increasing
    root_crl_number: int = 0
    retired_issuing: tuple[RetiredCA, ...] = ()

    def by_serial(self, serial: int) -> Entry | None:
        return next((e for e in self.entries if e.serial_int == serial), None)

    def valid_for(self, name: str, now: datetime) -> Entry | None:
        return next((e for e in self.entries if e.name == name and e.state(now) == "valid"), None)

    def with_entry(self, entry: Entry) -> Index:
        others = tuple(e for e in self.entries if e.serial != entry.serial)
        return replace(self, entries=(*others, entry))


def _dt(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise CorruptIndex(f"{where}: expected a timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CorruptIndex(f"{where}: {value!r} is not a timestamp") from None
    if parsed.tzinfo is None or parsed.utcoffset() != UTC.utcoffset(None):
        raise CorruptIndex(f"{where}: timestamps must be in UTC")
    return parsed


def _expect_keys(obj: object, required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise CorruptIndex(f"{where}: expected an object")
    keys = set(obj)
    if keys != required:
        missing, extra = sorted(required - keys), sorted(keys - required)
        raise CorruptIndex(f"{where}: missing fields {missing}, unexpected fields {extra}")
    return obj


_ENTRY_KEYS = {
    "serial", "profile", "name", "not_before", "not_after", "fingerprint", "bound", "revoked_at", "reason"
}  # fmt: skip


def _entry(obj: object, i: int) -> Entry:
    where = f"certificate #{i}"
    d = _expect_keys(obj, _ENTRY_KEYS, where)
    serial, name, fp = d["serial"], d["name"], d["fingerprint"]
    if not isinstance(serial, str) or not _SERIAL.match(serial) or serial.startswith("0"):
        raise CorruptIndex(f"{where}: bad serial")
    if not isinstance(name, str) or not name:
        raise CorruptIndex(f"{where}: bad name")
    if not isinstance(fp, str) or not _FINGERPRINT.match(fp):
        raise CorruptIndex(f"{where}: bad fingerprint")
    if not isinstance(d["bound"], bool):
        raise CorruptIndex(f"{where}: bad 'bound' flag")
    try:
        profile = Profile(d["profile"])
        reason = None if d["reason"] is None else Reason(d["reason"])
    except ValueError:
        raise CorruptIndex(f"{where}: bad profile or revocation reason") from None
    revoked_at = None if d["revoked_at"] is None else _dt(d["revoked_at"], where)
    if (revoked_at is None) != (reason is None):
        raise CorruptIndex(f"{where}: revocation time and reason must come together")
    entry = Entry(
        serial=serial,
        profile=profile,
        name=name,
        not_before=_dt(d["not_before"], where),
        not_after=_dt(d["not_after"], where),
        fingerprint=fp,
        bound=d["bound"],
        revoked_at=revoked_at,
        reason=reason,
    )
    if entry.not_after <= entry.not_before:
        raise CorruptIndex(f"{where}: expires before it starts")
    return entry


def parse_index(data: bytes) -> Index:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptIndex(f"the index is not valid JSON ({type(e).__name__}); restore a backup") from None
    d = _expect_keys(
        doc, {"version", "crl_number", "root_crl_number", "certificates", "retired_issuing"}, "index"
    )
    if d["version"] != INDEX_VERSION:
        raise CorruptIndex(f"index: unsupported version {d['version']!r}")
    for key in ("crl_number", "root_crl_number"):
        if not isinstance(d[key], int) or isinstance(d[key], bool) or d[key] < 0:
            raise CorruptIndex(f"index: bad {key}")
    if not isinstance(d["certificates"], list):
        raise CorruptIndex("index: 'certificates' must be a list")
    entries = tuple(_entry(obj, i) for i, obj in enumerate(d["certificates"]))
    serials = [e.serial for e in entries]
    if len(set(serials)) != len(serials):
        raise CorruptIndex("index: a serial number appears twice")
    fps = [e.fingerprint for e in entries]
    if len(set(fps)) != len(fps):
        raise CorruptIndex("index: a fingerprint appears twice")
    if not isinstance(d["retired_issuing"], list):
        raise CorruptIndex("index: 'retired_issuing' must be a list")
    retired = tuple(_retired(obj, i) for i, obj in enumerate(d["retired_issuing"]))
    return Index(
        entries=entries,
        crl_number=d["crl_number"],
        root_crl_number=d["root_crl_number"],
        retired_issuing=retired,
    )


def _retired(obj: object, i: int) -> RetiredCA:
    where = f"retired issuing CA #{i}"
    d = _expect_keys(obj, {"serial", "revoked_at", "reason"}, where)
    if not isinstance(d["serial"], str) or not _SERIAL.match(d["serial"]) or d["serial"].startswith("0"):
        raise CorruptIndex(f"{where}: bad serial")
    try:
        reason = Reason(d["reason"])
    except ValueError:
        raise CorruptIndex(f"{where}: bad reason") from None
    return RetiredCA(serial=d["serial"], revoked_at=_dt(d["revoked_at"], where), reason=reason)


def dump_index(index: Index) -> bytes:
    def entry(e: Entry) -> dict[str, Any]:
        d = asdict(e)
        for key in ("not_before", "not_after", "revoked_at"):
            d[key] = None if d[key] is None else d[key].isoformat()
        return d

    doc = {
        "version": INDEX_VERSION,
        "crl_number": index.crl_number,
        "root_crl_number": index.root_crl_number,
        "certificates": [entry(e) for e in index.entries],
        "retired_issuing": [
            {"serial": r.serial, "revoked_at": r.revoked_at.isoformat(), "reason": str(r.reason)}
            for r in index.retired_issuing
        ],
    }
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode("utf-8")
