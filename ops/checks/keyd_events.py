"""keyd's security events: its JSON-lines spool (keyd/events.py, `SpoolSink`) read incrementally.

keyd writes every event (wrong key, refused peer, refused drop file, degraded hardening, ...) to
`events.jsonl` in its state dir. Each pass reads what was appended since the last one (ops/logtail.py:
device, inode, offset) and raises one alert per alarming kind with a count; routine kinds (started,
unsealed, rotated...) are counted in the state only. Only the count leaves: the events' fields (actor,
purpose, uid, reason) stay in the spool on the server.

The spool is read from its beginning the first time: a spool is a queue of events nobody has seen yet,
and a wrong key dropped before the watchdog's first pass must still ring.

Strict: a line that is too long, not JSON, not an event object or names an unknown kind is counted as
malformed and alerted (`ops.check_failed`, `malformed_lines=N`), never skipped in silence; a spool that
is a symlink, not a regular file, or not owned by keyd's user is not read at all (a failed check).
"""

from __future__ import annotations

import json
import pwd
from collections import Counter
from typing import Any

from keyd.events import ALERTS, Event
from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result
from ops.logtail import Position, read_new

NAME = "keyd_events"

# keyd caps every string field at 200 characters and an event has a handful of fields: a real line is
# well under 1 KiB. Anything longer was not written by keyd's SpoolSink.
MAX_LINE = 4096
MAX_FIELDS = 16
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


def parse(line: bytes) -> Event | None:
    """The event kind of one spool line, or None when the line is not one keyd's SpoolSink writes."""
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
    for key, value in record.items():
        if key == "ts":
            continue
        if isinstance(value, bool) or not isinstance(value, str | int):
            return None
    return _KINDS.get(kind)


def _owner(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise CheckFailed(f"keyd_user {name!r} does not exist") from None


def run(ctx: Context) -> Result:
    s = ctx.settings
    state: dict[str, Any] = ctx.state or {}
    # OSError (missing spool, symlink, wrong owner: LogRefused) goes to the runner: a failed check,
    # and the previous position is kept so nothing is skipped once the spool is sound again.
    got = read_new(
        s.keyd_spool,
        Position.from_json(state.get("position")),
        max_bytes=s.max_read_bytes,
        owner=_owner(s.keyd_user),
        from_start=True,
    )
    seen: Counter[Event] = Counter()
    malformed = 0
    for line in got.lines:
        kind = parse(line)
        if kind is None:
            malformed += 1
        else:
            seen[kind] += 1
    findings = [
        Finding(alert, resource=str(s.keyd_spool), detail=f"events={seen[kind]}")
        for kind, alert in ALARMS.items()
        if seen[kind]
    ]
    if got.gap:
        findings.append(Finding(Alert.LOG_GAP, resource=NAME, detail=got.gap))
    if malformed:
        findings.append(Finding(Alert.CHECK_FAILED, resource=NAME, detail=f"malformed_lines={malformed}"))
    routine = Counter(state.get("routine") or {})
    routine.update(k.value for k in seen.elements() if k not in ALARMS)
    return Result(findings, {"position": got.position.to_json(), "routine": dict(routine)})
