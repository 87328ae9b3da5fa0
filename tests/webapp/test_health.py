"""`flask --app webapp health` checks what requests need (an audit append that rolls back, keyd
answering), and the pages and alerts of a database that refuses writes: really read-only (MariaDB's
read_only, SQLite's query_only), really out of disk (SQLite on a full tmpfs)."""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from keyd.errors import Unavailable
from tests.support import component_missing, need_binary
from tests.webapp.conftest import FakeVault, Person, client_for, get, login
from tests.webapp.helpers import mariadb_read_only, refuse_audit_inserts
from webapp.audit import service as audit_service
from webapp.events import Event
from webapp.mail.spool import Spool


def health(app: Flask) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["health"])
    return result.exit_code, result.output


def _audit_state(app: Flask) -> tuple[int, Any]:
    with app.extensions["strongroom"].engine.connect() as conn:
        n = conn.exec_driver_sql("SELECT COUNT(*) FROM audit_log").scalar()
        head = tuple(conn.exec_driver_sql("SELECT seq, hash FROM audit_head").one())
    return int(n or 0), head


@contextlib.contextmanager
def read_only(app: Flask, db_url: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """MariaDB: the server's read_only (the app's user has no privilege past it). SQLite: every
    connection of the app's engine with query_only on (SQLITE_READONLY for any write)."""
    engine = app.extensions["strongroom"].engine
    if db_url.startswith("sqlite"):

        def on(dbapi: Any, _record: Any) -> None:
            dbapi.execute("PRAGMA query_only = ON")

        engine.dispose()
        sa.event.listen(engine, "connect", on)
        try:
            yield
        finally:
            sa.event.remove(engine, "connect", on)
            engine.dispose()
        return
    with mariadb_read_only(request):
        yield


def test_healthy_says_ok_and_leaves_no_trace(app: Flask, people: dict[str, Person]) -> None:
    before = _audit_state(app)
    assert health(app) == (0, "ok\n")
    assert _audit_state(app) == before  # the probe's record and head move were rolled back
    with app.extensions["strongroom"].engine.connect() as conn:
        assert audit_service.verify(conn).ok


def test_a_read_only_database_is_unhealthy_and_says_so(
    app: Flask, people: dict[str, Person], db_url: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    client = client_for(app, people["alice"].cert)
    assert login(client, "alice", people["alice"].password).status_code == 302
    with read_only(app, db_url, request):
        code, output = health(app)
        assert code == 1
        assert "database refuses writes (read-only)" in output
        r = get(client, "/")
        assert r.status_code == 503
        assert "accepts no changes (read-only)" in r.text
        assert "cannot be reached" not in r.text
        assert "1290" not in r.text
        assert "readonly database" not in r.text
    # The alert could not go into the read-only database: it went to the spool.
    (entry,) = Spool(Path(app.instance_path) / "alert-spool").collect()
    assert (entry.event, entry.count) == (Event.DB_WRITE_REFUSED, 1)
    assert health(app) == (0, "ok\n")


def test_a_refused_audit_append_is_unhealthy(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    refuse_audit_inserts(owner_engine)
    code, output = health(app)
    assert code == 1
    # SQLite's RAISE(ABORT) is an IntegrityError; MariaDB's SIGNAL an OperationalError (1644), which
    # the app, too, cannot tell from an outage.
    assert re.fullmatch(r"Error: database (write failed|unavailable) \(\w+\)\n", output), output


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda v: setattr(v, "error", Unavailable("down")), "keyd unavailable (Unavailable)"),
        (lambda v: setattr(v, "sealed", True), "vault is sealed"),
    ],
)
def test_keyd_is_part_of_health(
    app: Flask, vault: FakeVault, setup: Callable[[FakeVault], None], expected: str
) -> None:
    setup(vault)
    code, output = health(app)
    assert code == 1
    assert expected in output


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_stopped_database_is_unhealthy(app: Flask, db_url: str, request: pytest.FixtureRequest) -> None:
    if db_url.startswith("sqlite"):
        return  # an SQLite file cannot be "down"; the outage tests (test_mail_spool.py) cover it
    server = request.getfixturevalue("maria_backend").server
    server.stop()
    try:
        code, output = health(app)
    finally:
        server.start()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    assert code == 1
    assert "database unavailable" in output


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    res = subprocess.run(
        [need_binary("mount"), "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if res.returncode != 0:
        component_missing("mounting a tmpfs needs root with CAP_SYS_ADMIN (a full disk for real)")
    try:
        yield path
    finally:
        subprocess.run([need_binary("umount"), "-l", str(path)], check=False)


def test_a_full_disk_is_named_on_the_page_in_the_alert_and_by_health(
    app: Flask, make_app: Callable[..., Flask], people: dict[str, Person], db_url: str, tmp_path: Path
) -> None:
    if not db_url.startswith("sqlite"):
        return  # SQLite on a full filesystem; a full MariaDB data dir would need a second server
    source = Path(db_url.removeprefix("sqlite:///"))
    app.extensions["strongroom"].engine.dispose()  # the setup's WAL checkpointed into the file
    with small_tmpfs(tmp_path / "disk", "2m") as disk:
        shutil.copyfile(source, disk / "strongroom.db")
        small = make_app(DATABASE_URL=f"sqlite:///{disk / 'strongroom.db'}")
        client = client_for(small, people["alice"].cert)
        assert login(client, "alice", people["alice"].password).status_code == 302
        small.extensions["strongroom"].engine.dispose()  # the WAL checkpointed into the file
        fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                while True:  # until the disk is full (ENOSPC)
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        statuses = []
        for _ in range(50):  # the first writes may still fit into free pages of the file
            r = get(client, "/")
            statuses.append(r.status_code)
            if r.status_code == 503:
                break
        assert statuses[-1] == 503, statuses
        assert "its disk is full" in r.text
        assert "cannot be reached" not in r.text
        code, output = health(small)
        assert code == 1
        assert "database refuses writes (disk full)" in output
        small.extensions["strongroom"].engine.dispose()
        os.unlink(disk / "filler")
        again = get(client, "/")
        assert again.status_code == 200, statuses  # space again: served again
        assert health(small) == (0, "ok\n")
        small.extensions["strongroom"].engine.dispose()
    (entry,) = Spool(Path(small.instance_path) / "alert-spool").collect()
    assert entry.event == Event.DB_WRITE_REFUSED
