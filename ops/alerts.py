"""Alert names and the one place an alert leaves the watchdog: the web app's outbox table.

Details are short facts (a count, a port, a process name), never log lines or command lines: those can
carry secrets, and the mail is a bare notification anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa

from webapp import outbox

ACTOR = "ops.watch"
_LIMITS = {"resource": 200, "detail": 200}


class Alert(StrEnum):
    PROCESS_UNKNOWN = "ops.process_unknown"
    PORT_NEW = "ops.port_new"
    PORT_GONE = "ops.port_gone"
    LOG_NEW = "ops.log_new"
    LOG_GAP = "ops.log_gap"
    LOG_TOO_BIG = "ops.log_too_big"
    MODSECURITY_BLOCKED = "ops.modsecurity_blocked"
    ACCESS_THRESHOLD = "ops.access_threshold"
    ACCESS_REPORT = "ops.access_report"
    UPDATES_PENDING = "ops.updates_pending"
    SECURITY_UPDATES_PENDING = "ops.security_updates_pending"
    KEYD_SEALED = "ops.keyd_sealed"
    KEYD_UNREACHABLE = "ops.keyd_unreachable"
    # keyd's own security events, read from its spool (ops/checks/keyd_events.py): one name per kind.
    KEYD_WRONG_KEY = "ops.keyd_wrong_key"
    KEYD_DROP_FILE_REFUSED = "ops.keyd_drop_file_refused"
    KEYD_DROP_FILE_NOT_DELETED = "ops.keyd_drop_file_not_deleted"
    KEYD_PEER_REFUSED = "ops.keyd_peer_refused"
    KEYD_ADMIN_REFUSED = "ops.keyd_admin_refused"
    KEYD_BUDGET_EXCEEDED = "ops.keyd_budget_exceeded"
    KEYD_INTEGRITY_FAILURE = "ops.keyd_integrity_failure"
    KEYD_RETIRED_VERSION_USED = "ops.keyd_retired_version_used"
    KEYD_KEY_VERSION_EXHAUSTED = "ops.keyd_key_version_exhausted"
    KEYD_HARDENING_DEGRADED = "ops.keyd_hardening_degraded"
    KEYD_STATE_WRITE_FAILED = "ops.keyd_state_write_failed"
    KEYD_SHARE_REFUSED = "ops.keyd_share_refused"
    KEYD_SHARE_DUPLICATE = "ops.keyd_share_duplicate"
    KEYD_SHARE_TIMED_OUT = "ops.keyd_share_timed_out"
    INTEGRITY_CHANGED = "ops.integrity_changed"
    REMOTE_LOG_MISMATCH = "ops.remote_log_mismatch"
    REMOTE_LOG_BEHIND = "ops.remote_log_behind"
    REMOTE_COPY_STALE = "ops.remote_copy_stale"
    AUDIT_HEAD_MISMATCH = "ops.audit_head_mismatch"
    BASELINE_MISSING = "ops.baseline_missing"
    CHECK_FAILED = "ops.check_failed"


@dataclass(frozen=True)
class Finding:
    """One thing the admin must look at.

    `key` names a lasting condition (an unknown process, an open port): the runner alerts once when it
    appears and stays quiet while it lasts. Findings without a key are events and always alert.
    """

    alert: Alert
    resource: str = "-"
    detail: str = "-"
    key: str | None = None

    def __post_init__(self) -> None:
        for name, limit in _LIMITS.items():
            value = getattr(self, name)
            object.__setattr__(self, name, (value or "-")[:limit])


def enqueue(conn: sa.Connection, findings: Sequence[Finding], *, now: datetime) -> int:
    """Queue the findings in the caller's transaction; the web app's mailer delivers them."""
    for f in findings:
        outbox.enqueue(conn, str(f.alert), now=now, actor=ACTOR, resource=f.resource, detail=f.detail)
    return len(findings)
