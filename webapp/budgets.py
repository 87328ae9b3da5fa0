"""Request budgets: every authenticated request counts, per employee and in total, over fixed windows.

An employee harvesting data shows up as many requests (even masked views), so each rule has an
`alert` threshold that raises `budget.alert` (audited, outbox, mailed) exactly once per window, and
optionally a hard `limit` above which requests are refused with 429 (each refusal audited; the
first one also raises `budget.limit_reached`).

The counters live in the database (table `request_counters`, one row per scope and window length,
reset in place when a new window starts: no row growth, no DELETE): every gunicorn worker and every
restart sees the same counts. Windows are aligned to the UTC epoch (an hour starts at :00, a day at
00:00 UTC); the clock is an input.

A request refused by the employee's own limit is counted against that employee's own counters only,
never against the total: an employee retrying after their own refusals cannot spend the budget every
colleague shares. (Their served requests do count in the total, up to their own limit.)

Exactness:
- MariaDB: each request increments its counters atomically (INSERT ... ON DUPLICATE KEY UPDATE) in a
  short transaction of its own, at the start of the request, together with the audit record and
  outbox row of any threshold it crosses. Exactly one request sees the count equal the threshold, so
  the event is raised once; the refusal decision uses the count that request produced, so the limit
  holds exactly under concurrency. Counters are taken in one fixed order (no deadlock between them).
- SQLite: a request holds the database's single write lock from its session load to its commit, so a
  second transaction cannot run beside it. The counts are read at the start of the request (the
  refusal decision) and incremented at its end, in the request's own transaction, with the events.
  Requests are serialized by that lock, so this is exact, except that a request refused by another
  rule (404, 403, CSRF) releases the lock for a moment: in that rare interleaving, concurrent
  workers can let through one extra request at the margin of a hard limit. Alerts stay exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app, g, request
from flask.wrappers import Response
from flask_login import current_user
from sqlalchemy.dialects import mysql, sqlite

from webapp.clock import from_db, to_db
from webapp.config import ConfigError
from webapp.db.engine import is_sqlite
from webapp.db.tables import UtcDateTime, metadata
from webapp.events import Event
from webapp.refusals import refuse
from webapp.request import origin, unit
from webapp.services import services
from webapp.unit import Origin, UnitOfWork

request_counters = sa.Table(
    "request_counters",
    metadata,
    sa.Column("scope", sa.String(32), primary_key=True),  # "total" or "user:<id>"
    sa.Column("window_seconds", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("window_start", UtcDateTime, nullable=False),
    sa.Column("n", sa.BigInteger, nullable=False),
)

SCOPES = ("employee", "total")
MAX_RULES = 8
MIN_WINDOW, MAX_WINDOW = 60, 7 * 86400
_RULE_KEYS = {"scope", "window", "alert", "limit"}
_DEADLOCK_CODES = {1205, 1213}  # lock wait timeout, deadlock: retried, the charge is all-or-nothing
_ATTEMPTS = 3


@dataclass(frozen=True)
class Rule:
    scope: str  # "employee" or "total"
    window: int  # seconds
    alert: int
    limit: int | None

    @property
    def name(self) -> str:
        return f"{self.scope}/{self.window}s"

    def key(self, user_id: int) -> str:
        return "total" if self.scope == "total" else f"user:{user_id}"


def _positive(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"STRONGROOM_REQUEST_BUDGETS: {what} must be an integer from {low} to {high}")
    return value


def parse_rules(value: Any) -> tuple[Rule, ...]:
    """STRONGROOM_REQUEST_BUDGETS: a JSON list of {"scope", "window", "alert", "limit"}; strict."""
    if not isinstance(value, list | tuple) or len(value) > MAX_RULES:
        raise ConfigError(f"STRONGROOM_REQUEST_BUDGETS must be a list of at most {MAX_RULES} rules")
    rules: list[Rule] = []
    for item in value:
        if not isinstance(item, dict) or set(item) != _RULE_KEYS:
            raise ConfigError(
                "STRONGROOM_REQUEST_BUDGETS: each rule is exactly {scope, window, alert, limit}"
            )
        if item["scope"] not in SCOPES:
            raise ConfigError(f"STRONGROOM_REQUEST_BUDGETS: scope must be one of {SCOPES}")
        window = _positive(item["window"], "window", MIN_WINDOW, MAX_WINDOW)
        alert = _positive(item["alert"], "alert", 1, 10**9)
        limit = item["limit"]
        if limit is not None:
            limit = _positive(limit, "limit", alert, 10**9)
        rules.append(Rule(item["scope"], window, alert, limit))
    if len({(r.scope, r.window) for r in rules}) != len(rules):
        raise ConfigError("STRONGROOM_REQUEST_BUDGETS: two rules with the same scope and window")
    return tuple(rules)


def window_start(now: datetime, window: int) -> datetime:
    seconds = math.floor(now.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(seconds - seconds % window, UTC)


@dataclass(frozen=True)
class Count:
    rule: Rule
    n: int  # this window's count, including the current request once charged
    window_start: datetime

    @property
    def crossed_alert(self) -> bool:
        return self.n == self.rule.alert

    @property
    def crossed_limit(self) -> bool:
        return self.rule.limit is not None and self.n == self.rule.limit + 1

    @property
    def over_limit(self) -> bool:
        return self.rule.limit is not None and self.n > self.rule.limit

    @property
    def renews_at(self) -> datetime:
        return self.window_start + timedelta(seconds=self.rule.window)


def _ordered(rules: Sequence[Rule], user_id: int) -> list[Rule]:
    return sorted(rules, key=lambda r: (r.key(user_id), r.window))


def _upsert(conn: sa.Connection, scope: str, window: int, start: datetime) -> None:
    t = request_counters
    values = {"scope": scope, "window_seconds": window, "window_start": to_db(start), "n": 1}
    if conn.dialect.name == "sqlite":
        ins = sqlite.insert(t).values(**values)
        new = ins.excluded.window_start
        conn.execute(
            ins.on_conflict_do_update(
                index_elements=[t.c.scope, t.c.window_seconds],
                set_={
                    # A new window restarts at 1; a late request from the old window counts in the
                    # current one (counting more is the safe side).
                    "n": sa.case((new > t.c.window_start, 1), else_=t.c.n + 1),
                    "window_start": sa.case((new > t.c.window_start, new), else_=t.c.window_start),
                },
            )
        )
        return
    ins_my = mysql.insert(t).values(**values)
    new_my = ins_my.inserted.window_start
    # MariaDB assigns left to right and later terms see earlier ones: `n` first, while
    # window_start still holds the stored value.
    conn.execute(
        ins_my.on_duplicate_key_update(
            [
                ("n", sa.case((new_my > t.c.window_start, 1), else_=t.c.n + 1)),
                ("window_start", sa.case((new_my > t.c.window_start, new_my), else_=t.c.window_start)),
            ]
        )
    )


def _read(conn: sa.Connection, rules: Sequence[Rule], user_id: int, now: datetime) -> list[Count]:
    t = request_counters
    found: list[Count] = []
    for rule in rules:
        start = window_start(now, rule.window)
        row = conn.execute(
            sa.select(t.c.n, t.c.window_start).where(
                t.c.scope == rule.key(user_id), t.c.window_seconds == rule.window
            )
        ).one_or_none()
        n = int(row.n) if row is not None and from_db(row.window_start) >= start else 0
        found.append(Count(rule, n, start))
    return found


def charge(conn: sa.Connection, rules: Sequence[Rule], *, user_id: int, now: datetime) -> list[Count]:
    """Count one request against every rule, atomically, in the caller's transaction."""
    ordered = _ordered(rules, user_id)
    for rule in ordered:
        _upsert(conn, rule.key(user_id), rule.window, window_start(now, rule.window))
    return _read(conn, ordered, user_id, now)


