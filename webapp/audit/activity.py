"""One employee's activity, for supervisors and auditors: who they are, their request budget now,
and what the audit log holds about them (read through webapp/audit/service.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from webapp import budgets
from webapp.db.tables import users


@dataclass(frozen=True)
class Employee:
    id: int
    username: str
    role: str
    active: bool
    locked_until: datetime | None
    last_login_at: datetime | None
    last_login_ip: str | None


_COLUMNS = (
    users.c.id,
    users.c.username,
    users.c.role,
    users.c.active,
    users.c.locked_until,
    users.c.last_login_at,
    users.c.last_login_ip,
)


def _employee(row: Any) -> Employee:  # a row of _COLUMNS
    return Employee(
        int(row.id),
        str(row.username),
        str(row.role),
        bool(row.active),
        row.locked_until,
        row.last_login_at,
        row.last_login_ip,
    )


def employees(conn: sa.Connection) -> list[Employee]:
    """Every user, disabled ones too (users are never deleted: the log keeps naming them)."""
    return [_employee(r) for r in conn.execute(sa.select(*_COLUMNS).order_by(users.c.username))]


def employee(conn: sa.Connection, user_id: int) -> Employee | None:
    row = conn.execute(sa.select(*_COLUMNS).where(users.c.id == user_id)).first()
    return _employee(row) if row is not None else None


def budget_usage(
    conn: sa.Connection, rules: Sequence[budgets.Rule], *, user_id: int, now: datetime
) -> list[budgets.Count]:
    """The employee's own request counters in the current windows (a counter last written in an
    earlier window counts 0), read without counting this request and without a lock."""
    return budgets.peek(conn, budgets.own(rules), user_id=user_id, now=now)
