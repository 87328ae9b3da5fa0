"""Request and reveal budgets: every authenticated request counts, and so does every reveal, per
employee and in total, over fixed windows.

Reveal budgets (STRONGROOM_REVEAL_BUDGETS, keyd's [budgets] shape and defaults) are the global half of
the decrypt budgets: keyd counts every decrypt too, but per keyd, so with N web nodes (each with its
own keyd) an employee could reveal N times keyd's budget. The reveal counters live in the same table
as the request counters (scope keys "reveal:user:<id>" and "reveal:total"), charged the same exact
way, by the reveal view before it asks keyd (`charge_reveal`), so they hold across nodes and
restarts. keyd's own count stays the last line on each node: it never trusts a count the web app
reports, and the web app reports none (docs/keyd.md, docs/alerts.md "Reveal budgets").

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

Exactness, the same on SQLite and MariaDB (docs/webapp.md, "Transactions"):
- At the start of a request the counts are only read (no lock). A request they already put over a
  limit is refused at once: counts only grow within a window, so that refusal cannot be wrong.
- Every other request is counted at its end, in its own transaction's write phase, by one atomic
  statement (INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE n = n + 1) under the counter's lock
  (SQLite's write lock, MariaDB's row lock), together with the audit record and outbox row of any
  threshold it crosses. The count that statement produces decides: exactly one request sees it equal
  the threshold (the event is raised once), and a request whose own count lands above a hard limit is
  turned into the 429 refusal there and then (its page is not sent, the view's writes and records are
  rolled back, the refusal is recorded and counted), so exactly `limit` requests per window are
  served whatever the interleaving. Counters are taken in one fixed order (no deadlock between them).
- A request that fails (503, safe mode) rolls back with everything else and is not counted.
- An administrator may lift an employee's spent budget (`lift`, the admin console: confirmed with a
  reason and the admin's password, audited as admin.budget_lifted): the employee's own counters of
  the current windows are set back to 0 under their locks, in the same order.
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
from sqlalchemy.dialects.mysql.mariadb import MariaDBDialect

from webapp.clock import from_db, to_db
from webapp.config import ConfigError
from webapp.db.tables import UtcDateTime, metadata
from webapp.events import Event
from webapp.refusals import refuse
from webapp.request import unit
from webapp.services import services
from webapp.unit import UnitOfWork

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


REQUEST, REVEAL = "request", "reveal"  # what a rule counts: every request, or every reveal


@dataclass(frozen=True)
class Rule:
    scope: str  # "employee" or "total"
    window: int  # seconds
    alert: int
    limit: int | None
    counts: str = REQUEST

    @property
    def name(self) -> str:
        base = f"{self.scope}/{self.window}s"
        return base if self.counts == REQUEST else f"{self.counts}:{base}"

    def key(self, user_id: int) -> str:
        """The counter's row: "total" and "user:<id>" for requests (as they always were),
        "reveal:total" and "reveal:user:<id>" for reveals, in the same table."""
        base = "total" if self.scope == "total" else f"user:{user_id}"
        return base if self.counts == REQUEST else f"{self.counts}:{base}"


def counted_by(key: str) -> str:
    """What a stored counter counts, from its scope key."""
    return REVEAL if key.startswith(f"{REVEAL}:") else REQUEST


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


# STRONGROOM_REVEAL_BUDGETS has keyd's [budgets] shape (deploy/keyd.toml.in, keyd/config.py), so that
# the operator copies the same six numbers into both: scope -> window -> limit.
REVEAL_SCOPES = {"employee": "employee", "global": "total"}
REVEAL_WINDOWS = {"minute": 60, "hour": 3600, "day": 86400}
MAX_REVEAL_LIMIT = 10**9


def parse_reveal_limits(value: Any) -> tuple[Rule, ...]:
    """STRONGROOM_REVEAL_BUDGETS: {"employee": {"minute", "hour", "day"}, "global": {...}}; strict.

    Unlike keyd, which fills a window left out with its default, every window must be given: a
    setting that differs from keyd's file only by what was left out would be hard to spot."""
    what = "STRONGROOM_REVEAL_BUDGETS"
    if not isinstance(value, dict) or set(value) != set(REVEAL_SCOPES):
        raise ConfigError(f"{what} must have exactly the scopes employee and global, as keyd's [budgets]")
    rules: list[Rule] = []
    for scope, scope_key in REVEAL_SCOPES.items():
        given = value[scope]
        if not isinstance(given, dict) or set(given) != set(REVEAL_WINDOWS):
            raise ConfigError(f"{what}: {scope} must give exactly minute, hour and day (none may be off)")
        for window, seconds in REVEAL_WINDOWS.items():
            limit = given[window]
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_REVEAL_LIMIT:
                raise ConfigError(
                    f"{what}: {scope}.{window} must be a whole number from 1 to {MAX_REVEAL_LIMIT}"
                )
            # No alert threshold of its own: every reveal is audited, and a refusal is an alert.
            rules.append(Rule(scope_key, seconds, alert=limit, limit=limit, counts=REVEAL))
    return tuple(rules)


