"""The audit trail: hash chain verification, tampering, concurrency, failure blocking (the pages that
read it: test_views.py, test_activity.py, test_export.py)."""

from __future__ import annotations

import threading
from datetime import datetime

import pymysql
import pytest
import sqlalchemy as sa
from flask import Flask

from tests.webapp.conftest import MariaBackend, Person, client_for, csrf_token, get, login, post
from tests.webapp.helpers import audit_rows, live_sessions, refuse_audit_inserts, user_row
from webapp.audit import service
from webapp.db.tables import audit_log
from webapp.events import Event
from webapp.unit import Origin


def _verify(app: Flask) -> tuple[int, str]:
    r = app.test_cli_runner().invoke(args=["audit", "verify"])
    return r.exit_code, r.output


def test_an_untouched_chain_verifies(app: Flask, people: dict[str, Person]) -> None:
    login(client_for(app, people["alice"].cert), "alice", people["alice"].password)
    code, output = _verify(app)
    assert code == 0, output
    assert "audit chain intact" in output
    assert audit_rows(app)[-1].event == Event.AUDIT_VERIFIED


def test_every_record_carries_who_when_what_where(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, people["alice"].cert)
    login(client, "alice", people["alice"].password)
    get(client, "/")
    view = audit_rows(app, Event.PAGE_VIEW)[-1]
    assert view.actor == "alice"
    assert view.ip == "10.0.0.5"
    assert view.cert_serial == format(people["alice"].cert.cert.serial_number, "x")
    assert view.resource == "/"
    assert view.outcome == "success"
    assert view.at.endswith("Z")


def test_an_edited_row_is_detected(app: Flask, people: dict[str, Person], owner_engine: sa.Engine) -> None:
    login(client_for(app, people["alice"].cert), "alice", "Wrong-Password-Attempt-99")
    failure = audit_rows(app, Event.LOGIN_FAILURE)[0]
    with owner_engine.begin() as conn:
        conn.execute(sa.update(audit_log).where(audit_log.c.seq == failure.seq).values(outcome="success"))
    code, output = _verify(app)
    assert code == 1
    assert f"record {failure.seq}: contents do not match its hash (edited)" in output


def test_a_deleted_row_is_detected(app: Flask, people: dict[str, Person], owner_engine: sa.Engine) -> None:
    client = client_for(app, people["alice"].cert)
    login(client, "alice", "Wrong-Password-Attempt-99")
    get(client, "/login")  # so that the deleted row is in the middle of the chain
    failure = audit_rows(app, Event.LOGIN_FAILURE)[0]
    with owner_engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq == failure.seq))
    code, output = _verify(app)
    assert code == 1
    assert f"records {failure.seq}..{failure.seq} are missing (deleted)" in output


def test_deleting_the_newest_rows_is_detected(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    last = audit_rows(app)[-1].seq
    with owner_engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq >= last - 1))
    code, output = _verify(app)
    assert code == 1
    assert "newest rows deleted" in output


