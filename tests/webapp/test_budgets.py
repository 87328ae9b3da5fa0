"""Request budgets: counted in the database, shared by workers, exact at the threshold, clock-driven."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event as sa_event

from tests.webapp.conftest import Person, client_for, get, login
from tests.webapp.helpers import audit_rows, events
from webapp import budgets
from webapp.budgets import Rule, parse_rules, window_start
from webapp.clock import FakeClock
from webapp.config import DEFAULTS, ConfigError
from webapp.events import ALERTS, Event


def rule(scope: Any = "employee", window: Any = 3600, alert: Any = 5, limit: Any = None) -> dict[str, Any]:
    return {"scope": scope, "window": window, "alert": alert, "limit": limit}


def logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def count(app: Flask, event: Event) -> int:
    return sum(1 for e in events(app) if e == event)


def test_the_defaults_parse_and_alert_but_never_refuse() -> None:
    rules = parse_rules(DEFAULTS["REQUEST_BUDGETS"])
    assert {(r.scope, r.window) for r in rules} == {
        ("employee", 3600),
        ("employee", 86400),
        ("total", 3600),
        ("total", 86400),
    }
    assert all(r.limit is None for r in rules)
    assert {Event.BUDGET_ALERT, Event.BUDGET_LIMIT_REACHED} <= ALERTS
    assert Event.BUDGET_REFUSED not in ALERTS


@pytest.mark.parametrize(
    "value",
    [
        None,
        "employee/3600=300",
        {"scope": "employee"},
        [rule()] * 2,  # the same scope and window twice
        [rule(scope="team")],
        [rule(window=59)],
        [rule(window=8 * 86400)],
        [rule(window="3600")],
        [rule(window=3600.5)],
        [rule(alert=0)],
        [rule(alert=-1)],
        [rule(alert=True)],
        [rule(alert=10, limit=9)],  # a limit below the alert would refuse before anyone is told
        [rule(limit=0)],
        [{"scope": "employee", "window": 3600, "alert": 5}],  # limit must be stated (null for none)
        [{**rule(), "extra": 1}],
        [rule(window=60 * (i + 1)) for i in range(9)],  # too many rules
    ],
)
def test_bad_budget_settings_stop_the_app(make_app: Callable[..., Flask], value: Any) -> None:
    with pytest.raises(ConfigError, match="REQUEST_BUDGETS"):
        make_app(REQUEST_BUDGETS=value)


@pytest.mark.parametrize(
    ("now", "window", "start"),
    [
        (
            datetime(2026, 11, 25, 10, 59, 59, 999999, tzinfo=UTC),
            3600,
            datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        ),
        (datetime(2026, 11, 25, 11, 0, tzinfo=UTC), 3600, datetime(2026, 11, 25, 11, 0, tzinfo=UTC)),
        (datetime(2026, 11, 25, 23, 59, tzinfo=UTC), 86400, datetime(2026, 11, 25, 0, 0, tzinfo=UTC)),
        (datetime(2026, 11, 25, 10, 7, 30, tzinfo=UTC), 300, datetime(2026, 11, 25, 10, 5, tzinfo=UTC)),
    ],
)
def test_windows_are_aligned_to_utc(now: datetime, window: int, start: datetime) -> None:
    assert window_start(now, window) == start


def test_alert_exactly_once_at_exactly_the_threshold(
    make_app: Callable[..., Flask], people: dict[str, Person], clock: FakeClock
) -> None:
    app = make_app(REQUEST_BUDGETS=[rule(alert=5)])
    client = logged_in(app, people["alice"])  # the login requests are not authenticated: not counted
    for _ in range(4):
        assert get(client, "/").status_code == 200
    assert count(app, Event.BUDGET_ALERT) == 0
    assert get(client, "/").status_code == 200  # the 5th
    assert count(app, Event.BUDGET_ALERT) == 1
    for _ in range(10):
        assert get(client, "/").status_code == 200
    assert count(app, Event.BUDGET_ALERT) == 1
    (alert,) = audit_rows(app, Event.BUDGET_ALERT)
    assert (alert.actor, alert.resource) == ("alice", "budget:employee/3600s")
    assert alert.detail.startswith("count=5 ")

    clock.advance(timedelta(minutes=59))  # 10:59: still the same window (sessions idle 15 min)
    client = logged_in(app, people["alice"])
    assert get(client, "/").status_code == 200
    assert count(app, Event.BUDGET_ALERT) == 1
    clock.advance(timedelta(minutes=1))  # 11:00: a new window, counting from 0 again
    for _ in range(4):
        get(client, "/")
    assert count(app, Event.BUDGET_ALERT) == 1
    get(client, "/")
    assert count(app, Event.BUDGET_ALERT) == 2


def test_hard_limit_refuses_above_it_with_429_and_renews_with_the_window(
    make_app: Callable[..., Flask], people: dict[str, Person], clock: FakeClock
) -> None:
    app = make_app(REQUEST_BUDGETS=[rule(alert=2, limit=3)])
    client = logged_in(app, people["alice"])
    assert [get(client, "/").status_code for _ in range(3)] == [200, 200, 200]
    refused = get(client, "/")
    assert refused.status_code == 429
    assert "request budget is used up until 11:00 UTC" in refused.text
    assert refused.headers["Retry-After"] == "3600"
    assert get(client, "/records/").status_code == 429  # every route
    assert count(app, Event.BUDGET_LIMIT_REACHED) == 1
    assert len(audit_rows(app, Event.BUDGET_REFUSED)) == 2
    other = logged_in(app, people["bob"])  # per employee: bob is not affected
    assert get(other, "/").status_code == 200
    clock.advance(timedelta(hours=1))
    client = logged_in(app, people["alice"])  # the old session went idle meanwhile
    assert get(client, "/").status_code == 200
    assert count(app, Event.BUDGET_ALERT) == 1  # bob is at 1; alice restarted at 1


def test_refused_requests_count_too(make_app: Callable[..., Flask], people: dict[str, Person]) -> None:
    app = make_app(REQUEST_BUDGETS=[rule(alert=3)])
    client = logged_in(app, people["alice"])
    assert get(client, "/no-such-page").status_code == 404
    assert get(client, "/", query_string={"unexpected": "x"}).status_code == 400
    assert count(app, Event.BUDGET_ALERT) == 0
    assert get(client, "/").status_code == 200
    assert count(app, Event.BUDGET_ALERT) == 1


def test_the_total_counts_every_employee(make_app: Callable[..., Flask], people: dict[str, Person]) -> None:
    app = make_app(REQUEST_BUDGETS=[rule(scope="total", alert=4), rule(alert=3)])
    alice, bob = logged_in(app, people["alice"]), logged_in(app, people["bob"])
    for client in (alice, bob, alice, bob):
        assert get(client, "/").status_code == 200
    rows = audit_rows(app, Event.BUDGET_ALERT)
    assert [(r.actor, r.resource) for r in rows] == [("bob", "budget:total/3600s")]


def test_counts_survive_a_restart(make_app: Callable[..., Flask], people: dict[str, Person]) -> None:
    budgets = [rule(alert=6)]
    first = make_app(REQUEST_BUDGETS=budgets)
    client = logged_in(first, people["alice"])
    for _ in range(5):
        get(client, "/")
    first.extensions["strongroom"].engine.dispose()
    second = make_app(REQUEST_BUDGETS=budgets)  # a restarted worker
    client = logged_in(second, people["alice"])
    get(client, "/")
    assert count(second, Event.BUDGET_ALERT) == 1


def test_two_workers_at_once_cross_exactly_once_and_refuse_exactly_above_the_limit(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    budgets = [rule(alert=20, limit=30), rule(scope="total", alert=25, limit=None)]
    workers = [make_app(REQUEST_BUDGETS=budgets), make_app(REQUEST_BUDGETS=budgets)]
    clients = [logged_in(w, people["alice"]) for w in workers for _ in range(2)]
    statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients))
    errors: list[BaseException] = []

    def hammer(client: FlaskClient) -> None:
        try:
            barrier.wait()
            for _ in range(10):
                status = get(client, "/").status_code
                with lock:
                    statuses.append(status)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(statuses) == [200] * 30 + [429] * 10
    app = workers[0]
    assert count(app, Event.BUDGET_ALERT) == 2  # employee/3600s at 20, total/3600s at 25
    assert count(app, Event.BUDGET_LIMIT_REACHED) == 1
    assert len(audit_rows(app, Event.BUDGET_REFUSED)) == 10


def test_rule_names_are_what_the_audit_shows() -> None:
    assert Rule("total", 86400, 10, None).name == "total/86400s"
    assert Rule("employee", 3600, 10, None).key(7) == "user:7"


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM request_counters",
        "TRUNCATE TABLE request_counters",
        "DROP TABLE request_counters",
        "DELETE FROM outbox",
        "TRUNCATE TABLE outbox",
    ],
)
def test_mariadb_grants_refuse_deleting_counters_and_events(maria_backend: Any, statement: str) -> None:
    """Least privilege: counters are reset in place and events marked sent, never deleted."""
    import pymysql

    conn = pymysql.connect(
        unix_socket=str(maria_backend.server.socket),
        user="strongroom",
        password=maria_backend.password,
        database="strongroom",
    )
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute(statement)
        assert refused.value.args[0] == 1142
    finally:
        conn.close()


def test_an_employee_refused_by_their_own_limit_does_not_spend_the_total(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(REQUEST_BUDGETS=[rule(alert=3, limit=3), rule(scope="total", alert=5, limit=5)])
    alice, bob = logged_in(app, people["alice"]), logged_in(app, people["bob"])
    assert [get(alice, "/").status_code for _ in range(30)] == [200] * 3 + [429] * 27
    assert [get(bob, "/").status_code for _ in range(2)] == [200, 200]  # the total is at exactly 5
    refused = get(bob, "/")
    assert refused.status_code == 429
    assert "overall request budget is used up" in refused.text
    assert count(app, Event.BUDGET_LIMIT_REACHED) == 2  # alice's own, then the total


def test_a_colleague_is_served_while_one_employee_hammers_while_refused(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    """The hostile case under concurrency: two workers, alice hammering from three clients far past
    her own limit, bob's requests in between. Alice can only ever spend her own limit of the total,
    so bob gets exactly the rest, whatever the interleaving."""
    budgets = [rule(alert=5, limit=5), rule(scope="total", alert=8, limit=8)]
    workers = [make_app(REQUEST_BUDGETS=budgets), make_app(REQUEST_BUDGETS=budgets)]
    hammers = [logged_in(workers[i % 2], people["alice"]) for i in range(3)]
    bob = logged_in(workers[1], people["bob"])
    statuses: list[int] = []
    bob_statuses: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(hammers) + 1)
    errors: list[BaseException] = []

    def hammer(client: FlaskClient) -> None:
        try:
            barrier.wait()
            for _ in range(15):
                status = get(client, "/").status_code
                with lock:
                    statuses.append(status)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def colleague() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                bob_statuses.append(get(bob, "/").status_code)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(c,)) for c in hammers]
    threads.append(threading.Thread(target=colleague))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted(statuses) == [200] * 5 + [429] * 40
    assert bob_statuses == [200, 200, 200]
    assert get(bob, "/").status_code == 429  # and the total holds exactly: 5 + 3 = 8
    app = workers[0]
    assert len(audit_rows(app, Event.BUDGET_REFUSED)) == 41


def test_counting_is_one_statement_that_returns_the_counts_on_both_databases(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    """SQLite and MariaDB (10.5+) return the new counts from the upsert itself: one statement and
    one round trip per request, not an upsert and a read-back. The counts are the stored ones."""
    app = make_app()
    engine = app.extensions["strongroom"].engine
    rules = parse_rules([rule(alert=100, limit=100), rule(scope="total", alert=100, limit=None)])
    now = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    seen: list[str] = []
    with engine.begin() as conn:
        expected = "sqlite" if db_url.startswith("sqlite") else "mariadb"
        assert budgets._dialect_key(conn.dialect) == expected
        sa_event.listen(conn, "before_cursor_execute", lambda *args: seen.append(args[2]))
        budgets.charge(conn, rules, user_id=7, now=now)
        counts = budgets.charge(conn, rules, user_id=7, now=now)
    assert len(seen) == 2
    assert all(statement.lstrip().upper().startswith("INSERT") for statement in seen)
    assert [c.n for c in counts] == [2, 2]
    t = budgets.request_counters
    with engine.connect() as conn:
        stored = sorted((row.scope, row.n) for row in conn.execute(sa.select(t.c.scope, t.c.n)))
    assert stored == [("total", 2), ("user:7", 2)]
