"""The hash-chained audit log.

Each record's hash covers its own fields and its predecessor's hash, so editing or deleting any row
breaks verification from that row on. Appending takes the write lock first and reads the single
`audit_head` row under it (SELECT ... FOR UPDATE: a row lock on MariaDB; on SQLite the transaction
moves to BEGIN IMMEDIATE, the database's one write lock, before the read), so concurrent writers from
several gunicorn workers queue on that row instead of forking the chain, and the head is never read
from a request's older read snapshot. Records are appended at the end of the request's transaction,
just before COMMIT, which keeps the lock short and makes "the action committed" and "its audit record
exists" the same fact.

Deleting the newest rows *and* rewinding `audit_head` would not break the chain: the syslog copy
(seq and hash of every record, shipped off the host) is the anchor; `verify --expect-head SEQ:HASH`
checks the database against the last head seen remotely.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from webapp.clock import audit_timestamp
from webapp.db.engine import write_phase
from webapp.db.tables import audit_head, audit_log
from webapp.events import Event
from webapp.redact import mask_pans

GENESIS = "0" * 64
SUCCESS = "success"
FAILURE = "failure"
_LIMITS = {"actor": 64, "ip": 45, "cert_serial": 64, "resource": 200, "detail": 200}


@dataclass(frozen=True)
class AuditEntry:
    """One record. `detail` is a short reason code, never a submitted value."""

    event: Event
    outcome: str
    actor: str = "-"
    ip: str = "-"
    cert_serial: str = "-"
    resource: str = "-"
    detail: str = "-"

    def __post_init__(self) -> None:
        if self.outcome not in (SUCCESS, FAILURE):
            raise ValueError("outcome must be success or failure")
        for name, limit in _LIMITS.items():
            # A card number typed into a URL, a form or a login name never reaches the chain, whichever
            # code built the record (masked before clipping, so a clipped number is still masked).
            value = mask_pans(getattr(self, name) or "-")
            # Oversized text is clipped, not refused: refusing would lose the record of the refusal.
            object.__setattr__(self, name, value[:limit])


@dataclass(frozen=True)
class Appended:
    seq: int
    hash: str
    at: str
    entry: AuditEntry


_HASHED = ("actor", "event", "outcome", "ip", "cert_serial", "resource", "detail")
# Built once: every request appends, and building a statement costs more CPU than running it.
_HEAD_FOR_UPDATE = (
    sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
)
_INSERT = sa.insert(audit_log)
_MOVE_HEAD = (
    sa.update(audit_head)
    .where(audit_head.c.id == 1)
    .values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))
)


def record_hash(prev_hash: str, seq: int, at: str, fields: dict[str, str]) -> str:
    """SHA-256 over a canonical JSON array of the record, its position and its predecessor's hash."""
    payload = [seq, at, *(fields[name] for name in _HASHED), prev_hash]
    canonical = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(canonical).hexdigest()


def _fields(entry: AuditEntry) -> dict[str, str]:
    """The record as stored and hashed. Every field goes through the card-number detector here, at
    the writer, whatever built the entry (AuditEntry masks too; masking is idempotent): the trail is
    insert-only and hash-chained, so a card number that reached it could never be removed. Masking
    before hashing keeps verification working: the hash covers what is stored."""
    return {name: mask_pans(str(getattr(entry, name))) for name in _HASHED}


