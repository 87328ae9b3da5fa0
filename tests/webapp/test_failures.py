"""Failure handling: safe mode, vault sealed/unavailable, database outage, headers, configuration."""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask

from keyd.errors import Sealed, Unavailable
from tests.webapp.conftest import ROOT, SECRET, FakeVault, Person, client_for, get, login
from tests.webapp.helpers import audit_rows, events, live_sessions
from webapp import create_app
from webapp.config import ConfigError
from webapp.events import Event

CARD = "4111111111111111"


def _logged_in(app: Flask, person: Person) -> object:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def test_unexpected_error_enters_safe_mode(app: Flask, people: dict[str, Person], vault: FakeVault) -> None:
    client = _logged_in(app, people["alice"])
    vault.error = RuntimeError(f"boom with card {CARD} and password {people['alice'].password}")
    r = get(client, "/")  # type: ignore[arg-type]
    assert r.status_code == 500
    assert "this window will now close" in r.text
    assert "close.js" in r.text
    # No trace, no message, no secret.
    for leak in ("Traceback", "RuntimeError", "boom", CARD, people["alice"].password, 'File "'):
        assert leak not in r.text
    # Logged out, and the event is raised with no details.
    assert live_sessions(app) == []
    [err] = audit_rows(app, Event.ERROR_UNEXPECTED)
    assert (err.detail, err.outcome) == ("-", "failure")
    assert Event.ERROR_UNEXPECTED in events(app)
    vault.error = None
    assert get(client, "/").status_code == 302  # type: ignore[arg-type]


def test_nothing_is_half_written_on_error(app: Flask, people: dict[str, Person], vault: FakeVault) -> None:
    client = _logged_in(app, people["alice"])
    views_before = len(audit_rows(app, Event.PAGE_VIEW))
    vault.error = RuntimeError("fail after the view began")
    get(client, "/")  # type: ignore[arg-type]
    assert len(audit_rows(app, Event.PAGE_VIEW)) == views_before


@pytest.mark.parametrize(
    ("error", "event", "text"),
    [
        (Sealed("sealed"), Event.VAULT_SEALED, "The vault is sealed"),
        (Unavailable("down"), Event.VAULT_UNAVAILABLE, "The vault is unavailable"),
    ],
)
def test_keyd_sealed_or_unreachable_gives_503(
    app: Flask, people: dict[str, Person], vault: FakeVault, error: Exception, event: Event, text: str
) -> None:
    client = _logged_in(app, people["alice"])
    vault.error = error
    r = get(client, "/")  # type: ignore[arg-type]
    assert r.status_code == 503
    assert text in r.text
    assert event in events(app)
    assert len(live_sessions(app)) == 1  # not an error of the user's: the session survives
    vault.error = None
    assert get(client, "/").status_code == 200  # type: ignore[arg-type]


def test_a_sealed_status_gives_503(app: Flask, people: dict[str, Person], vault: FakeVault) -> None:
    client = _logged_in(app, people["alice"])
    vault.sealed = True
    assert get(client, "/").status_code == 503  # type: ignore[arg-type]


def test_real_keyd_client_unreachable_gives_503(
    make_app: Callable[..., Flask], people: dict[str, Person], tmp_path: Path, clock: object
) -> None:
    from keyd.client import KeydClient  # the real client, pointed where nothing listens

    app = create_app(
        {
            "SECRET_KEY": SECRET,
            "DATABASE_URL": make_app().config["DATABASE_URL"],
            "INSTANCE_PATH": str(tmp_path / "i2"),
            "ARGON2_TIME_COST": 1,
            "ARGON2_MEMORY_COST": 8,
            "ARGON2_PARALLELISM": 1,
        },
        clock=clock,  # type: ignore[arg-type]
        vault=KeydClient(str(tmp_path / "nobody-listens.sock"), timeout=0.5),
    )
    client = _logged_in(app, people["alice"])
    r = get(client, "/")  # type: ignore[arg-type]
    assert r.status_code == 503
    assert "The vault is unavailable" in r.text
    app.extensions["strongroom"].engine.dispose()


# PyMySQL 1.2 does not close its socket when connecting to a missing Unix socket fails
# (connections.py, Connection.connect): those sockets are garbage, collected below, not ours to fix.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_database_outage_gives_503_and_recovers(
    make_app: Callable[..., Flask], people: dict[str, Person], db_url: str, request: pytest.FixtureRequest
) -> None:
    app = make_app()
    client = _logged_in(app, people["alice"])
    engine = app.extensions["strongroom"].engine
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        hidden = path.parent.parent / (path.parent.name + "-away")
        engine.dispose()
        shutil.move(path.parent, hidden)
        os.makedirs(path.parent / "strongroom.db")  # a directory where the file was: cannot open
        restore = lambda: (shutil.rmtree(path.parent), shutil.move(hidden, path.parent))  # noqa: E731
    else:
        server = request.getfixturevalue("maria_backend").server
        server.stop()
        restore = server.start
    try:
        r = get(client, "/")  # type: ignore[arg-type]
        assert r.status_code == 503
        assert "database cannot be reached" in r.text
        assert "Traceback" not in r.text
    finally:
        restore()
        # Collect the leaked sockets here, not in a later test that still treats them as errors.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    assert get(client, "/").status_code == 200  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/", "/login", "/nope", "/login?bad=1", "/static/strongroom.css"])
