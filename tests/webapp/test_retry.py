"""Requests the database rolled back on its own are run again inside the app (webapp/retry.py).

On a real MariaDB: a request made the victim of a real deadlock (error 1213) succeeds for the
employee and leaves exactly the records one run leaves; errors the server sends from a trigger show
which codes are re-run, how often, and which are an outage at once. The middleware's handling of the
body and of the answer is shown around a plain WSGI app."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.webapp.conftest import (
    MariaBackend,
    Person,
    client_for,
    csrf_token,
    get,
    login,
    post,
    session_cookie,
)
from tests.webapp.helpers import audit_rows
from webapp.audit import service as audit
from webapp.auth.sessions import sid_hash
from webapp.db.engine import make_engine
from webapp.events import Event
from webapp.records.tables import customer_records
from webapp.retry import RETRYABLE, Retry, discard, retryable_code

MARIADB = pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)


def logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def retries(app: Flask) -> tuple[int, int]:
    counter: Retry = app.extensions["strongroom.retry"]
    return counter.retried, counter.gave_up


def records(app: Flask) -> int:
    with app.extensions["strongroom"].engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(customer_records)).scalar_one())


def chain_verifies(app: Flask) -> bool:
    with app.extensions["strongroom"].engine.connect() as conn:
        return audit.verify(conn).ok


@pytest.fixture
def root(maria_backend: MariaBackend) -> Iterator[pymysql.connections.Connection]:  # type: ignore[type-arg]
    conn = maria_backend.server.root(maria_backend.database)
    with conn.cursor() as cur:
        # The test's own database on the server, beside the app's.
        cur.execute("CREATE DATABASE IF NOT EXISTS retry_scratch")
        cur.execute("CREATE TABLE IF NOT EXISTS retry_scratch.weight (n INT) ENGINE=InnoDB")
        # Aria, not InnoDB: a row deleted by the trigger below stays deleted when the request rolls back.
        cur.execute("CREATE TABLE IF NOT EXISTS retry_scratch.failures (n INT) ENGINE=Aria")
        cur.execute("DELETE FROM retry_scratch.failures")
    yield conn
    with conn.cursor() as cur:
        cur.execute("DROP TRIGGER IF EXISTS audit_fails")
    conn.close()


WAITING = "SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"


def other_writer(backend: MariaBackend) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    """A second writer on the same database, as another web node would be; its own transaction."""
    conn = backend.server.root(backend.database)
    conn.autocommit(False)
    return conn


def wait_for_lock_wait(root: pymysql.connections.Connection) -> int:  # type: ignore[type-arg]
    """The connection id of the transaction that waits for a row lock, once there is one."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with root.cursor() as cur:
            cur.execute(
                "SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'"
            )
            row = cur.fetchone()
        if row is not None:
            return int(row[0])
        time.sleep(0.2)  # InnoDB refreshes that table only when it was not read for 0.1 s
    raise AssertionError("the request never waited for the audit chain's head")


def in_thread(task: Callable[[], TestResponse]) -> Callable[[], TestResponse]:
    """Start `task` now; the returned function waits for it and gives its answer."""
    done: list[TestResponse | BaseException] = []

    def run() -> None:
        try:
            done.append(task())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting test below
            done.append(exc)

    thread = threading.Thread(target=run)
    thread.start()

    def result() -> TestResponse:
        thread.join(timeout=60)
        assert done, "the request did not finish"
        if isinstance(done[0], BaseException):
            raise done[0]
        return done[0]

    return result