def append(conn: sa.Connection, entries: Sequence[AuditEntry], *, now: datetime) -> list[Appended]:
    """Append in the caller's transaction. Any failure raises, and the caller's action rolls back."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")  # a naive time would be read as the host's local time
    if not entries:
        return []
    write_phase(conn)  # the head below is read under the write lock, never from a read snapshot
    head = conn.execute(_HEAD_FOR_UPDATE).one()
    seq, prev = int(head.seq), str(head.hash)
    at = audit_timestamp(now)
    rows, done = [], []
    for entry in entries:
        seq += 1
        fields = _fields(entry)
        digest = record_hash(prev, seq, at, fields)
        rows.append({"seq": seq, "at": at, **fields, "prev_hash": prev, "hash": digest})
        done.append(Appended(seq, digest, at, entry))
        prev = digest
    conn.execute(_INSERT, rows)
    updated = conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev}).rowcount
    if updated != 1:
        raise RuntimeError("audit chain head is missing")
    return done


def to_syslog(logger: logging.Logger, appended: Iterable[Appended]) -> None:
    """Called after COMMIT only: the remote copy never holds a record the database rolled back."""
    for a in appended:
        e = a.entry
        logger.info(
            "audit seq=%d hash=%s at=%s event=%s outcome=%s actor=%s ip=%s serial=%s resource=%s detail=%s",
            a.seq,
            a.hash,
            a.at,
            e.event,
            e.outcome,
            e.actor,
            e.ip,
            e.cert_serial,
            e.resource,
            e.detail,
        )


@dataclass
class Verification:
    checked: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    conn: sa.Connection, *, expect_head: tuple[int, str] | None = None, batch: int = 5000
) -> Verification:
    """Walk the chain up to the head as it was when verification started.

    The app keeps appending meanwhile (on MariaDB this runs under READ COMMITTED, in batches): reading
    the head first and stopping there keeps a concurrent append from looking like tampering. Rows
    beyond the head are checked afterwards: only a forger writes past the head, since the head moves
    in the same transaction as the rows it covers.
    """
    result = Verification()
    head = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1)).one()
    result.head_seq, result.head_hash = int(head.seq), str(head.hash)
    expected_seq, prev = 1, GENESIS
    last_seq = 0
    while True:
        chunk = conn.execute(
            sa.select(audit_log)
            .where(audit_log.c.seq > last_seq, audit_log.c.seq <= result.head_seq)
            .order_by(audit_log.c.seq)
            .limit(batch)
        ).all()
        if not chunk:
            break
        for row in chunk:
            if row.seq != expected_seq:
                result.problems.append(f"records {expected_seq}..{row.seq - 1} are missing (deleted)")
            if row.prev_hash != prev:
                result.problems.append(f"record {row.seq}: link to its predecessor is broken")
            recomputed = record_hash(row.prev_hash, row.seq, row.at, {n: getattr(row, n) for n in _HASHED})
            if recomputed != row.hash:
                result.problems.append(f"record {row.seq}: contents do not match its hash (edited)")
            prev, expected_seq, last_seq = row.hash, row.seq + 1, row.seq
            result.checked += 1
    if (result.head_seq, result.head_hash) != (last_seq, prev):
        result.problems.append(
            f"chain head says record {result.head_seq} but the log ends at {last_seq} (newest rows deleted?)"
        )
    # One statement, so one snapshot even under READ COMMITTED: a concurrent append moves the head
    # and its rows together.
    current_head = sa.select(audit_head.c.seq).where(audit_head.c.id == 1).scalar_subquery()
    beyond = conn.execute(
        sa.select(sa.func.count()).select_from(audit_log).where(audit_log.c.seq > current_head)
    ).scalar_one()
    if beyond:
        result.problems.append(f"{beyond} record(s) lie beyond the chain head (inserted outside the app?)")
    if expect_head is not None:
        seq, digest = expect_head
        anchored = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == seq)).scalar()
        if anchored != digest:
            result.problems.append(f"record {seq} does not match the externally anchored hash")
    return result


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    event: str | None = None
    outcome: str | None = None
    since: str | None = None  # audit timestamps compare as fixed-format text (clock.audit_timestamp)
    until: str | None = None  # not included

    def summary(self) -> str:
        """The filter for an audit record's detail: names and values the form already validated."""
        parts = [f"{name}={value}" for name, value in vars(self).items() if value]
        return " ".join(parts) or "none"


