"""`flask --app webapp health`: exit 0 only when a request could do its work.

"The database answers SELECT 1" is not that: a read-only or full database answers every SELECT and
refuses every request (503). So health does what every request needs, and undoes it:

- the audit append path: lock the chain head, insert a record, advance the head, all in one
  transaction that is rolled back (nothing is left behind: the chain, its head and the syslog copy
  never see the probe; the audit sequence is the head's, so the rollback leaves no gap);
- keyd answering its status, unsealed.

Each problem is one line naming what failed and why (an exception class or a database refusal
reason, never an error text: those can carry SQL parameters).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from webapp.audit import service as audit
from webapp.audit.service import AuditEntry
from webapp.events import Event
from webapp.failures import is_db_outage, sqlite_path, write_refused
from webapp.services import Services

PROBE_ACTOR = "health"
SEALED = "vault is sealed"  # keyd answers, but holds no key: the balancer's agent says so by name


def database_problem(engine: sa.Engine, *, now: Any) -> str | None:
    """None when the audit append (a write) works; else what went wrong. Always rolled back."""
    probe = AuditEntry(
        event=Event.PAGE_VIEW, outcome=audit.SUCCESS, actor=PROBE_ACTOR, resource="health-probe"
    )
    try:
        with engine.connect() as conn:
            tx = conn.begin()
            try:
                audit.append(conn, [probe], now=now)
            finally:
                tx.rollback()
    except sa.exc.SQLAlchemyError as exc:
        refused = write_refused(exc, sqlite_path=sqlite_path(engine))
        if refused is not None:
            return f"database refuses writes ({refused})"
        if is_db_outage(exc):
            return f"database unavailable ({type(exc).__name__})"
        return f"database write failed ({type(exc).__name__})"
    return None


def keyd_problem(vault: Any) -> str | None:
    from keyd.errors import KeydError

    try:
        status = vault.status()
    except KeydError as exc:
        return f"keyd unavailable ({type(exc).__name__})"
    if status.sealed:
        return SEALED
    return None


def findings(svc: Services) -> dict[str, str]:
    """Each failing part ("database", "keyd") and its problem; empty when requests can work. Both
    are checked: an operator wants the whole picture at once."""
    found = {"database": database_problem(svc.engine, now=svc.clock.now()), "keyd": keyd_problem(svc.vault)}
    return {part: problem for part, problem in found.items() if problem is not None}


def problems(svc: Services) -> list[str]:
    """Every problem found, one line each."""
    return list(findings(svc).values())