def reveal_reason(c: Count) -> str:
    """The window that refused a reveal, in keyd's words ("employee_day", "global_minute")."""
    scope = next(name for name, key in REVEAL_SCOPES.items() if key == c.rule.scope)
    window = next(name for name, seconds in REVEAL_WINDOWS.items() if seconds == c.rule.window)
    return f"{scope}_{window}"


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
    """The one lock order: the employee's own counters, then the shared ones."""
    return sorted(rules, key=lambda r: (r.scope != "employee", r.key(user_id), r.window))


_STATEMENTS: dict[tuple[str, int], sa.Executable] = {}
MARIADB_RETURNING = (10, 5)  # INSERT ... ON DUPLICATE KEY UPDATE ... RETURNING, the updated row


def _dialect_key(dialect: sa.Dialect) -> str:
    """Which upsert this database takes: SQLite's and MariaDB's (10.5+) return the new counts;
    MySQL's cannot, and its counts are read back under the row locks the upsert took."""
    if dialect.name == "sqlite":
        return "sqlite"
    version = dialect.server_version_info or ()
    if getattr(dialect, "is_mariadb", False) and tuple(version[:2]) >= MARIADB_RETURNING:
        return "mariadb"
    return "mysql"


def _upsert_statement(dialect: str, rows: int) -> sa.Executable:
    """One INSERT for `rows` counters, built once per dialect and size and bound per request.

    SQLAlchemy never caches the compiled form of a multi-row VALUES statement: run as built, it would
    be compiled again on every request (about a third of a millisecond, more than running it). So it
    is compiled here, once, and run as its SQL text with the same typed parameters."""
    key = (dialect, rows)
    if key in _STATEMENTS:
        return _STATEMENTS[key]
    t = request_counters
    values = [
        {
            "scope": sa.bindparam(f"scope{i}"),
            "window_seconds": sa.bindparam(f"window{i}"),
            "window_start": sa.bindparam(f"start{i}", type_=UtcDateTime),
            "n": 1,
        }
        for i in range(rows)
    ]
    statement: sa.Insert
    if dialect == "sqlite":
        ins = sqlite.insert(t).values(values)
        new = ins.excluded.window_start
        statement = ins.on_conflict_do_update(
            index_elements=[t.c.scope, t.c.window_seconds],
            set_={
                # A new window restarts at 1; a late request from the old window counts in the
                # current one (counting more is the safe side).
                "n": sa.case((new > t.c.window_start, 1), else_=t.c.n + 1),
                "window_start": sa.case((new > t.c.window_start, new), else_=t.c.window_start),
            },
        ).returning(t.c.scope, t.c.window_seconds, t.c.n)
    else:
        ins_my = mysql.insert(t).values(values)
        new_my = ins_my.inserted.window_start
        # MariaDB assigns left to right and later terms see earlier ones: `n` first, while
        # window_start still holds the stored value.
        statement = ins_my.on_duplicate_key_update(
            [
                ("n", sa.case((new_my > t.c.window_start, 1), else_=t.c.n + 1)),
                ("window_start", sa.case((new_my > t.c.window_start, new_my), else_=t.c.window_start)),
            ]
        )
        if dialect == "mariadb":
            statement = statement.returning(t.c.scope, t.c.window_seconds, t.c.n)
    # Compiled with named parameters, so that the text is bound by name on either driver.
    named: sa.Dialect
    if dialect == "sqlite":
        named = sqlite.dialect(paramstyle="named")
    elif dialect == "mariadb":
        named = MariaDBDialect(paramstyle="named")
    else:
        named = mysql.dialect(paramstyle="named")
    _STATEMENTS[key] = _as_text(statement, named, rows)
    return _STATEMENTS[key]