def test_the_external_anchor_catches_a_rewound_head(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    last = audit_rows(app)[-1]
    with owner_engine.begin() as conn:
        conn.execute(sa.delete(audit_log).where(audit_log.c.seq == last.seq))
        prev = conn.execute(sa.select(audit_log.c.hash).where(audit_log.c.seq == last.seq - 1)).scalar_one()
        conn.execute(sa.text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": last.seq - 1, "h": prev})
    assert _verify(app)[0] == 0  # the chain alone cannot see it...
    r = app.test_cli_runner().invoke(args=["audit", "verify", "--expect-head", f"{last.seq}:{last.hash}"])
    assert r.exit_code == 1  # ...the head last seen in the remote syslog copy can


def test_a_failing_audit_write_blocks_the_login(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    assert page.status_code == 200
    refuse_audit_inserts(owner_engine)
    r = post(
        client,
        "/login",
        data={"csrf_token": csrf_token(page.text), "username": "alice", "password": alice.password},
    )
    assert r.status_code in (500, 503)
    assert live_sessions(app) == [] or all(s.user_id is None for s in live_sessions(app))
    with owner_engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_refuses")
    assert get(client, "/").status_code == 302  # not logged in


def test_a_failing_audit_write_blocks_an_admin_command(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    refuse_audit_inserts(owner_engine)
    r = app.test_cli_runner().invoke(args=["users", "disable", "alice"])
    assert r.exit_code == 1
    assert user_row(app, "alice").active


@pytest.mark.parametrize(("writers", "each"), [(8, 25)])
def test_concurrent_writers_keep_one_intact_chain(app: Flask, writers: int, each: int) -> None:
    svc = app.extensions["strongroom"]
    before = len(audit_rows(app))
    errors: list[BaseException] = []
    start = threading.Barrier(writers)

    def write(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                uow = svc.unit(Origin(actor=f"writer{n}", ip="127.0.0.1"))
                uow.record(Event.PAGE_VIEW, ok=True, resource=f"w{n}/{i}")
                if i % 5 == 0:  # and some multi-record transactions
                    uow.record(Event.ACCESS_DENIED, ok=False, resource=f"w{n}/{i}b")
                uow.commit()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    rows = audit_rows(app)
    assert len(rows) - before == writers * (each + each // 5)
    assert [r.seq for r in rows] == list(range(1, len(rows) + 1))
    with svc.engine.connect() as conn:
        assert service.verify(conn).ok


def test_mariadb_grants_refuse_changing_the_audit_log(maria_backend: MariaBackend) -> None:
    """Grants exist on MariaDB only (SQLite is a single-user file): the app's own DB user."""
    backend = maria_backend
    conn = pymysql.connect(
        unix_socket=str(backend.server.socket),
        user="strongroom",
        password=backend.password,
        database="strongroom",
    )
    try:
        with conn.cursor() as cur:
            for statement in (
                "UPDATE audit_log SET outcome = 'success'",
                "DELETE FROM audit_log",
                "TRUNCATE TABLE audit_log",
                "DROP TABLE audit_log",
                "UPDATE alembic_version SET version_num = 'x'",
                "DELETE FROM cards",
            ):
                with pytest.raises(pymysql.err.OperationalError) as refused:
                    cur.execute(statement)
                assert refused.value.args[0] == 1142, statement
            # A stored card number is written once: column-level grants (1143 = column access denied).
            for statement in (
                "UPDATE cards SET pan_ct = name_ct",
                "UPDATE cards SET last4 = '0000'",
                "UPDATE cards SET brand = 'visa'",
                "UPDATE cards SET record_id = record_id",
            ):
                with pytest.raises(pymysql.err.OperationalError) as refused:
                    cur.execute(statement)
                assert refused.value.args[0] == 1143, statement
            cur.execute("SHOW GRANTS")
            grants = [g[0] for g in cur.fetchall()]
        assert not any("ON `strongroom`.*" in g for g in grants), grants
        assert all("USAGE" in g for g in grants if "ON *.*" in g), grants
    finally:
        conn.close()


def test_a_row_forged_beyond_the_head_is_detected(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    last = audit_rows(app)[-1]
    forged = {c: getattr(last, c) for c in last._fields} | {"seq": last.seq + 1, "prev_hash": last.hash}
    with owner_engine.begin() as conn:
        conn.execute(sa.insert(audit_log).values(**forged))
    code, output = _verify(app)
    assert code == 1
    assert "beyond the chain head" in output


def test_verification_runs_beside_live_writers(app: Flask, people: dict[str, Person]) -> None:
    """No false alarm from rows appended while verifying, and (SQLite) no writer blocked by it."""
    from webapp.db.engine import READ_ONLY

    svc = app.extensions["strongroom"]
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            while not stop.is_set():
                uow = svc.unit(Origin(actor="w", ip="127.0.0.1"))
                uow.record(Event.PAGE_VIEW, ok=True, resource="/")
                uow.commit()
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            with svc.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                result = service.verify(conn, batch=7)
            assert result.ok, result.problems
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []


def test_append_refuses_a_naive_time(owner_engine: sa.Engine) -> None:
    # A naive datetime would be read as the host's local time: records an hour off on a CET server.
    entry = service.AuditEntry(event=Event.PAGE_VIEW, outcome="success")
    with owner_engine.begin() as conn, pytest.raises(ValueError, match="timezone-aware"):
        service.append(conn, [entry], now=datetime(2026, 11, 29, 10, 0))