@MARIADB
def test_the_victim_of_a_real_deadlock_is_run_again_and_the_employee_never_sees_it(
    app: Flask,
    people: dict[str, Person],
    root: pymysql.connections.Connection,  # type: ignore[type-arg]
    maria_backend: MariaBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another writer (as a second web node would) holds the audit chain's head while the request,
    which has written its record and touched its session, waits for it; the other writer then wants
    the request's session row. InnoDB breaks the cycle by rolling back the lighter transaction, the
    request's (error 1213, the same answer as a Galera certification conflict). The employee gets
    the record added, once, and the audit chain has one run's records and verifies."""
    client = logged_in(app, people["alice"])
    token = csrf_token(get(client, "/records/").text)
    sid = session_cookie(client)
    assert sid is not None
    added_before = len(audit_rows(app, Event.RECORD_ADDED))

    other = other_writer(maria_backend)
    try:
        with other.cursor() as cur:
            # Heavier than the request, so that InnoDB picks the request as the deadlock's victim.
            cur.executemany("INSERT INTO retry_scratch.weight VALUES (%s)", [(i,) for i in range(200)])
            cur.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        answer = in_thread(
            lambda: post(client, "/records/", data={"csrf_token": token, "crm_ref": "C1234567"})
        )
        wait_for_lock_wait(root)
        with caplog.at_level(logging.WARNING, logger="strongroom.retry"), other.cursor() as cur:
            cur.execute("UPDATE sessions SET data = data WHERE id_hash = %s", (sid_hash(sid),))  # the cycle
            other.rollback()  # the other writer gives way: the re-run goes through
            response = answer()
    finally:
        other.close()

    assert response.status_code == 302, response.text
    assert response.headers["Location"].startswith("/records/")
    assert retries(app) == (1, 0)
    assert records(app) == 1
    assert len(audit_rows(app, Event.RECORD_ADDED)) == added_before + 1
    assert audit_rows(app, Event.DB_UNAVAILABLE) == []
    assert chain_verifies(app)
    [line] = [r.getMessage() for r in caplog.records if r.name == "strongroom.retry"]
    assert line == (
        "request run again after MariaDB error 1213 (deadlock or Galera certification conflict), "
        "attempt 2 of 3: POST /records/"
    )
    for leak in ("C1234567", sid, sid_hash(sid), token, "SELECT", "INSERT", "UPDATE"):
        assert leak not in caplog.text


def fail_audit_inserts(root: pymysql.connections.Connection, code: int, times: int) -> None:  # type: ignore[type-arg]
    """The next `times` audit inserts fail with MariaDB error `code`, sent by the server itself."""
    sqlstate = "40001" if code == 1213 else "HY000"
    with root.cursor() as cur:
        cur.executemany("INSERT INTO retry_scratch.failures VALUES (%s)", [(i,) for i in range(times)])
        signal = (
            f"SIGNAL SQLSTATE '{sqlstate}' SET MYSQL_ERRNO = {code:d}, MESSAGE_TEXT = 'refused by the test'"
        )
        cur.execute(TRIGGER.replace("{signal}", signal))


TRIGGER = (
    "CREATE TRIGGER audit_fails BEFORE INSERT ON audit_log FOR EACH ROW "
    "BEGIN IF (SELECT COUNT(*) FROM retry_scratch.failures) > 0 THEN "
    "DELETE FROM retry_scratch.failures LIMIT 1; {signal}; END IF; END"
)
# (MariaDB error, how many attempts in a row fail, the employee's answer, (re-runs, gave up))
CODES = [
    pytest.param(1213, 1, 200, (1, 0), id="deadlock once: run again, served"),
    pytest.param(1213, 2, 200, (2, 0), id="deadlock twice: served by the third attempt"),
    pytest.param(1213, 3, 503, (2, 1), id="deadlock that persists: 503 after 3 attempts"),
    pytest.param(1047, 1, 200, (1, 0), id="Galera node not ready once: run again, served"),
    pytest.param(1047, 3, 503, (2, 1), id="Galera node not ready for long: 503 after 3 attempts"),
    pytest.param(2013, 1, 503, (0, 0), id="lost connection: the commit may have happened, 503 at once"),
    pytest.param(2006, 1, 503, (0, 0), id="server gone away: 503 at once"),
    pytest.param(1927, 1, 503, (0, 0), id="connection killed: 503 at once"),
    pytest.param(1205, 1, 503, (0, 0), id="lock wait timeout: only its statement rolled back, 503 at once"),
    pytest.param(1644, 1, 503, (0, 0), id="a trigger's own refusal: 503 at once"),
]


@MARIADB
@pytest.mark.parametrize(("code", "fails", "status", "counted"), CODES)
def test_which_database_errors_are_run_again_and_how_often(
    app: Flask,
    people: dict[str, Person],
    root: pymysql.connections.Connection,  # type: ignore[type-arg]
    code: int,
    fails: int,
    status: int,
    counted: tuple[int, int],
) -> None:
    client = logged_in(app, people["alice"])
    views_before = len(audit_rows(app, Event.PAGE_VIEW))
    fail_audit_inserts(root, code, fails)
    response = get(client, "/")
    assert response.status_code == status
    assert retries(app) == counted
    if status == 200:
        assert len(audit_rows(app, Event.PAGE_VIEW)) == views_before + 1
        assert audit_rows(app, Event.DB_UNAVAILABLE) == []
    else:
        assert "database cannot be reached" in response.text
        assert len(audit_rows(app, Event.PAGE_VIEW)) == views_before
        assert len(audit_rows(app, Event.DB_UNAVAILABLE)) == 1  # the last attempt's failure, once
    assert chain_verifies(app)
    assert get(client, "/").status_code == 200  # nothing left behind: the next request is served


@MARIADB
def test_a_connection_killed_mid_request_is_not_run_again(
    app: Flask,
    people: dict[str, Person],
    root: pymysql.connections.Connection,  # type: ignore[type-arg]
    maria_backend: MariaBackend,
) -> None:
    """The database connection dies while the request waits to write: whether a COMMIT went through
    cannot be known in general, so the employee gets the "try again" page and decides."""
    client = logged_in(app, people["alice"])
    views_before = len(audit_rows(app, Event.PAGE_VIEW))
    other = other_writer(maria_backend)
    try:
        with other.cursor() as cur:
            cur.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
        answer = in_thread(lambda: get(client, "/"))
        victim = wait_for_lock_wait(root)
        with root.cursor() as cur:
            cur.execute(f"KILL CONNECTION {victim}")
        other.rollback()
        response = answer()
    finally:
        other.close()
    assert response.status_code == 503
    assert "database cannot be reached" in response.text
    assert retries(app) == (0, 0)
    assert len(audit_rows(app, Event.PAGE_VIEW)) == views_before
    assert chain_verifies(app)
    assert get(client, "/").status_code == 200


def test_a_galera_refusal_drops_the_connection_pool(maria_backend: MariaBackend) -> None:
    """A node out of the cluster still answers pings: its refusal (1047) must drop the pooled
    connections, or every request would be sent to it again. A deadlock (1213) keeps them."""
    engine = make_engine(maria_backend.root_url)
    try:
        for code, dropped in ((1047, True), (1213, False)):
            with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as caught:
                conn.exec_driver_sql(f"SIGNAL SQLSTATE 'HY000' SET MYSQL_ERRNO = {code}")
            assert caught.value.connection_invalidated is dropped
            assert "refused" not in str(caught.value.orig)
    finally:
        engine.dispose()


def test_the_retried_codes_are_those_after_which_the_server_rolled_back_the_whole_transaction() -> None:
    assert sorted(RETRYABLE) == [1047, 1213]


def _sqlite_busy() -> BaseException:
    import sqlite3

    return sa.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))


