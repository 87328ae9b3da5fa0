"""The alarm bell: the local log and the remote log host's copy of it must hold the same lines, and the
audit chain in the database must contain the newest head the remote copy saw.

Both sides write the same rsyslog template (ops/rsyslog/, `StrongroomExact`: RFC 3339 time, host, tag,
message), so a line is byte-identical in both places. Within the compared window:
- a line at the remote but not here was deleted or changed here -> REMOTE_LOG_MISMATCH;
- a line here but not at the remote, older than the grace period -> REMOTE_LOG_BEHIND (forwarding is
  stuck, or a line was inserted here).
Lines compare as sets: rsyslog delivers at least once, so after a reconnect the log host may hold a
line twice, and that is not tampering. The window starts at the local file's first line and stays
there until the local file is rotated (or begins at the remote copy's first line, if later), so
deleting the oldest local lines does not quietly move the window.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ops.alerts import Alert, Finding
from ops.checks import CheckFailed, Context, Result

NAME = "remote"
MAX_BYTES = 256 * 1024 * 1024
_AUDIT = re.compile(r"\baudit seq=(\d{1,18}) hash=([0-9a-f]{64})\b")


def _lines(path: Path) -> list[str]:
    with path.open("rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise CheckFailed(f"{path.name} is too large to compare")
    # A last line without its newline is still being written: compare it next time.
    text = data[: data.rfind(b"\n") + 1].decode("utf-8", "replace")
    return text.splitlines()


def _stamp(line: str) -> datetime | None:
    head = line.split(" ", 1)[0]
    try:
        when = datetime.fromisoformat(head)
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


def compare(
    local: list[str], remote: list[str], *, start: datetime | None, until: datetime
) -> tuple[int, int]:
    """(lines at the remote missing here, lines here missing at the remote) within [start, until)."""

    def window(lines: list[str]) -> set[str]:
        out = set()
        for line in lines:
            when = _stamp(line)
            if when is None or when >= until or (start is not None and when < start):
                continue
            out.add(line)
        return out

    here, there = window(local), window(remote)
    return len(there - here), len(here - there)


def newest_audit_head(lines: list[str]) -> tuple[int, str] | None:
    best: tuple[int, str] | None = None
    for line in lines:
        m = _AUDIT.search(line)
        if m and (best is None or int(m[1]) > best[0]):
            best = (int(m[1]), m[2])
    return best


def run(ctx: Context) -> Result:
    s = ctx.settings
    if s.remote_local_log is None or s.remote_copy is None:
        raise CheckFailed("remote_local_log and remote_copy are not set")
    state = ctx.state or {}
    st = os.stat(s.remote_local_log)
    findings = []
    fetched_at = ctx.now
    if s.remote_copy_max_age_seconds is not None:
        # A fetched copy's mtime is when strongroom-remote-copy fetched it (ops/remote_copy.py): the log
        # host's file as of then. Lines written here after that cannot be in it yet.
        fetched_at = min(datetime.fromtimestamp(os.stat(s.remote_copy).st_mtime, UTC), ctx.now)
    if s.remote_copy_max_age_seconds is not None and (
        ctx.now - fetched_at > timedelta(seconds=s.remote_copy_max_age_seconds)
    ):
        # The fetch is failing: comparing with an old copy would hide everything since. Alerted once
        # while it lasts; deletions here of lines the old copy holds are still found below.
        age = int((ctx.now - fetched_at).total_seconds())
        findings.append(
            Finding(
                Alert.REMOTE_COPY_STALE, resource=str(s.remote_copy), detail=f"age_seconds={age}", key="stale"
            )
        )
    local, remote = _lines(s.remote_local_log), _lines(s.remote_copy)
    ident = f"{st.st_dev}:{st.st_ino}"
    start: datetime | None = None
    if state.get("local") == ident and state.get("start"):
        start = datetime.fromisoformat(state["start"])
    else:
        stamps = [w for w in map(_stamp, local) if w is not None]
        start = min(stamps) if stamps else None
    until = fetched_at - timedelta(seconds=s.remote_grace_seconds)
    # The log host rotates its copy on its own schedule: nothing older than its first line is there.
    # (Its first line is out of this host's reach, so this does not let an intruder move the window.)
    remote_stamps = [w for w in map(_stamp, remote[:50]) if w is not None]
    window_start = max([start, min(remote_stamps)]) if start and remote_stamps else start
    missing_here, missing_there = compare(local, remote, start=window_start, until=until)
    if missing_here:
        findings.append(
            Finding(
                Alert.REMOTE_LOG_MISMATCH,
                resource=str(s.remote_local_log),
                detail=f"lines_missing_or_changed_here={missing_here}",
            )
        )
    if missing_there:
        findings.append(
            Finding(
                Alert.REMOTE_LOG_BEHIND,
                resource=str(s.remote_copy),
                detail=f"lines_not_at_remote={missing_there}",
            )
        )
    findings += _audit_head(ctx, remote)
    new_state: dict[str, Any] = {"local": ident, "start": start.isoformat() if start else None}
    return Result(findings, new_state)


def _audit_head(ctx: Context, remote: list[str]) -> list[Finding]:
    head = newest_audit_head(remote)
    if head is None:
        return []
    if ctx.engine is None:
        raise CheckFailed("no database to compare the audit chain with")
    from webapp.audit.service import verify
    from webapp.db.engine import READ_ONLY

    with ctx.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        result = verify(conn, expect_head=head)
    if result.ok:
        return []
    return [
        Finding(
            Alert.AUDIT_HEAD_MISMATCH,
            resource="audit_log",
            detail=f"remote_head={head[0]} db_head={result.head_seq} problems={len(result.problems)}",
        )
    ]
