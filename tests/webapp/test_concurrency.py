"""Requests that run at the same time, on a real SQLite file and a real MariaDB: they read without the
write lock and write at their end (docs/webapp.md, "Transactions"). Real threads against several app
instances (one per gunicorn worker) and real processes; nothing is mocked."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.conftest import (
    CHEAP_ARGON2,
    SECRET,
    WEDNESDAY_10_UTC,
    Person,
    client_for,
    csrf_token,
    get,
    login,
    post,
)
from tests.webapp.fakes import FakeVault
from tests.webapp.helpers import audit_rows
from webapp import create_app
from webapp.audit import service as audit
from webapp.budgets import request_counters
from webapp.clock import FakeClock
from webapp.db.tables import sessions
from webapp.events import Event
from webapp.records.tables import customer_records


def logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def rule(scope: str = "employee", alert: int = 1, limit: int | None = None) -> dict[str, Any]:
    return {"scope": scope, "window": 3600, "alert": alert, "limit": limit}


def at_once(tasks: list[Callable[[], None]]) -> None:
    """Run every task in its own thread, all released together; any exception fails the test."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(tasks))

    def run(task: Callable[[], None]) -> None:
        try:
            barrier.wait()
            task()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []


def add_record(client: FlaskClient, crm: str) -> int:
    token = csrf_token(get(client, "/records/").text)
    return post(client, "/records/", data={"csrf_token": token, "crm_ref": crm}).status_code


def records(app: Flask) -> int:
    with app.extensions["strongroom"].engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(customer_records)).scalar_one())