def _as_text(statement: sa.Insert, dialect: sa.Dialect, rows: int) -> sa.TextClause:
    compiled = statement.compile(dialect=dialect)
    constants = {name: value for name, value in compiled.params.items() if value is not None}
    typed = [sa.bindparam(f"start{i}", type_=UtcDateTime) for i in range(rows)]
    return sa.text(compiled.string).bindparams(*typed, **constants)


def _select_statement(rows: int) -> sa.Executable:
    key = ("select", rows)
    if key not in _STATEMENTS:
        t = request_counters
        _STATEMENTS[key] = sa.select(t.c.scope, t.c.window_seconds, t.c.n, t.c.window_start).where(
            sa.or_(
                *(
                    sa.and_(
                        t.c.scope == sa.bindparam(f"scope{i}"),
                        t.c.window_seconds == sa.bindparam(f"window{i}"),
                    )
                    for i in range(rows)
                )
            )
        )
    return _STATEMENTS[key]


def _params(rules: Sequence[Rule], user_id: int, now: datetime) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for i, rule in enumerate(rules):
        params[f"scope{i}"] = rule.key(user_id)
        params[f"window{i}"] = rule.window
        params[f"start{i}"] = to_db(window_start(now, rule.window))
    return params


def _read(conn: sa.Connection, rules: Sequence[Rule], user_id: int, now: datetime) -> list[Count]:
    """The counts as stored; a row from an earlier window counts as 0. One statement."""
    params = _params(rules, user_id, now)
    stored = {
        (row.scope, int(row.window_seconds)): (int(row.n), from_db(row.window_start))
        for row in conn.execute(_select_statement(len(rules)), params)
    }
    found: list[Count] = []
    for rule in rules:
        start = window_start(now, rule.window)
        n, at = stored.get((rule.key(user_id), rule.window), (0, start))
        found.append(Count(rule, n if at >= start else 0, start))
    return found


def charge(conn: sa.Connection, rules: Sequence[Rule], *, user_id: int, now: datetime) -> list[Count]:
    """Count one request against every rule, atomically, in the caller's transaction (its write
    phase): one statement on SQLite and MariaDB (the upsert returns the new counts), two on MySQL."""
    if not rules:
        return []
    ordered = _ordered(rules, user_id)
    params = _params(ordered, user_id, now)
    dialect = _dialect_key(conn.dialect)
    statement = _upsert_statement(dialect, len(ordered))
    if dialect == "mysql":
        conn.execute(statement, params)
        return _read(conn, ordered, user_id, now)  # under the row locks the upsert took
    counted = {(row.scope, int(row.window_seconds)): int(row.n) for row in conn.execute(statement, params)}
    return [
        Count(rule, counted[(rule.key(user_id), rule.window)], window_start(now, rule.window))
        for rule in ordered
    ]


def own(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in rules if r.scope == "employee"]


def shared(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in rules if r.scope != "employee"]


def charge_in_turn(conn: sa.Connection, rules: Sequence[Rule], *, user_id: int, now: datetime) -> list[Count]:
    """Count one request against the employee's own rules first, and against the shared (total)
    rules only when the employee's own budget still allows the request: a request refused by the
    employee's own limit spends nobody else's budget. Lock order is the same for every request
    (own counters, then the total), so two requests cannot deadlock on each other's counters.
    Without an own limit nothing can stop at the first step: everything is counted in one statement."""
    if not any(r.limit is not None for r in own(rules)):
        return charge(conn, rules, user_id=user_id, now=now)
    counts = charge(conn, own(rules), user_id=user_id, now=now)
    if any(c.over_limit for c in counts):
        return counts
    return counts + charge(conn, shared(rules), user_id=user_id, now=now)


