"""Fixtures for the web app: every test gets a fresh app on a fresh database, on SQLite and on a
private MariaDB (the app connecting as the unprivileged user that db/grants.sql sets up)."""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.fixtures.mariadb import PrivateMariaDB, mariadb  # noqa: F401 - the session fixture
from tests.fixtures.pki import Issued, TestCA
from tests.webapp.fakes import FakeVault
from webapp import create_app
from webapp.clock import FakeClock
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.db.schema import metadata

ROOT = Path(__file__).resolve().parents[2]
GRANTS = ROOT / "webapp" / "db" / "grants.sql"
# A Wednesday, inside the default working hours (09:00-18:00 Mon-Fri, UTC).
WEDNESDAY_10_UTC = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
CHEAP_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 8, "ARGON2_PARALLELISM": 1}
SECRET = "test-secret-" + "k" * 40
APP_DB_USER = "strongroom"
PASSWORDS = {
    "alice": "Quartz-Lantern-Mosaic-4817",
    "bob": "Velvet-Orchard-Granite-2963",
    "audrey": "Cobalt-Harbor-Thimble-5521",
}


class FakeTlsSocket:
    """What gunicorn puts in environ["gunicorn.socket"] for a TLS connection (see test_gunicorn_tls
    for the real thing)."""

    family = 2  # AF_INET

    def __init__(self, der: bytes | None) -> None:
        self._der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        assert binary_form
        return self._der


@pytest.fixture(autouse=True)
def _no_strongroom_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("STRONGROOM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()  # the last connection closing checkpoints the WAL into the file
    return path


@dataclass
class MariaBackend:
    server: PrivateMariaDB
    database: str
    password: str

    @property
    def url(self) -> str:
        return self.server.url(APP_DB_USER, self.password, self.database)

    @property
    def root_url(self) -> str:
        return (
            f"mysql+pymysql://root@localhost/{self.database}?unix_socket={self.server.socket}&charset=utf8mb4"
        )

    def reset(self) -> None:
        conn = self.server.root(self.database)
        try:
            with conn.cursor() as cur:
                cur.execute("SET FOREIGN_KEY_CHECKS = 0")
                for table in reversed(metadata.sorted_tables):
                    if table.name != "audit_head":
                        cur.execute(f"TRUNCATE TABLE `{table.name}`")
                cur.execute("SET FOREIGN_KEY_CHECKS = 1")
                cur.execute("UPDATE audit_head SET seq = 0, hash = %s WHERE id = 1", ("0" * 64,))
                cur.execute("DROP TRIGGER IF EXISTS audit_refuses")
        finally:
            conn.close()


@pytest.fixture(scope="session")
def maria_backend(mariadb: PrivateMariaDB) -> MariaBackend:  # noqa: F811 - the imported fixture
    database, password = "strongroom", secrets.token_urlsafe(18)
    conn = mariadb.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
        cur.execute(f"CREATE USER '{APP_DB_USER}'@'localhost' IDENTIFIED BY %s", (password,))
    conn.close()
    backend = MariaBackend(mariadb, database, password)
    owner = make_engine(backend.root_url)
    migrate.upgrade(owner)
    owner.dispose()
    mariadb.client(database, GRANTS.read_text())
    return backend


@pytest.fixture(params=["sqlite", "mariadb"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "strongroom.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    backend: MariaBackend = request.getfixturevalue("maria_backend")
    backend.reset()
    return backend.url


@pytest.fixture
def owner_engine(request: pytest.FixtureRequest, db_url: str) -> Iterator[sa.Engine]:
    """The database as its owner sees it (to tamper with, or to break on purpose)."""
    if db_url.startswith("sqlite"):
        engine = make_engine(db_url)
    else:
        engine = make_engine(request.getfixturevalue("maria_backend").root_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(WEDNESDAY_10_UTC)


@pytest.fixture
def vault() -> FakeVault:
    return FakeVault()


@pytest.fixture
def make_app(
    db_url: str, clock: FakeClock, vault: FakeVault, tmp_path: Path
) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(**overrides: Any) -> Flask:
        cfg = {
            "SECRET_KEY": SECRET,
            "DATABASE_URL": db_url,
            "INSTANCE_PATH": str(tmp_path / "instance"),
            "MODE": "production",
            **CHEAP_ARGON2,
            **overrides,
        }
        app = create_app(cfg, clock=clock, vault=vault)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["strongroom"].engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@dataclass(frozen=True)
class Person:
    username: str
    password: str
    cert: Issued


@pytest.fixture
def people(app: Flask, ca: TestCA, tmp_path: Path) -> dict[str, Person]:
    roles = {"alice": "clerk", "bob": "clerk", "audrey": "auditor"}
    found = {}
    runner = app.test_cli_runner()
    for name, role in roles.items():
        result = runner.invoke(
            args=["users", "add", name, "--role", role, "--password-stdin"], input=PASSWORDS[name] + "\n"
        )
        assert result.exit_code == 0, result.output
        issued = ca.issue(name)
        pem, _ = issued.write(tmp_path, name)
        result = runner.invoke(args=["certs", "bind", name, str(pem)])
        assert result.exit_code == 0, result.output
        found[name] = Person(name, PASSWORDS[name], issued)
    return found


def client_for(app: Flask, cert: Issued | None, *, ip: str = "10.0.0.5") -> FlaskClient:
    client = app.test_client()
    client.environ_base.update(
        {"gunicorn.socket": FakeTlsSocket(cert.der if cert else None), "REMOTE_ADDR": ip}
    )
    return client


HTTPS = "https://vault.example"


def get(client: FlaskClient, path: str, **kw: Any) -> TestResponse:
    return client.get(path, base_url=HTTPS, **kw)


def post(client: FlaskClient, path: str, **kw: Any) -> TestResponse:
    return client.post(path, base_url=HTTPS, **kw)


_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "no CSRF token on the page"
    return m.group(1)


def login(client: FlaskClient, username: str, password: str) -> TestResponse:
    page = get(client, "/login")
    assert page.status_code == 200, page.status_code
    return post(
        client,
        "/login",
        data={"csrf_token": csrf_token(page.text), "username": username, "password": password},
    )


def session_cookie(client: FlaskClient) -> str | None:
    cookie = client.get_cookie("__Host-strongroom", domain="vault.example")
    return cookie.value if cookie else None
