"""Pruning the outbox: sent rows past their retention are deleted by `flask --app webapp mail prune`,
pending rows never; on MariaDB it runs as a user that may delete outbox rows and do nothing else."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pymysql
import pytest
import sqlalchemy as sa
from flask import Flask

from tests.webapp.conftest import ROOT
from tests.webapp.helpers import audit_rows
from webapp import outbox
from webapp.clock import FakeClock
from webapp.db.tables import outbox as outbox_table
from webapp.events import Event

GRANTS_PRUNE = ROOT / "webapp" / "db" / "grants-prune.sql"
PRUNE_USER = "strongroom_prune"


@pytest.fixture
def prune_url(db_url: str, request: pytest.FixtureRequest) -> str | None:
    """MariaDB: the prune user as db/grants-prune.sql sets it up (through the real client)."""
    if db_url.startswith("sqlite"):
        return None
    backend = request.getfixturevalue("maria_backend")
    password = secrets.token_urlsafe(18)
    conn = backend.server.root()
    with conn.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{PRUNE_USER}'@'localhost'")
        cur.execute(f"CREATE USER '{PRUNE_USER}'@'localhost' IDENTIFIED BY %s", (password,))
    conn.close()
    backend.server.client(backend.database, GRANTS_PRUNE.read_text())
    url: str = backend.server.url(PRUNE_USER, password, backend.database)
    return url


def _plant(app: Flask, clock: FakeClock) -> None:
    """Four rows: sent 40 days ago, sent 31 days ago, sent 29 days ago, pending for 60 days."""
    engine = app.extensions["strongroom"].engine
    now = clock.now()
    for name, age, sent in [
        ("ops.port_new", 40, True),
        ("ops.log_gap", 31, True),
        ("ops.log_new", 29, True),
        ("ops.disk_full", 60, False),
    ]:
        with engine.begin() as conn:
            outbox.enqueue(conn, name, now=now - timedelta(days=age, minutes=1))
            (row,) = [r for r in outbox.pending(conn) if r.event == name]
            if sent:
                outbox.mark_mailed(conn, [row], now=now - timedelta(days=age))


def _names(app: Flask) -> list[str]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return [str(r.event) for r in conn.execute(sa.select(outbox_table).order_by(outbox_table.c.id))]


def test_prune_deletes_sent_rows_past_the_retention_only(
    make_app: Callable[..., Flask], clock: FakeClock, prune_url: str | None
) -> None:
    app = make_app(OUTBOX_PRUNE_DATABASE_URL=prune_url)
    _plant(app, clock)
    result = app.test_cli_runner().invoke(args=["mail", "prune"])
    assert result.exit_code == 0, (result.output, result.stderr)
    assert "pruned 2 sent row(s) older than 30 day(s)" in result.output
    assert _names(app) == ["ops.log_new", "ops.disk_full"]  # recent, and pending however old
    (pruned,) = audit_rows(app, Event.OUTBOX_PRUNED)
    assert (pruned.actor, pruned.detail) == ("outbox-prune", "deleted=2 days=30")
    again = app.test_cli_runner().invoke(args=["mail", "prune"])
    assert "pruned 0 sent row(s)" in again.output


def test_the_retention_is_a_setting(
    make_app: Callable[..., Flask], clock: FakeClock, prune_url: str | None
) -> None:
    app = make_app(OUTBOX_RETENTION_DAYS=1, OUTBOX_PRUNE_DATABASE_URL=prune_url)
    _plant(app, clock)
    assert app.test_cli_runner().invoke(args=["mail", "prune"]).exit_code == 0
    assert _names(app) == ["ops.disk_full"]


@pytest.mark.parametrize("value", [0, -1, 3651, "30", 1.5, True, None])
def test_a_bad_retention_is_refused(make_app: Callable[..., Flask], clock: FakeClock, value: Any) -> None:
    app = make_app(OUTBOX_RETENTION_DAYS=value)
    _plant(app, clock)
    result = app.test_cli_runner().invoke(args=["mail", "prune"])
    assert result.exit_code == 78
    assert "OUTBOX_RETENTION_DAYS" in result.output
    assert len(_names(app)) == 4


def test_the_web_apps_own_user_cannot_prune(
    make_app: Callable[..., Flask], clock: FakeClock, db_url: str
) -> None:
    if db_url.startswith("sqlite"):
        return  # no database users on SQLite; the MariaDB run covers this
    app = make_app()
    _plant(app, clock)
    result = app.test_cli_runner().invoke(args=["mail", "prune"])
    assert result.exit_code == 1
    assert "nothing pruned" in result.output
    assert len(_names(app)) == 4


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE outbox SET sent_at = NULL",
        "INSERT INTO outbox (created_at, event, actor, ip, resource, detail, attempts) "
        "VALUES (NOW(), 'ops.x', '-', '-', '-', '-', 0)",
        "SELECT detail FROM outbox",
        "SELECT * FROM audit_log",
        "DELETE FROM audit_log",
        "DELETE FROM sessions",
        "TRUNCATE TABLE outbox",
        "DROP TABLE outbox",
    ],
)
def test_the_prune_user_can_do_nothing_else(maria_backend: Any, statement: str) -> None:
    password = secrets.token_urlsafe(18)
    conn = maria_backend.server.root()
    with conn.cursor() as cur:
        cur.execute(f"DROP USER IF EXISTS '{PRUNE_USER}'@'localhost'")
        cur.execute(f"CREATE USER '{PRUNE_USER}'@'localhost' IDENTIFIED BY %s", (password,))
    conn.close()
    maria_backend.server.client(maria_backend.database, GRANTS_PRUNE.read_text())
    conn = pymysql.connect(
        unix_socket=str(maria_backend.server.socket),
        user=PRUNE_USER,
        password=password,
        database="strongroom",
    )
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute(statement)
        assert refused.value.args[0] in (1142, 1143)  # table / column command denied
    finally:
        conn.close()