def charge_reveal(conn: sa.Connection, rules: Sequence[Rule], *, user_id: int, now: datetime) -> Count | None:
    """Count one reveal against the reveal rules (in turn: the employee's own, then the total) in the
    caller's transaction, before keyd is asked to decrypt; the count that refuses it, or None.

    The reveal view calls it after the step-up password and before the decrypt, so the counter rows
    stay locked to the commit, which carries the reveal's own audit record: a reveal is counted
    exactly when it is recorded, on every web node alike, and exactly `limit` reveals per window
    pass whatever the interleaving (the count the upsert returns decides, as for requests). A refused
    reveal is counted too (like a refused request: a count above the limit stays above it)."""
    return deciding(charge_in_turn(conn, rules, user_id=user_id, now=now))


def peek(conn: sa.Connection, rules: Sequence[Rule], *, user_id: int, now: datetime) -> list[Count]:
    """The counts as they are, without counting and without a lock (one statement)."""
    return _read(conn, _ordered(rules, user_id), user_id, now)


def usage(conn: sa.Connection, rules: Sequence[Rule], *, now: datetime) -> dict[str, list[Count]]:
    """Every stored counter's count in its rule's current window, by scope key ("total",
    "user:<id>"), for the admin console: one statement, no lock. A counter whose window_start is not
    the current window counts 0; a scope with no stored counter is absent (it counts 0 everywhere)."""
    t = request_counters
    by_window = {(r.counts, r.scope == "total", r.window): r for r in rules}
    found: dict[str, list[Count]] = {}
    for row in conn.execute(sa.select(t.c.scope, t.c.window_seconds, t.c.n, t.c.window_start)):
        scope = str(row.scope)
        kind = counted_by(scope)
        total = scope == ("total" if kind == REQUEST else f"{kind}:total")
        rule = by_window.get((kind, total, int(row.window_seconds)))
        if rule is None:  # a counter of a rule no longer configured
            continue
        start = window_start(now, rule.window)
        n = int(row.n) if from_db(row.window_start) >= start else 0
        found.setdefault(scope, []).append(Count(rule, n, start))
    return found


def lift(
    conn: sa.Connection,
    rules: Sequence[Rule],
    *,
    user_id: int,
    actor_id: int,
    now: datetime,
    reveals: Sequence[Rule] = (),
) -> list[Count]:
    """An administrator lifts an employee's spent request budget (the admin console, after an
    investigation): that employee's own counters of the current windows go back to 0, by UPDATE (the
    app may not DELETE counters, db/grants.sql), in the caller's transaction: their request counters
    and, with `reveals`, their reveal counters (the web app's global reveal budget; keyd's own
    per-node budget is not the web app's to lift). The shared (total) counters are not touched.
    Returns the employee's counts as they were just before, read under the lift's locks: what the
    audit record states.

    Exact under concurrency, like charging: the rows are locked (MariaDB: SELECT ... FOR UPDATE, row
    locks; SQLite: the write lock) before they are read and reset, so a request counted at the same
    moment lands wholly before the lift (and is reset with the rest) or wholly after (and counts in
    the lifted window); nothing is lost or counted twice. The locks are taken in the one order (scope
    key, then window; "total" after every "user:<id>"), the lifting admin's own counters with the
    employee's, since the admin's own request charges those at its end: two admins lifting each
    other's budgets at once cannot deadlock. Within a window counts only grow, except here: a request
    refused at its start by the lock-free read (_before) was over the limit when it read, and is
    refused on that. After a lift the count crosses the alert and the limit again from 0, so
    budget.alert and budget.limit_reached are raised again if it reaches them in the same window."""
    # Reveal counters first: "reveal:user:<id>" sorts before every "user:<id>", in the database's
    # order as in Python's, and a reveal takes its reveal counters before its request counters.
    mine = sorted(own(reveals), key=lambda r: r.window) + sorted(own(rules), key=lambda r: r.window)
    if not mine:
        return []
    t = request_counters
    keys = sorted({r.key(user_id) for r in mine} | ({f"user:{actor_id}"} if own(rules) else set()))
    locked = conn.execute(
        sa.select(t.c.scope, t.c.window_seconds, t.c.n, t.c.window_start)
        .where(t.c.scope.in_(keys), t.c.window_seconds.in_(sorted({r.window for r in mine})))
        .order_by(t.c.scope, t.c.window_seconds)
        .with_for_update()
    ).all()
    stored = {(row.scope, int(row.window_seconds)): (int(row.n), from_db(row.window_start)) for row in locked}
    was: list[Count] = []
    for rule in mine:
        key = rule.key(user_id)
        start = window_start(now, rule.window)
        n, at = stored.get((key, rule.window), (0, start))
        current = n if at >= start else 0
        was.append(Count(rule, current, start))
        if current:
            conn.execute(
                sa.update(t)
                .where(t.c.scope == key, t.c.window_seconds == rule.window, t.c.window_start >= to_db(start))
                .values(n=0)
            )
    return was


