"""keyd's security events: its JSON-lines spool (keyd/events.py, `SpoolSink`) read incrementally.

keyd writes every event (wrong key, refused peer, refused drop file, degraded hardening, ...) to
`events.jsonl` in its state dir. Each pass reads what was appended since the last one (ops/logtail.py:
device, inode, offset) and raises one alert per alarming kind with a count; routine kinds (started,
unsealed, rotated...) are counted in the state only. Only the count leaves in the mail: the events'
fields (actor, purpose, uid, reason) stay on the server.

The key-custody events (CUSTODY: who split the key into shares, acknowledged, delivered or combined
them, re-keyed, rotated or retired, and the refused, duplicate and timed-out shares) are also appended
to the web app's hash-chained audit log, one `keyd.custody` record per spool line, before the position
advances. Exactly once, also across a crash between that commit and the state save: a spool line is
named by where the read that found it started and its place in that read (a re-read after a crash
starts at the same saved position and finds the same lines in the same order), plus a hash of the
line; that name leads the record's detail, and names already in the chain are not appended again.
If the append fails, the check fails and keeps its position (the lines are read and appended again
next pass); the alarms in those lines are still queued, once.

The spool is read from its beginning the first time: a spool is a queue of events nobody has seen yet,
and a wrong key dropped before the watchdog's first pass must still ring.

Strict: a line that is too long, not JSON, not an event object or names an unknown kind is counted as
malformed and alerted (`ops.check_failed`, `malformed_lines=N`), never skipped in silence; a spool that
is a symlink, not a regular file, or not owned by keyd's user is not read at all (a failed check).
"""

from __future__ import annotations

import hashlib
import json
import pwd
import re
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from keyd.events import ALERTS, Event
from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result
from ops.logtail import Position, Read, read_new
from webapp.audit.service import FAILURE, SUCCESS, AuditEntry, append, to_syslog
from webapp.db.tables import audit_head, audit_log
from webapp.events import Event as AuditEvent
from webapp.syslog import audit_logger

NAME = "keyd_events"

# keyd caps every string field at 200 characters and an event has a handful of fields: a real line is
# well under 1 KiB. Anything longer was not written by keyd's SpoolSink.
MAX_LINE = 4096
MAX_FIELDS = 16
MAX_TS = 1e11  # seconds since 1970: the year 5138, far beyond any clock keyd reads
# keyd's own classification (keyd.events.ALERTS) decides what is an alarm; each gets its own name so
# the bare mail still says what happened.
ALARMS: dict[Event, Alert] = {
    Event.WRONG_KEY: Alert.KEYD_WRONG_KEY,
    Event.DROP_FILE_REFUSED: Alert.KEYD_DROP_FILE_REFUSED,
    Event.DROP_FILE_NOT_DELETED: Alert.KEYD_DROP_FILE_NOT_DELETED,
    Event.PEER_REFUSED: Alert.KEYD_PEER_REFUSED,
    Event.ADMIN_REFUSED: Alert.KEYD_ADMIN_REFUSED,
    Event.BUDGET_EXCEEDED: Alert.KEYD_BUDGET_EXCEEDED,
    Event.INTEGRITY_FAILURE: Alert.KEYD_INTEGRITY_FAILURE,
    Event.RETIRED_VERSION_USED: Alert.KEYD_RETIRED_VERSION_USED,
    Event.KEY_VERSION_EXHAUSTED: Alert.KEYD_KEY_VERSION_EXHAUSTED,
    Event.HARDENING_DEGRADED: Alert.KEYD_HARDENING_DEGRADED,
    Event.STATE_WRITE_FAILED: Alert.KEYD_STATE_WRITE_FAILED,
    Event.SHARE_REFUSED: Alert.KEYD_SHARE_REFUSED,
    Event.SHARE_DUPLICATE: Alert.KEYD_SHARE_DUPLICATE,
    Event.SHARE_TIMED_OUT: Alert.KEYD_SHARE_TIMED_OUT,
}
assert set(ALARMS) == ALERTS, "keyd.events.ALERTS and the watchdog's alarms must be the same set"  # noqa: S101
_KINDS = {e.value: e for e in Event}
# The key-custody record (PCI DSS 3.6.1.2 split knowledge, 3.7 key management): appended to the audit
# chain, each with its outcome. keyd puts identifiers only in these events (index, uid, login, counts,
# generation), never a share, key, PIN or passphrase.
CUSTODY: dict[Event, bool] = {
    Event.SHARES_SPLIT: True,
    Event.SHARE_ACKNOWLEDGED: True,
    Event.SHARE_DELIVERED: True,
    Event.SHARES_COMBINED: True,
    Event.SHARE_REFUSED: False,
    Event.SHARE_DUPLICATE: False,
    Event.SHARE_TIMED_OUT: False,
    Event.REKEYED: True,
    Event.REKEY_REFUSED: False,
    Event.SECRET_RETIRED: True,
    Event.ROTATED: True,
    Event.RETIRED: True,
}
AUDIT_RESOURCE = "keyd"
NAME_PARTS = 6  # "spool" and the five parts of a line's name (line_id) lead an audit record's detail
_PLAIN = re.compile(r"[A-Za-z0-9_.,:@+-]*")