# Errors that are never taken for a rolled-back transaction: (the error, why not).
NOT_RETRYABLE = [
    pytest.param(lambda: RuntimeError(1213), id="not a database error, whatever its args"),
    pytest.param(_sqlite_busy, id="SQLite busy: its text, no code"),
    pytest.param(
        lambda: sa.exc.OperationalError("x", {}, pymysql.err.OperationalError("1213", "x")), id="code as text"
    ),
    pytest.param(lambda: sa.exc.OperationalError("x", {}, pymysql.err.OperationalError()), id="no args"),
    pytest.param(
        lambda: sa.exc.IntegrityError("x", {}, pymysql.err.IntegrityError(1062, "x")), id="duplicate key"
    ),
]


@pytest.mark.parametrize("make", NOT_RETRYABLE)
def test_errors_that_are_not_a_rolled_back_transaction(make: Callable[[], BaseException]) -> None:
    assert retryable_code(make()) is None
    assert discard({"strongroom.retry": None}, make()) is False


# --- the middleware itself, around a plain WSGI app -----------------------------------------------


class Recorder:
    """A WSGI app that reads its body, and fails with `code` on its first `fails` runs the way the
    Flask app does (through `discard`, as failures.handle calls it)."""

    def __init__(self, *, fails: int = 0, code: int = 1213) -> None:
        self.fails = fails
        self.code = code
        self.bodies: list[bytes] = []
        self.inputs: list[Any] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        self.inputs.append(environ["wsgi.input"])
        self.bodies.append(environ["wsgi.input"].read())
        if len(self.bodies) <= self.fails:
            exc = sa.exc.OperationalError(
                "UPDATE secret", {"p": "param"}, pymysql.err.OperationalError(self.code, "x")
            )
            if discard(environ, exc):
                start_response("503 Service Unavailable", [])
                return [b"thrown away"]
            start_response("503 Service Unavailable", [])
            return [b"try again"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]


def call(app: Any, body: bytes = b"", **environ: Any) -> tuple[list[str], bytes]:
    statuses: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]], _exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda _data: None

    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/records/",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        **environ,
    }
    return statuses, b"".join(app(env, start_response))


def no_sleep(_seconds: float) -> None:
    return None


def test_the_body_is_given_whole_to_every_attempt() -> None:
    inner = Recorder(fails=2)
    statuses, answer = call(Retry(inner, max_body=100, sleep=no_sleep), b"csrf_token=t&crm_ref=C1")
    assert (statuses, answer) == (["200 OK"], b"done")  # the thrown-away answers never started
    assert inner.bodies == [b"csrf_token=t&crm_ref=C1"] * 3