def deciding(counts: Sequence[Count]) -> Count | None:
    """The count that refuses the request, if any: the employee's own limit first (a request it
    refuses is not counted in the total), else the shared one; of several, the one renewing last."""
    mine = [c for c in counts if c.over_limit and c.rule.scope == "employee"]
    over = mine or [c for c in counts if c.over_limit]
    return max(over, key=lambda c: c.renews_at) if over else None


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


@dataclass(frozen=True)
class _Pending:
    user_id: int
    mark: int  # the unit of work's records before the view: a request turned into a refusal keeps only these


def _before() -> None:
    rules = _rules_of_app()
    if not rules or request.endpoint == "static" or not current_user.is_authenticated:
        return
    user_id = int(current_user.id)
    uow = unit()
    g.budget = _Pending(user_id, uow.mark())
    if not any(r.limit is not None for r in rules):
        return  # alert thresholds only: nothing can refuse this request, so nothing to read first
    # A read, no lock: if this request is over already, it is over at its end too (counts only grow
    # within a window), so it is refused before the view does any work. The exact decision for
    # every other request is made in _after, on the count it produces.
    now = services().clock.now()
    over = deciding(
        [Count(c.rule, c.n + 1, c.window_start) for c in peek(uow.conn, rules, user_id=user_id, now=now)]
    )
    if over is not None:
        raise BudgetExceeded(over)


def _after(response: Response) -> Response:
    pending: _Pending | None = g.pop("budget", None)
    if pending is None:
        return response
    rules, uow, now = _rules_of_app(), unit(), services().clock.now()
    counts = charge_in_turn(uow.conn, rules, user_id=pending.user_id, now=now)
    over = deciding(counts)
    if over is None or g.get("budget_refused"):
        record_crossings(uow, counts)
        return response
    # Another request took the last of the budget between this one's start and its write phase:
    # this one is refused after all. Its page is never sent; what the view wrote and recorded is
    # rolled back (the refusal is what happened), then the refusal is counted like any other.
    uow.discard_writes(keep=pending.mark)
    refusal = _refused(BudgetExceeded(over))
    record_crossings(uow, charge_in_turn(uow.conn, rules, user_id=pending.user_id, now=now))
    return refusal


def _rules_of_app() -> tuple[Rule, ...]:
    rules: tuple[Rule, ...] = current_app.extensions["strongroom.budgets"]
    return rules


def _refused(exc: BudgetExceeded) -> Response:
    g.budget_refused = True  # counted by _after like any request, and not refused a second time
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
    response.headers["Retry-After"] = retry_after(c, services().clock.now())
    return response


def retry_after(c: Count, now: datetime) -> str:
    """The Retry-After header of a refusal by this count: the seconds until its window renews."""
    return str(max(1, math.ceil((c.renews_at - now).total_seconds())))


def reveal_rules() -> tuple[Rule, ...]:
    """The app's reveal rules (STRONGROOM_REVEAL_BUDGETS), parsed at start."""
    rules: tuple[Rule, ...] = current_app.extensions["strongroom.reveal_budgets"]
    return rules


def init_app(app: Flask) -> None:
    """Parse the rules, request and reveal (a bad setting stops the app at start) and hook every
    request (reveals are counted by the reveal view itself: webapp/records/reveal.py).

    Call it after the hook that identifies the user and before the input and CSRF checks: a refused
    request still counts."""
    app.extensions["strongroom.budgets"] = parse_rules(app.config["REQUEST_BUDGETS"])
    app.extensions["strongroom.reveal_budgets"] = parse_reveal_limits(app.config["REVEAL_BUDGETS"])
    app.before_request(_before)
    app.after_request(_after)
    app.register_error_handler(BudgetExceeded, _refused)
