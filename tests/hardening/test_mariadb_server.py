"""hardening/mariadb/strongroom.cnf on a private MariaDB started with exactly that file (plus only the
private paths the suite needs), and the web app's user set up by webapp/db/grants.sql.

The suite's shared fixture (tests/fixtures/mariadb.py) writes skip-networking into its own file, so
it would prove nothing about ours: this module starts its own instance whose option file holds the
paths and `!include`s the rendered hardening file, nothing else.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pymysql  # type: ignore[import-untyped,unused-ignore]  # no stubs in the venv
import pytest

from hardening.mariadb import MariaDBConfigError, render
from tests.fixtures.mariadb import PrivateMariaDB
from tests.support import need_binary
from webapp.audit.service import FAILURE, AuditEntry, append, verify
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.events import Event

ROOT = Path(__file__).resolve().parents[2]
GRANTS = ROOT / "webapp" / "db" / "grants.sql"
APP_USER = "strongroom"
DATABASE = "strongroom"
OTHER = "otherapp"

# MariaDB error numbers: the refusal each hostile statement must get.
TABLEACCESS_DENIED = 1142  # ER_TABLEACCESS_DENIED_ERROR
DBACCESS_DENIED = 1044  # ER_DBACCESS_DENIED_ERROR
SPECIFIC_ACCESS_DENIED = 1227  # ER_SPECIFIC_ACCESS_DENIED_ERROR
LOCAL_INFILE_DISABLED = 4166  # ER_LOAD_INFILE_CAPABILITY_DISABLED: local-infile=0
OPTION_PREVENTS = 1290  # ER_OPTION_PREVENTS_STATEMENT: --secure-file-priv


class HardenedMariaDB(PrivateMariaDB):
    """PrivateMariaDB whose option file is ours: private paths, then hardening/mariadb/strongroom.cnf."""

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.files = self.base / "files"
        self.files.mkdir(mode=0o700)
        hardening = self.base / "strongroom.cnf"
        hardening.write_text(render(secure_file_priv=self.files))
        lines = [
            "[mariadbd]",
            f"datadir={self.datadir}",
            f"socket={self.socket}",
            f"pid-file={self.pidfile}",
            f"log-error={self.base / 'error.log'}",
            "innodb_buffer_pool_size=64M",
            "innodb_log_file_size=32M",
        ]
        if os.geteuid() == 0:
            lines.append("user=root")
        lines += ["[client]", f"socket={self.socket}", f"!include {hardening}"]
        self.defaults.write_text("\n".join(lines) + "\n")
        self.install_data()

    def install_data(self) -> None:
        subprocess.run(
            [
                self._install,
                f"--defaults-file={self.defaults}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HardenedMariaDB]:
    need_binary("mariadbd")
    need_binary("mariadb")
    db = HardenedMariaDB(tmp_path_factory.mktemp("mariadb-hardened"))
    db.install()
    db.start()
    try:
        yield db
    finally:
        db.stop()


@pytest.fixture(scope="module")
def app_password(server: HardenedMariaDB) -> str:
    """The app's database and user, exactly as the production docs set them up."""
    password = secrets.token_urlsafe(24)
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{APP_USER}'@'localhost' IDENTIFIED BY %s", (password,))
        cur.execute(f"CREATE DATABASE `{OTHER}`")
        cur.execute(f"CREATE TABLE `{OTHER}`.secrets (id INT PRIMARY KEY, v TEXT)")
        cur.execute(f"INSERT INTO `{OTHER}`.secrets VALUES (1, 'not for the vault app')")  # noqa: S608 - constant
    conn.close()
    owner = make_engine(
        f"mysql+pymysql://root@localhost/{DATABASE}?unix_socket={server.socket}&charset=utf8mb4"
    )
    migrate.upgrade(owner)  # the migrations also run under this server's strict sql-mode
    owner.dispose()
    server.client(DATABASE, GRANTS.read_text())
    return password