def own(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in rules if r.scope == "employee"]


def shared(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in rules if r.scope != "employee"]


def charge_in_turn(conn: sa.Connection, rules: Sequence[Rule], *, user_id: int, now: datetime) -> list[Count]:
    """Count one request against the employee's own rules first, and against the shared (total)
    rules only when the employee's own budget still allows the request: a request refused by the
    employee's own limit spends nobody else's budget. Lock order is the same for every request
    (own counters, then the total), so two requests cannot deadlock on each other's counters."""
    counts = charge(conn, own(rules), user_id=user_id, now=now)
    if any(c.over_limit for c in counts):
        return counts
    return counts + charge(conn, shared(rules), user_id=user_id, now=now)


def peek(conn: sa.Connection, rules: Sequence[Rule], *, user_id: int, now: datetime) -> list[Count]:
    """The counts as they are, without counting (SQLite's refusal check)."""
    return _read(conn, _ordered(rules, user_id), user_id, now)


def record_crossings(uow: UnitOfWork, counts: Sequence[Count]) -> None:
    for c in counts:
        detail = f"count={c.n} window_start={c.window_start:%Y-%m-%dT%H:%M}Z"
        if c.crossed_alert:
            uow.record(Event.BUDGET_ALERT, ok=True, resource=f"budget:{c.rule.name}", detail=detail)
        if c.crossed_limit:
            uow.record(Event.BUDGET_LIMIT_REACHED, ok=False, resource=f"budget:{c.rule.name}", detail=detail)