def test_concurrent_writes_at_the_limit_exactly_the_limit_succeed(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    """Twelve record additions released at once against two workers, a limit of five left: every
    request starts under the limit, so the decision falls at the end, in the write phase. Exactly five
    are served and keep their record; the others are refused and leave no record and no
    `record.added` in the audit log."""
    budgets = [rule(alert=100, limit=100), rule(scope="total", alert=3, limit=None)]
    workers = [make_app(REQUEST_BUDGETS=budgets), make_app(REQUEST_BUDGETS=budgets)]
    clients = [logged_in(workers[i % 2], people["alice"]) for i in range(12)]
    tokens = [csrf_token(get(c, "/records/").text) for c in clients]  # 12 requests spent
    with workers[0].extensions["strongroom"].engine.begin() as conn:  # 5 left: n = 95
        conn.execute(sa.update(request_counters).where(request_counters.c.scope.like("user:%")).values(n=95))
    statuses: list[int] = []
    lock = threading.Lock()

    def add(i: int) -> Callable[[], None]:
        def task() -> None:
            status = post(
                clients[i], "/records/", data={"csrf_token": tokens[i], "crm_ref": f"C{i:07d}"}
            ).status_code
            with lock:
                statuses.append(status)

        return task

    at_once([add(i) for i in range(12)])
    assert sorted(statuses) == [302] * 5 + [429] * 7
    app = workers[0]
    assert records(app) == 5
    assert len(audit_rows(app, Event.RECORD_ADDED)) == 5
    assert len(audit_rows(app, Event.BUDGET_REFUSED)) == 7
    assert len(audit_rows(app, Event.BUDGET_LIMIT_REACHED)) == 1
    with app.extensions["strongroom"].engine.connect() as conn:
        assert audit.verify(conn).ok


def test_two_workers_eight_clients_mixed_load_nothing_locked_and_the_chain_verifies(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    """2 workers x 8 clients: masked views, searches, record additions, home pages, all at once. No
    request fails (no "database is locked", no deadlock), every addition is kept, the chain verifies."""
    workers = [make_app(), make_app()]
    owner = logged_in(workers[0], people["alice"])
    token = csrf_token(get(owner, "/records/").text)
    added = post(owner, "/records/", data={"csrf_token": token, "crm_ref": "C7654321"})
    record_id = int(added.headers["Location"].rsplit("/", 1)[1])
    names = ["alice", "bob"]
    clients = [logged_in(workers[i % 2], people[names[i % 2]]) for i in range(16)]
    failures: list[tuple[str, int]] = []
    lock = threading.Lock()

    def load(i: int) -> Callable[[], None]:
        def task() -> None:
            c = clients[i]
            for n in range(6):
                for path, status in (
                    (f"/records/{record_id}", get(c, f"/records/{record_id}").status_code),
                    (
                        "/records/?crm_ref=C7654321",
                        get(c, "/records/", query_string={"crm_ref": "C7654321"}).status_code,
                    ),
                    ("/", get(c, "/").status_code),
                ):
                    if status != 200:
                        with lock:
                            failures.append((path, status))
                if n % 3 == 0 and (status := add_record(c, f"C{i:03d}{n:04d}")) != 302:
                    with lock:
                        failures.append(("add", status))

        return task

    at_once([load(i) for i in range(16)])
    assert failures == []
    app = workers[0]
    assert records(app) == 1 + 16 * 2
    rows = audit_rows(app)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    with app.extensions["strongroom"].engine.connect() as conn:
        assert audit.verify(conn).ok


def _process_load(
    db_url: str, instance: str, cert_der: bytes, who: tuple[str, str], crm: str, out: Any
) -> None:
    """One gunicorn worker's worth of mixed load, in a process of its own (forked)."""
    try:
        from tests.webapp.conftest import FakeTlsSocket

        app = create_app(
            {
                "SECRET_KEY": SECRET,
                "DATABASE_URL": db_url,
                "INSTANCE_PATH": instance,
                "MODE": "production",
                **CHEAP_ARGON2,
            },
            clock=FakeClock(WEDNESDAY_10_UTC),
            vault=FakeVault(),
        )
        client = app.test_client()
        client.environ_base.update({"gunicorn.socket": FakeTlsSocket(cert_der), "REMOTE_ADDR": "10.0.0.5"})
        statuses = [login(client, *who).status_code]
        for n in range(8):
            statuses.append(get(client, "/").status_code)
            statuses.append(add_record(client, f"{crm}{n:05d}"))
            statuses.append(get(client, "/records/", query_string={"crm_ref": f"{crm}{n:05d}"}).status_code)
        app.extensions["strongroom"].engine.dispose()
        out.put(statuses)
    except BaseException as exc:  # noqa: BLE001 - the parent asserts on what comes back
        out.put(repr(exc))


def test_several_processes_keep_one_chain(
    app: Flask, people: dict[str, Person], db_url: str, tmp_path: Path
) -> None:
    app.extensions["strongroom"].engine.dispose()  # no connection crosses the fork
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_process_load,
            args=(
                db_url,
                str(tmp_path / "instance"),
                people[name].cert.der,
                (name, people[name].password),
                f"C{k}{i}",
                out,
            ),
        )
        for k, name in enumerate(("alice", "bob"))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for statuses in results:
        assert statuses == [302] + [200, 302, 200] * 8, statuses
    assert records(app) == 4 * 8
    with app.extensions["strongroom"].engine.connect() as conn:
        assert audit.verify(conn).ok
    rows = audit_rows(app)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))


def test_a_session_ended_while_its_request_runs_keeps_nothing_of_that_request(
    app: Flask, people: dict[str, Person]
) -> None:
    """The request read its session as live; an administrator ends it before the request's write
    phase. The session touch (in the write phase) finds it ended: the page is replaced by the way to
    the login, and the request's own records are gone but for the refusal."""
    engine = app.extensions["strongroom"].engine
    armed: list[bool] = []

    @app.after_request
    def _end_it_now(response: Any) -> Any:  # runs after the view, before the session is saved
        if armed:
            with engine.begin() as conn:  # another transaction, as an admin's would be
                conn.execute(
                    sa.update(sessions).where(sessions.c.ended_at.is_(None)).values(ended_at=sa.func.now())
                )
        return response

    client = logged_in(app, people["alice"])
    assert add_record(client, "C1111111") == 302
    before = len(audit_rows(app, Event.RECORD_VIEWED))
    armed.append(True)
    page = get(client, "/records/1")
    assert page.status_code == 302
    assert page.headers["Location"].endswith("/login")
    assert len(audit_rows(app, Event.RECORD_VIEWED)) == before
    (denied,) = [
        r for r in audit_rows(app, Event.ACCESS_DENIED) if r.detail == "session_ended_during_request"
    ]
    assert denied.actor == "alice"