def _where(q: sa.Select[Any], flt: AuditFilter) -> sa.Select[Any]:
    if flt.actor:
        q = q.where(audit_log.c.actor == flt.actor)
    if flt.event:
        q = q.where(audit_log.c.event == flt.event)
    if flt.outcome:
        q = q.where(audit_log.c.outcome == flt.outcome)
    if flt.since:
        q = q.where(audit_log.c.at >= flt.since)
    if flt.until:
        q = q.where(audit_log.c.at < flt.until)
    return q


@dataclass(frozen=True)
class Page:
    """One page of the log, newest first, and whether newer and older matching records exist."""

    rows: list[sa.Row[Any]]
    newer: bool
    older: bool

    @property
    def first(self) -> int | None:
        return int(self.rows[0].seq) if self.rows else None

    @property
    def last(self) -> int | None:
        return int(self.rows[-1].seq) if self.rows else None


def _exists(conn: sa.Connection, flt: AuditFilter, condition: sa.ColumnElement[bool]) -> bool:
    probe = _where(sa.select(audit_log.c.seq), flt).where(condition).limit(1)
    return conn.execute(probe).first() is not None


def page(
    conn: sa.Connection, flt: AuditFilter, *, size: int, before: int | None = None, after: int | None = None
) -> Page:
    """Keyset paging on the sequence number: `before` gives the `size` matching records older than
    that record, `after` the ones newer, neither the newest. No COUNT (the log grows without bound,
    and a count over a filter reads every matching row): one row more than the page tells whether
    there is more in that direction, one LIMIT 1 probe whether there is any in the other. A page
    stays put while records are appended (each page viewed appends one): offsets would shift."""
    seq = audit_log.c.seq
    q = _where(sa.select(audit_log), flt)
    if after is not None:
        found = list(conn.execute(q.where(seq > after).order_by(seq.asc()).limit(size + 1)).all())
        rows = list(reversed(found[:size]))
        newer = len(found) > size
        older = _exists(conn, flt, seq < (rows[-1].seq if rows else after + 1))
    else:
        if before is not None:
            q = q.where(seq < before)
        found = list(conn.execute(q.order_by(seq.desc()).limit(size + 1)).all())
        rows = found[:size]
        older = len(found) > size
        newer = before is not None and _exists(conn, flt, seq > (rows[0].seq if rows else before - 1))
    return Page(rows, newer=newer, older=older)


def latest(conn: sa.Connection, flt: AuditFilter, *, limit: int) -> list[sa.Row[Any]]:
    """The newest `limit` matching records, newest first."""
    return list(conn.execute(_where(sa.select(audit_log), flt).order_by(audit_log.c.seq.desc()).limit(limit)))


def bounded(conn: sa.Connection, flt: AuditFilter, *, most: int) -> list[sa.Row[Any]] | None:
    """Every matching record, oldest first, or None when more than `most` match (one statement: it
    reads at most `most` + 1 rows, whatever the log holds)."""
    q = _where(sa.select(audit_log), flt).order_by(audit_log.c.seq.asc()).limit(most + 1)
    rows = list(conn.execute(q).all())
    return None if len(rows) > most else rows


def counts_by_event(conn: sa.Connection, flt: AuditFilter) -> list[tuple[str, int, int]]:
    """(event, successes, failures) of the matching records, the most frequent first."""
    outcome = audit_log.c.outcome
    q = _where(
        sa.select(
            audit_log.c.event,
            sa.func.sum(sa.case((outcome == SUCCESS, 1), else_=0)),
            sa.func.sum(sa.case((outcome == FAILURE, 1), else_=0)),
        ),
        flt,
    ).group_by(audit_log.c.event)
    found = [(str(e), int(ok or 0), int(bad or 0)) for e, ok, bad in conn.execute(q)]
    return sorted(found, key=lambda c: (-(c[1] + c[2]), c[0]))