def _app(server: HardenedMariaDB, password: str, *, local_infile: bool = False) -> Any:
    return pymysql.connect(
        unix_socket=str(server.socket),
        user=APP_USER,
        password=password,
        database=DATABASE,
        autocommit=True,
        local_infile=local_infile,
    )


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    return [
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN or c.type == socket.SOCK_DGRAM
    ]


def test_no_tcp_listener(server: HardenedMariaDB) -> None:
    assert server.proc is not None
    assert tcp_listeners(server.proc.pid) == []
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute("SELECT @@skip_networking, @@port")
        assert cur.fetchone() == (1, 0)
    conn.close()


def test_the_listener_check_can_fail() -> None:
    """Control: the same check does see a listener (this test process's own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        assert ("127.0.0.1", s.getsockname()[1]) in tcp_listeners(os.getpid())


@pytest.mark.parametrize(
    ("variable", "expected"),
    [
        ("@@local_infile", 0),
        ("@@skip_name_resolve", 1),
        ("@@skip_networking", 1),
        ("@@have_symlink", "DISABLED"),
        ("@@skip_show_database", 1),
        ("@@automatic_sp_privileges", 0),
        ("@@general_log", 0),
        ("@@slow_query_log", 0),
        ("@@tx_isolation", "READ-COMMITTED"),
        ("FIND_IN_SET('STRICT_ALL_TABLES', @@sql_mode) > 0", 1),
    ],
)
def test_server_variables(server: HardenedMariaDB, variable: str, expected: object) -> None:
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute(f"SELECT {variable}")
        row = cur.fetchone()
    conn.close()
    assert row is not None
    assert row[0] == expected


def test_load_data_local_is_refused_even_for_root(server: HardenedMariaDB, tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("1,stolen\n")
    conn = pymysql.connect(unix_socket=str(server.socket), user="root", local_infile=True, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE IF NOT EXISTS scratch")
            cur.execute("CREATE TABLE IF NOT EXISTS scratch.t (id INT, v TEXT)")
            with pytest.raises(pymysql.err.MySQLError) as refused:
                cur.execute(
                    f"LOAD DATA LOCAL INFILE '{source}' INTO TABLE scratch.t FIELDS TERMINATED BY ','"
                )
            cur.execute("SELECT COUNT(*) FROM scratch.t")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()
    assert refused.value.args[0] == LOCAL_INFILE_DISABLED


def test_server_side_files_only_in_secure_file_priv(server: HardenedMariaDB, tmp_path: Path) -> None:
    outside = tmp_path / "dump.txt"
    conn = server.root()
    try:
        with conn.cursor() as cur:
            with pytest.raises(pymysql.err.MySQLError) as refused:
                cur.execute(f"SELECT 'x' INTO OUTFILE '{outside}'")
            assert refused.value.args[0] == OPTION_PREVENTS
            cur.execute("SELECT LOAD_FILE('/etc/hostname')")
            assert cur.fetchone() == (None,)
    finally:
        conn.close()
    assert not outside.exists()


def test_app_user_works_on_its_own_tables(server: HardenedMariaDB, app_password: str) -> None:
    """Control for the refusals below: the user logs in and reads what grants.sql gives it."""
    conn = _app(server, app_password)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM audit_log")
            assert cur.fetchone() is not None
            cur.execute("SELECT DATABASE(), CURRENT_USER()")
            assert cur.fetchone() == (DATABASE, f"{APP_USER}@localhost")
    finally:
        conn.close()


def test_the_app_appends_audit_records_under_this_config(server: HardenedMariaDB, app_password: str) -> None:
    """The web app's own audit code, through its own engine (READ COMMITTED), as the app user: the
    strict sql-mode and the grants leave its normal work intact, and the chain verifies."""
    engine = make_engine(
        f"mysql+pymysql://{APP_USER}:{app_password}@localhost/{DATABASE}"
        f"?unix_socket={server.socket}&charset=utf8mb4"
    )
    try:
        with engine.begin() as conn:
            done = append(
                conn,
                [AuditEntry(Event.LOGIN_FAILURE, FAILURE, actor="alice", detail="bad_password")],
                now=datetime.now(UTC),
            )
        with engine.connect() as conn:
            result = verify(conn)
    finally:
        engine.dispose()
    assert len(done) == 1
    assert result.ok, result.problems
    assert result.head_seq == done[0].seq


HOSTILE = [
    ("UPDATE audit_log SET actor = 'x'", TABLEACCESS_DENIED),
    ("DELETE FROM audit_log", TABLEACCESS_DENIED),
    ("TRUNCATE TABLE audit_log", TABLEACCESS_DENIED),
    ("ALTER TABLE audit_log ADD COLUMN x INT", TABLEACCESS_DENIED),
    ("DROP TABLE audit_log", TABLEACCESS_DENIED),
    ("RENAME TABLE audit_log TO old_audit", TABLEACCESS_DENIED),
    ("CREATE TRIGGER t BEFORE INSERT ON audit_log FOR EACH ROW SET @x = 1", TABLEACCESS_DENIED),
    ("CREATE TABLE audit_copy (id INT)", TABLEACCESS_DENIED),
    ("DELETE FROM cards", TABLEACCESS_DENIED),
    ("UPDATE alembic_version SET version_num = 'x'", TABLEACCESS_DENIED),
    (f"SELECT * FROM `{OTHER}`.secrets", TABLEACCESS_DENIED),  # noqa: S608 - a constant name
    (f"USE `{OTHER}`", DBACCESS_DENIED),
    ("SELECT * FROM mysql.user", TABLEACCESS_DENIED),
    ("CREATE DATABASE elsewhere", DBACCESS_DENIED),
    (f"GRANT SELECT ON audit_log TO '{APP_USER}'@'localhost'", TABLEACCESS_DENIED),
    ("SET GLOBAL local_infile = 1", SPECIFIC_ACCESS_DENIED),
    ("SELECT 'x' INTO OUTFILE '/tmp/strongroom-leak.txt'", SPECIFIC_ACCESS_DENIED),  # no FILE
    ("SHOW DATABASES", SPECIFIC_ACCESS_DENIED),  # skip-show-database
]


@pytest.mark.parametrize(("statement", "errno"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_app_user_is_refused(server: HardenedMariaDB, app_password: str, statement: str, errno: int) -> None:
    conn = _app(server, app_password)
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.err.MySQLError) as refused:
            cur.execute(statement)
    finally:
        conn.close()
    assert refused.value.args[0] == errno, refused.value.args


def test_app_user_holds_nothing_database_wide(server: HardenedMariaDB, app_password: str) -> None:
    conn = _app(server, app_password)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GRANTS")
            grants = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    assert any(g.startswith("GRANT USAGE ON *.*") for g in grants)
    for grant in grants:
        assert " ON *.* " not in grant or grant.startswith("GRANT USAGE ON *.*"), grant
        assert f"`{DATABASE}`.*" not in grant, grant
        assert "FILE" not in grant.split(" ON ")[0], grant


def test_app_user_cannot_load_local_files(server: HardenedMariaDB, app_password: str, tmp_path: Path) -> None:
    source = tmp_path / "rows.csv"
    source.write_text("x\n")
    conn = _app(server, app_password, local_infile=True)
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.err.MySQLError) as refused:
            cur.execute(f"LOAD DATA LOCAL INFILE '{source}' INTO TABLE audit_log")
    finally:
        conn.close()
    assert refused.value.args[0] == LOCAL_INFILE_DISABLED


@pytest.mark.parametrize("path", ["relative/dir", "/", "/var/lib/x\nlocal-infile=1", "/tmp/a b"])
def test_hostile_secure_file_priv_is_refused(path: str) -> None:
    with pytest.raises(MariaDBConfigError):
        render(secure_file_priv=Path(path))


def test_shipped_file_has_no_unrendered_placeholder() -> None:
    text = render()
    assert "${" not in text
    assert "secure-file-priv = /var/lib/mysql-files" in text