def test_security_headers_on_every_response(app: Flask, people: dict[str, Person], path: str) -> None:
    r = get(client_for(app, people["alice"].cert), path)
    r.close()  # static files are streamed from an open file
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Cache-Control"] == "no-store"


def test_templates_have_no_inline_script() -> None:
    root = Path(__file__).resolve().parents[2] / "webapp" / "templates"
    for template in root.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"\son[a-z]+\s*=", text), template.name
        assert "style=" not in text, template.name


def test_production_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        create_app({"INSTANCE_PATH": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"})


def test_the_cli_names_a_missing_secret_without_a_traceback(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "STRONGROOM_MODE": "production",
        "STRONGROOM_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "STRONGROOM_INSTANCE_PATH": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", "users", "list"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "SECRET_KEY" in done.stderr


def test_production_is_the_default_mode(tmp_path: Path) -> None:
    app = create_app(
        {"SECRET_KEY": SECRET, "INSTANCE_PATH": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    )
    assert app.config["MODE"] == "production"
    assert not app.debug


def test_development_generates_a_labelled_secret_per_checkout(tmp_path: Path) -> None:
    cfg = {
        "MODE": "development",
        "INSTANCE_PATH": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    first = create_app(cfg).config["SECRET_KEY"]
    assert create_app(cfg).config["SECRET_KEY"] == first
    text = (tmp_path / "dev-secret-key").read_text()
    assert "DEVELOPMENT" in text
    assert (tmp_path / "dev-secret-key").stat().st_mode & 0o077 == 0


def test_configuration_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRONGROOM_SECRET_KEY", SECRET)
    monkeypatch.setenv("STRONGROOM_DATABASE_URL", f"sqlite:///{tmp_path}/env.db")
    monkeypatch.setenv("STRONGROOM_SESSION_IDLE_TIMEOUT", "300")
    monkeypatch.setenv("STRONGROOM_INSTANCE_PATH", str(tmp_path))
    app = create_app()
    assert app.config["SESSION_IDLE_TIMEOUT"] == 300
    assert app.config["DATABASE_URL"].endswith("env.db")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"MODE": "debug"}, "MODE"),
        ({"LOGIN_ENTRY": "voice"}, "LOGIN_ENTRY"),
        ({"SESSION_IDLE_TIMEOUT": "15m"}, "SESSION_IDLE_TIMEOUT"),
        ({"SESSION_BIND_IP": "yes"}, "SESSION_BIND_IP"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SESSION_COOKIE_SECURE": False}, "Secure"),
    ],
)
def test_bad_configuration_refuses_to_start(
    tmp_path: Path, override: dict[str, object], message: str
) -> None:
    cfg = {"SECRET_KEY": SECRET, "INSTANCE_PATH": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    with pytest.raises(ConfigError, match=message):
        create_app({**cfg, **override})


def test_production_refuses_flask_debug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(ConfigError, match="FLASK_DEBUG"):
        create_app(
            {
                "SECRET_KEY": SECRET,
                "INSTANCE_PATH": str(tmp_path),
                "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
            }
        )


def test_static_files_do_not_extend_the_idle_timeout(
    app: Flask, people: dict[str, Person], clock: object
) -> None:
    from datetime import timedelta

    client = _logged_in(app, people["alice"])
    clock.advance(timedelta(minutes=10))  # type: ignore[attr-defined]
    get(client, "/static/strongroom.css").close()  # type: ignore[arg-type]
    clock.advance(timedelta(minutes=10))  # type: ignore[attr-defined]
    assert get(client, "/").status_code == 302  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (1021, "disk full"),
        (1114, "disk full"),
        (3, "disk full"),
        (1290, "read-only"),
        (1836, "read-only"),
        (1792, "read-only"),
        (2002, None),  # cannot connect: unreachable, not refusing
        (1205, None),  # lock wait timeout
        (1644, None),  # a trigger's SIGNAL
    ],
)
def test_mariadb_refusals_are_told_apart_from_outages(code: int, reason: str | None) -> None:
    import pymysql
    import sqlalchemy as sa

    from webapp.failures import write_refused

    exc = sa.exc.OperationalError("INSERT ...", {}, pymysql.err.OperationalError(code, "text"))
    assert write_refused(exc) == reason
