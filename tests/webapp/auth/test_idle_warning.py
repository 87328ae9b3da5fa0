"""The idle warning's server side: logged-in pages carry the idle timeout for static/idle.js, and its
"Stay logged in" is one audited GET that moves the idle timer exactly as a click would, nothing more.
The script's own behaviour is driven in Chromium at the end."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.support import component_missing
from tests.webapp.auth.axe_check import blocking_axe_violations
from tests.webapp.conftest import PASSWORDS, Person, client_for, get, login
from tests.webapp.helpers import audit_rows, live_sessions
from tests.webapp.tls_server import Server, serve
from webapp.clock import FakeClock, to_db
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log
from webapp.events import Event

PING = "/account/still-here"


def _logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def _home_ok(client: FlaskClient) -> bool:
    return get(client, "/").status_code == 200


@pytest.mark.parametrize("timeout", [900, 120])
def test_logged_in_pages_carry_the_idle_timeout(
    make_app: Callable[..., Flask], people: dict[str, Person], timeout: int
) -> None:
    app = make_app(SESSION_IDLE_TIMEOUT=timeout)
    client = _logged_in(app, people["alice"])
    for path in ("/", "/records/", "/account/password"):
        page = get(client, path)
        assert page.status_code == 200, path
        body = re.search(r"<body([^>]*)>", page.text)
        assert body, path
        assert f'data-idle-timeout="{timeout}"' in body.group(1)
        assert f'data-idle-ping="{PING}"' in body.group(1)
        assert 'data-idle-login="/login"' in body.group(1)
        assert 'data-session-left="28800"' in body.group(1)  # the clock stands still: all 8 hours
        assert 'data-session-max="28800"' in body.group(1)
        assert '<script src="/static/idle.js" defer></script>' in page.text
        assert not re.search(r"<script(?![^>]*\bsrc=)", page.text)  # no inline script anywhere


def test_pages_before_the_login_have_no_idle_warning(app: Flask, people: dict[str, Person]) -> None:
    page = get(client_for(app, people["alice"].cert), "/login")
    assert "idle.js" not in page.text
    assert "data-idle-timeout" not in page.text


def test_the_script_is_served(app: Flask) -> None:
    with get(client_for(app, None), "/static/idle.js") as r:
        assert r.status_code == 200
        assert "javascript" in (r.mimetype or "")
        assert b"Stay logged in" in r.data
        assert b'setAttribute("role", "alert")' in r.data


def test_stay_logged_in_is_an_audited_request_that_moves_the_idle_timer(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    client = _logged_in(app, people["alice"])
    clock.advance(timedelta(minutes=13))  # the warning shows 2 minutes before the 15
    r = get(client, PING)
    assert r.status_code == 204
    assert r.data == b""
    assert r.headers["Cache-Control"] == "no-store"
    [session] = live_sessions(app)
    assert session.last_seen_at == to_db(clock.now())
    [ping] = [a for a in audit_rows(app, Event.PAGE_VIEW) if a.resource == PING]
    assert (ping.actor, ping.detail) == ("alice", "stay_logged_in")
    clock.advance(timedelta(minutes=14))  # 27 minutes after the login, 14 after the click
    assert _home_ok(client)


def test_without_it_the_session_ends_at_the_idle_timeout(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    client = _logged_in(app, people["alice"])
    clock.advance(timedelta(minutes=15, seconds=1))
    r = get(
        client, PING
    )  # what the button does after the end: a redirect, which the script reads as "logged out"
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/login")
    assert [a.detail for a in audit_rows(app, Event.SESSION_EXPIRED_IDLE)] == ["idle"]
    assert live_sessions(app) == []


def test_it_does_not_lengthen_the_session_beyond_the_absolute_timeout(
    make_app: Callable[..., Flask], people: dict[str, Person], clock: FakeClock
) -> None:
    app = make_app(SESSION_IDLE_TIMEOUT=900, SESSION_ABSOLUTE_TIMEOUT=3600)
    client = _logged_in(app, people["alice"])
    for _ in range(4):  # 52 minutes of pings only
        clock.advance(timedelta(minutes=13))
        assert get(client, PING).status_code == 204
    clock.advance(timedelta(minutes=9))  # 61 minutes after the login
    r = get(client, PING)
    assert r.status_code == 302
    assert audit_rows(app, Event.SESSION_EXPIRED_ABSOLUTE)


def test_pages_say_what_is_left_of_the_absolute_timeout_counted_from_the_login(
    make_app: Callable[..., Flask], people: dict[str, Person], clock: FakeClock
) -> None:
    app = make_app(SESSION_IDLE_TIMEOUT=900, SESSION_ABSOLUTE_TIMEOUT=3600)
    client = _logged_in(app, people["alice"])

    def left() -> str:
        page = get(client, "/")
        assert page.status_code == 200
        found = re.search(r'data-session-left="(\d+)"', page.text)
        assert found, page.text
        return found.group(1)

    assert left() == "3600"
    clock.advance(timedelta(minutes=10))
    assert left() == "3000"  # activity moves the idle timer, never this one
    clock.advance(timedelta(minutes=10, seconds=30))
    assert left() == "2370"
    clock.advance(timedelta(minutes=49, seconds=31))
    assert get(client, "/").status_code == 302  # 61 minutes: ended


def test_static_files_are_not_activity(app: Flask, people: dict[str, Person], clock: FakeClock) -> None:
    client = _logged_in(app, people["alice"])
    [before] = live_sessions(app)
    clock.advance(timedelta(minutes=10))
    for path in ("/static/idle.js", "/static/strongroom.css"):
        with get(client, path) as r:
            assert r.status_code == 200
    [after] = live_sessions(app)
    assert after.last_seen_at == before.last_seen_at
    clock.advance(timedelta(minutes=5, seconds=1))
    assert not _home_ok(client)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("extend=1", id="unknown-parameter"),
        pytest.param("seconds=99999", id="asks-for-more-time"),
    ],
)
def test_the_ping_takes_no_parameters(app: Flask, people: dict[str, Person], query: str) -> None:
    client = _logged_in(app, people["alice"])
    r = get(client, f"{PING}?{query}")
    assert r.status_code == 400
    assert audit_rows(app, Event.INPUT_REFUSED)


def test_the_ping_needs_a_session(app: Flask, people: dict[str, Person]) -> None:
    r = get(client_for(app, people["alice"].cert), PING)
    assert r.status_code == 302
    assert [a.detail for a in audit_rows(app, Event.ACCESS_DENIED)] == ["not_logged_in"]


# The script itself, in Chromium (Debian's, driven by Playwright, as in test_browser.py) against
# gunicorn with a client certificate; a 12-second idle timeout makes the warning come after 9 seconds.
# For the absolute timeout's warning, a second server whose sessions last 20 seconds whatever the
# activity (the warning comes 5 seconds before) and whose idle timeout (60 s) never comes first.
CHROMIUM = "/usr/bin/chromium"
BROWSER_IDLE = 12
BROWSER_ABSOLUTE = 20


@pytest.fixture(scope="module")
def short_idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(
        tmp_path_factory.mktemp("idle"), {"STRONGROOM_SESSION_IDLE_TIMEOUT": str(BROWSER_IDLE)}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def short_session_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = {
        "STRONGROOM_SESSION_IDLE_TIMEOUT": "60",
        "STRONGROOM_SESSION_ABSOLUTE_TIMEOUT": str(BROWSER_ABSOLUTE),
    }
    with serve(tmp_path_factory.mktemp("absolute"), settings) as running:
        yield running


@contextmanager
def _chromium_page(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[str]]]:
    """A Chromium page presenting alice's certificate to `server`, and the console's complaints."""
    if not (os.path.exists(CHROMIUM) and shutil.which("chromium")):
        component_missing("chromium is not installed (scripts/debian-packages.txt)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        component_missing("playwright is not installed (requirements-dev.txt)")
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(server.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cert, key = server.alice
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--no-first-run"])
        context = browser.new_context(
            client_certificates=[
                {"origin": f"https://127.0.0.1:{server.port}", "certPath": str(cert), "keyPath": str(key)}
            ]
        )
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            yield page, problems
        finally:
            context.close()
            browser.close()


@pytest.fixture
def idle_page(short_idle_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[str]]]:
    with _chromium_page(short_idle_server, monkeypatch) as page:
        yield page


@pytest.fixture
def session_page(
    short_session_server: Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, list[str]]]:
    with _chromium_page(short_session_server, monkeypatch) as page:
        yield page


def _warning_after_login(page: Any, base: str, *, within: int) -> Any:
    """Log alice in, open a page, and return the warning once it shows (within `within` seconds);
    it must not be there at first."""
    page.goto(f"{base}/login")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORDS["alice"])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    page.goto(f"{base}/account/password")
    assert page.locator("#idle-warning").count() == 0  # nothing yet
    warning = page.wait_for_selector("#idle-warning", timeout=within * 1000)
    assert warning.get_attribute("role") == "alert"
    return warning


def _pings(server: Server) -> int:
    engine = make_engine(server.db_url)
    try:
        with engine.connect() as conn:
            return len(
                conn.execute(sa.select(audit_log.c.seq).where(audit_log.c.detail == "stay_logged_in")).all()
            )
    finally:
        engine.dispose()


def test_the_warning_in_a_real_browser(idle_page: tuple[Any, list[str]], short_idle_server: Server) -> None:
    page, problems = idle_page
    base = f"https://127.0.0.1:{short_idle_server.port}"
    # The warning: an alert with the button, a quarter of the (short) timeout before its end.
    warning = _warning_after_login(page, base, within=BROWSER_IDLE + 2)
    assert "You will be logged out" in (warning.text_content() or "")
    assert _pings(short_idle_server) == 0  # showing it sent nothing
    assert blocking_axe_violations(page) == []
    page.click("#idle-stay")
    page.wait_for_selector("#idle-warning", state="detached", timeout=5000)
    assert _pings(short_idle_server) == 1
    # Then nothing more is done: the warning comes back, and after the timeout the page says so.
    page.wait_for_selector("text=You were logged out", timeout=(BROWSER_IDLE + 4) * 1000)
    assert page.locator("#idle-warning a[href='/login']").count() == 1
    assert blocking_axe_violations(page) == []
    assert _pings(short_idle_server) == 1
    # And the server agrees: the session is gone.
    page.goto(f"{base}/account/password")
    assert page.url.endswith("/login")
    assert [p for p in problems if "Content Security Policy" in p or "Refused" in p] == []


def test_the_absolute_timeout_is_announced_without_a_way_to_extend_it(
    session_page: tuple[Any, list[str]], short_session_server: Server
) -> None:
    page, problems = session_page
    base = f"https://127.0.0.1:{short_session_server.port}"
    # A quarter of the 20 seconds before the end: the alert, and no "Stay logged in" (it could not help).
    warning = _warning_after_login(page, base, within=BROWSER_ABSOLUTE + 2)
    assert "Your session ends in about" in (warning.text_content() or "")
    assert page.locator("#idle-stay").count() == 0
    assert blocking_axe_violations(page) == []
    page.wait_for_selector("text=Your session ended", timeout=10_000)
    assert page.locator("#idle-warning a[href='/login']").count() == 1
    assert _pings(short_session_server) == 0  # the script sent nothing on its own
    # And the server agrees: the session is gone, ended by the absolute timeout.
    page.goto(f"{base}/account/password")
    assert page.url.endswith("/login")
    engine = make_engine(short_session_server.db_url)
    try:
        with engine.connect() as conn:
            ended = conn.execute(
                sa.select(audit_log.c.detail).where(audit_log.c.event == Event.SESSION_EXPIRED_ABSOLUTE.value)
            ).all()
    finally:
        engine.dispose()
    assert [row.detail for row in ended] == ["absolute"]
    assert [p for p in problems if "Content Security Policy" in p or "Refused" in p] == []