def parse(line: bytes) -> Event | None:
    """The event kind of one spool line, or None when the line is not one keyd's SpoolSink writes."""
    record = read_record(line)
    return None if record is None else _KINDS.get(record["event"])


def read_record(line: bytes) -> dict[str, Any] | None:
    if len(line) > MAX_LINE:
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not 2 <= len(record) <= MAX_FIELDS:
        return None
    ts, kind = record.get("ts"), record.get("event")
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not isinstance(kind, str):
        return None
    if not 0 <= ts < MAX_TS:  # also NaN: the audit record states when keyd saw the event
        return None
    for key, value in record.items():
        if key == "ts":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
    return record if kind in _KINDS else None


def _owner(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise CheckFailed(f"keyd_user {name!r} does not exist") from None


def _start(got: Read, previous: Position | None) -> str:
    """Where this read started: the saved position, or the spool's beginning on the first read."""
    at = previous or Position(got.position.dev, got.position.inode, 0)
    return f"dev={at.dev} ino={at.inode} off={at.offset}"


def line_id(start: str, index: int, line: bytes) -> str:
    """A spool line's name: the same line found again by a re-read from the same position gets the
    same name; the hash keeps a reused inode and offset from naming a different line.

    Letters between the numbers: the audit writer masks anything that reads as a card number, and
    numbers joined by punctuation alone could (a masked name would no longer match itself)."""
    return f"{start} line={index} sha={hashlib.sha256(line).hexdigest()[:8]}"


def _value(value: str | int) -> str:
    text = str(value)
    return text if _PLAIN.fullmatch(text) else json.dumps(text)


def custody_entry(name: str, kind: Event, record: dict[str, Any]) -> AuditEntry:
    """The audit record of one custody event: who (keyd's login, actor or uid), what, when keyd saw it."""
    fields = {k: v for k, v in record.items() if k not in ("ts", "event")}
    actor = fields.get("login") or fields.get("actor")
    if not actor:
        actor = f"uid:{fields['uid']}" if "uid" in fields else AUDIT_RESOURCE
    at = datetime.fromtimestamp(record["ts"], UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    rest = " ".join(f"{k}={_value(v)}" for k, v in sorted(fields.items()))
    return AuditEntry(
        AuditEvent.KEYD_CUSTODY,
        SUCCESS if CUSTODY[kind] else FAILURE,
        actor=str(actor),
        resource=AUDIT_RESOURCE,
        # The name leads: a clipped detail still carries it, and the look-up below matches its prefix.
        detail=f"spool {name} {kind.value} keyd_at={at} {rest}".strip(),
    )


def _audit(engine: sa.Engine | None, start: str, entries: dict[str, AuditEntry], now: datetime) -> int:
    """Append the entries not yet in the chain; returns how many were appended."""
    if engine is None:
        raise CheckFailed("no database for the audit trail")
    with engine.begin() as conn:
        # The chain head's lock first (SQLite: the write lock): no other append runs between reading
        # which lines are already in the chain and appending the rest.
        conn.execute(sa.select(audit_head.c.seq).where(audit_head.c.id == 1).with_for_update()).one()
        prefix = f"spool {start} line="
        details = conn.execute(
            sa.select(audit_log.c.detail).where(
                audit_log.c.event == AuditEvent.KEYD_CUSTODY.value,
                audit_log.c.detail.startswith(prefix, autoescape=True),
            )
        ).scalars()
        done = {" ".join(d.split(" ")[1:NAME_PARTS]) for d in details}
        appended = append(conn, [e for n, e in entries.items() if n not in done], now=now)
    # After COMMIT only, as the web app does: the remote copy anchors the chain head.
    to_syslog(audit_logger(), appended)
    return len(appended)


def run(ctx: Context) -> Result:
    s = ctx.settings
    state: dict[str, Any] = ctx.state or {}
    previous = Position.from_json(state.get("position"))
    # OSError (missing spool, symlink, wrong owner: LogRefused) goes to the runner: a failed check,
    # and the previous position is kept so nothing is skipped once the spool is sound again.
    got = read_new(
        s.keyd_spool,
        previous,
        max_bytes=s.max_read_bytes,
        owner=_owner(s.keyd_user),
        from_start=True,
    )
    start = _start(got, previous)
    # What a pass whose audit append failed already queued (same start, same lines): not again.
    held = state.get("alerted") or {}
    already = set(held.get("lines") or []) if held.get("start") == start else set()
    seen: Counter[Event] = Counter()
    alarm_lines: list[str] = []
    custody: dict[str, AuditEntry] = {}
    malformed = 0
    for index, line in enumerate(got.lines):
        record = read_record(line)
        name = line_id(start, index, line)
        if record is None:
            alarm_lines.append(name)
            malformed += name not in already
            continue
        kind = _KINDS[record["event"]]
        if kind in ALARMS:
            alarm_lines.append(name)
        if name not in already:
            seen[kind] += 1
        if kind in CUSTODY:
            custody[name] = custody_entry(name, kind, record)
    findings = [
        Finding(alert, resource=str(s.keyd_spool), detail=f"events={seen[kind]}")
        for kind, alert in ALARMS.items()
        if seen[kind]
    ]
    if got.gap and not (held.get("start") == start and held.get("gap")):
        findings.append(Finding(Alert.LOG_GAP, resource=NAME, detail=got.gap))
    if malformed:
        findings.append(Finding(Alert.CHECK_FAILED, resource=NAME, detail=f"malformed_lines={malformed}"))
    try:
        if custody:
            _audit(ctx.engine, start, custody, ctx.now)
    except Exception as exc:  # noqa: BLE001 - not swallowed: a failed check, and the lines are read again
        reason = f"audit append failed: {exc if isinstance(exc, CheckFailed) else type(exc).__name__}"
        # The position stays, so every custody line is appended next pass; the alarms found now are
        # queued now (an alarm never waits for the audit database), and remembered so they ring once.
        findings.append(Finding(Alert.CHECK_FAILED, resource=NAME, detail=reason, key=f"failed|{reason}"))
        kept = {k: v for k, v in state.items() if k != "alerted"}
        return Result(
            findings, {**kept, "alerted": {"start": start, "lines": alarm_lines, "gap": bool(got.gap)}}
        )
    routine = Counter(state.get("routine") or {})
    routine.update(k.value for k in seen.elements() if k not in ALARMS)
    return Result(findings, {"position": got.position.to_json(), "routine": dict(routine)})