def test_the_pauses_between_attempts_are_short_jittered_and_growing() -> None:
    pauses: list[float] = []
    call(Retry(Recorder(fails=5), max_body=100, attempts=3, backoff=0.05, sleep=pauses.append))
    assert len(pauses) == 2
    assert 0.025 <= pauses[0] <= 0.05
    assert 0.05 <= pauses[1] <= 0.1


@pytest.mark.parametrize("attempts", [1, 2, 4])
def test_the_attempts_are_bounded(attempts: int) -> None:
    inner = Recorder(fails=10)
    statuses, answer = call(Retry(inner, max_body=100, attempts=attempts, sleep=no_sleep))
    assert (statuses, answer) == (["503 Service Unavailable"], b"try again")
    assert len(inner.bodies) == attempts


# Bodies that cannot be kept: the request runs once, with the server's own input stream.
UNKEPT = [
    pytest.param({"CONTENT_LENGTH": "101"}, id="over the limit"),
    pytest.param({"CONTENT_LENGTH": "99999999999999999999"}, id="absurdly over the limit"),
    pytest.param({"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"}, id="chunked: unknown length"),
    pytest.param({"CONTENT_LENGTH": "-1"}, id="negative length"),
    pytest.param({"CONTENT_LENGTH": "1e2"}, id="not a whole number"),
    pytest.param({"CONTENT_LENGTH": " 10"}, id="spaces"),
    pytest.param({"CONTENT_LENGTH": "\uff11\uff10"}, id="fullwidth digits"),
    pytest.param({"CONTENT_LENGTH": "\u00b9"}, id="superscript digit"),
]


@pytest.mark.parametrize("environ", UNKEPT)
def test_a_body_that_cannot_be_kept_is_not_read_and_not_retried(environ: dict[str, str]) -> None:
    inner = Recorder(fails=1)
    server_input = io.BytesIO(b"x" * 101)
    statuses, answer = call(
        Retry(inner, max_body=100, sleep=no_sleep), **environ, **{"wsgi.input": server_input}
    )
    assert (statuses, answer) == (["503 Service Unavailable"], b"try again")
    assert inner.inputs == [server_input]  # the server's own stream, not a copy


def test_a_short_body_is_handed_on_short() -> None:
    """The client sent less than it announced: the app sees what came and refuses it, as before."""
    inner = Recorder()
    call(Retry(inner, max_body=100), CONTENT_LENGTH="10", **{"wsgi.input": io.BytesIO(b"abc")})
    assert inner.bodies == [b"abc"]


def test_an_answer_is_passed_on_untouched_and_still_streams() -> None:
    produced: list[str] = []

    def streaming(_environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        start_response("200 OK", [])
        for part in ("a", "b"):
            produced.append(part)
            yield part.encode()

    started: list[str] = []
    retry = Retry(streaming, max_body=100)
    result = retry(
        {"REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()},
        lambda status, _h, _e=None: started.append(status),
    )
    assert (started, produced) == ([], [])  # nothing read ahead
    assert next(iter(result)) == b"a"
    assert (started, produced) == (["200 OK"], ["a"])  # started by the generator, straight through


def test_a_thrown_away_answer_is_closed() -> None:
    closed: list[int] = []

    class Answer(list[bytes]):
        def close(self) -> None:
            closed.append(1)

    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        runs.append(1)
        if len(runs) == 1:
            discard(environ, sa.exc.OperationalError("x", {}, pymysql.err.OperationalError(1213, "x")))
        start_response("200 OK", [])
        return Answer([b"ok"])

    call(Retry(app, max_body=10, sleep=no_sleep))
    assert closed == [1]  # the first; the second is the server's to close


def test_discard_says_no_outside_the_middleware() -> None:
    exc = sa.exc.OperationalError("x", {}, pymysql.err.OperationalError(1213, "x"))
    assert discard({}, exc) is False


@pytest.mark.parametrize(
    ("attempts", "max_body", "backoff"), [(0, 10, 0.1), (3, -1, 0.1), (3, 10, -0.1)], ids=str
)
def test_nonsense_settings_are_refused(attempts: int, max_body: int, backoff: float) -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        Retry(Recorder(), max_body=max_body, attempts=attempts, backoff=backoff)


@MARIADB
def test_a_body_over_the_limit_is_still_refused_by_the_app(app: Flask, people: dict[str, Person]) -> None:
    client = logged_in(app, people["alice"])
    response = post(client, "/records/", data={"crm_ref": "C" * (70 * 1024)})
    assert response.status_code == 400
    assert "too large" in response.text
    assert retries(app) == (0, 0)