class BudgetExceeded(Exception):
    """This request is over a hard limit."""

    def __init__(self, count: Count) -> None:
        super().__init__(count.rule.name)
        self.count = count


def _is_lock_conflict(exc: sa.exc.OperationalError) -> bool:
    args: tuple[Any, ...] = tuple(getattr(exc.orig, "args", ()))
    return len(args) > 0 and args[0] in _DEADLOCK_CODES


def _charge_apart(rules: Sequence[Rule], user_id: int) -> list[Count]:
    """MariaDB: count and raise the events in a short transaction of their own."""
    svc = services()
    who = origin()
    for attempt in range(_ATTEMPTS):
        uow = svc.unit(Origin(actor=current_user.username, ip=who.ip, cert_serial=who.serial))
        try:
            counts = charge_in_turn(uow.conn, rules, user_id=user_id, now=svc.clock.now())
            record_crossings(uow, counts)
            uow.commit()
            return counts
        except sa.exc.OperationalError as exc:
            if not _is_lock_conflict(exc) or attempt == _ATTEMPTS - 1:
                raise
        finally:
            uow.close()
    raise AssertionError("unreachable")  # the loop returns or raises


def _before() -> None:
    rules = _rules_of_app()
    if not rules or request.endpoint == "static" or not current_user.is_authenticated:
        return
    user_id = int(current_user.id)
    if is_sqlite(services().engine):
        now = services().clock.now()
        counts = [
            Count(c.rule, c.n + 1, c.window_start)
            for c in peek(unit().conn, own(rules), user_id=user_id, now=now)
        ]
        charged = own(rules)
        if not any(c.over_limit for c in counts):
            counts += [
                Count(c.rule, c.n + 1, c.window_start)
                for c in peek(unit().conn, shared(rules), user_id=user_id, now=now)
            ]
            charged = list(rules)
        # Charged at the end, in the request's transaction (see above); a request the employee's own
        # limit refuses is charged to the employee's own counters only.
        g.budget_charge = (user_id, charged)
    else:
        counts = _charge_apart(rules, user_id)
    over = [c for c in counts if c.over_limit]
    if over:
        raise BudgetExceeded(max(over, key=lambda c: c.renews_at))


def _after(response: Response) -> Response:
    pending = g.pop("budget_charge", None)
    if pending is not None:
        user_id, rules = pending
        uow = unit()
        record_crossings(uow, charge(uow.conn, rules, user_id=user_id, now=services().clock.now()))
    return response


def _rules_of_app() -> tuple[Rule, ...]:
    rules: tuple[Rule, ...] = current_app.extensions["strongroom.budgets"]
    return rules


def _refused(exc: BudgetExceeded) -> Response:
    c = exc.count
    whose = "your" if c.rule.scope == "employee" else "the vault's overall"
    message = (
        f"Too many requests: {whose} request budget is used up until {c.renews_at:%H:%M} UTC. "
        "If you need more, ask an administrator."
    )
    response = refuse(
        Event.BUDGET_REFUSED,
        f"budget={c.rule.name} count={c.n} limit={c.rule.limit}",
        status=429,
        message=message,
    )
    now = services().clock.now()
    response.headers["Retry-After"] = str(max(1, math.ceil((c.renews_at - now).total_seconds())))
    return response


def init_app(app: Flask) -> None:
    """Parse the rules (a bad setting stops the app at start) and hook every request.

    Call it after the hook that identifies the user and before the input and CSRF checks: a refused
    request still counts."""
    app.extensions["strongroom.budgets"] = parse_rules(app.config["REQUEST_BUDGETS"])
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(BudgetExceeded, _refused)
