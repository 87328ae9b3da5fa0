"""The idle warning's server side: logged-in pages carry the idle timeout for static/idle.js, and its
"Stay logged in" is one audited GET that moves the idle timer exactly as a click would, nothing more.
(The script's own behaviour in Chromium: test_browser.py.)"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.conftest import Person, client_for, get, login
from tests.webapp.helpers import audit_rows, live_sessions
from webapp.clock import FakeClock, to_db
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
