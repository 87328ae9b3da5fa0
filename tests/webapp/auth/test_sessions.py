"""Server-side sessions: expiry with a moved clock, IP and certificate binding, fixation, ending."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post, session_cookie
from tests.webapp.helpers import audit_rows, events, live_sessions
from webapp.clock import FakeClock
from webapp.events import Event


def _logged_in(app: Flask, person: Person, **kw: str) -> FlaskClient:
    client = client_for(app, person.cert, **kw)
    assert login(client, person.username, person.password).status_code == 302
    return client


def _home_ok(client: FlaskClient) -> bool:
    r = get(client, "/")
    return r.status_code == 200 and "Welcome" in r.text


def test_cookie_is_secure_httponly_strict_and_256_bits(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, people["alice"].cert)
    page = get(client, "/login")
    header = page.headers["Set-Cookie"]
    assert header.startswith("__Host-strongroom=")
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
        assert attribute in header
    assert "Domain" not in header
    assert "Expires" not in header
    assert len(session_cookie(client) or "") == 43  # 32 random bytes, base64url


def test_sessions_live_in_the_database_as_hashes(app: Flask, people: dict[str, Person]) -> None:
    client = _logged_in(app, people["alice"])
    sid = session_cookie(client)
    assert sid is not None
    [row] = live_sessions(app)
    assert row.id_hash == hashlib.sha256(sid.encode()).hexdigest()
    assert sid not in row.data


def test_login_rotates_the_session_id_and_the_old_one_is_dead(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    before = session_cookie(client)
    old_token = csrf_token(page.text)
    post(client, "/login", data={"csrf_token": old_token, "username": "alice", "password": alice.password})
    after = session_cookie(client)
    assert before
    assert after
    assert before != after
    # An attacker who planted (or read) the pre-login id gets nothing from it.
    attacker = client_for(app, alice.cert)
    attacker.set_cookie("__Host-strongroom", before, domain="vault.example")
    assert not _home_ok(attacker)
    # The CSRF token was rotated too: the pre-login token no longer passes.
    r = post(client, "/logout", data={"csrf_token": old_token})
    assert r.status_code == 400
    assert _home_ok(client)


def test_idle_timeout(app: Flask, people: dict[str, Person], clock: FakeClock) -> None:
    client = _logged_in(app, people["alice"])
    clock.advance(timedelta(minutes=14))
    assert _home_ok(client)
    clock.advance(timedelta(minutes=15, seconds=1))
    r = get(client, "/")
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/login")
    assert [a.detail for a in audit_rows(app, Event.SESSION_EXPIRED_IDLE)] == ["idle"]
    assert live_sessions(app) == []


def test_absolute_timeout(app: Flask, people: dict[str, Person], clock: FakeClock) -> None:
    client = _logged_in(app, people["alice"])
    start = clock.now()
    while _home_ok(client):  # never idle: active every 14:59
        clock.advance(timedelta(minutes=14, seconds=59))
    assert timedelta(hours=8) < clock.now() - start <= timedelta(hours=8, minutes=15)
    assert audit_rows(app, Event.SESSION_EXPIRED_ABSOLUTE)


def test_timeouts_are_configurable(
    make_app: Callable[..., Flask], people: dict[str, Person], clock: FakeClock
) -> None:
    app = make_app(SESSION_IDLE_TIMEOUT=60)
    client = _logged_in(app, people["alice"])
    clock.advance(timedelta(seconds=61))
    assert not _home_ok(client)


def test_ip_change_ends_the_session(app: Flask, people: dict[str, Person]) -> None:
    client = _logged_in(app, people["alice"])
    client.environ_base["REMOTE_ADDR"] = "10.0.0.99"
    assert not _home_ok(client)
    assert Event.SESSION_IP_CHANGED in events(app)
    client.environ_base["REMOTE_ADDR"] = "10.0.0.5"
    assert not _home_ok(client)  # ended, not merely refused once


def test_ip_binding_can_be_switched_off(make_app: Callable[..., Flask], people: dict[str, Person]) -> None:
    app = make_app(SESSION_BIND_IP=False)
    client = _logged_in(app, people["alice"])
    client.environ_base["REMOTE_ADDR"] = "10.0.0.99"
    assert _home_ok(client)


def test_a_session_is_bound_to_its_certificate(app: Flask, people: dict[str, Person]) -> None:
    client = _logged_in(app, people["alice"])
    sid = session_cookie(client)
    thief = client_for(app, people["bob"].cert)
    thief.set_cookie("__Host-strongroom", sid or "", domain="vault.example")
    assert not _home_ok(thief)
    assert Event.SESSION_CERT_CHANGED in events(app)


def test_logout_ends_the_session(app: Flask, people: dict[str, Person]) -> None:
    client = _logged_in(app, people["alice"])
    sid = session_cookie(client)
    home = get(client, "/")
    r = post(client, "/logout", data={"csrf_token": csrf_token(home.text)})
    assert r.status_code == 302
    assert live_sessions(app) == []
    replay = client_for(app, people["alice"].cert)
    replay.set_cookie("__Host-strongroom", sid or "", domain="vault.example")
    assert not _home_ok(replay)
    assert audit_rows(app, Event.LOGOUT)


@pytest.mark.parametrize(
    "command",
    [
        ["users", "disable", "alice"],
        ["users", "kill-sessions", "alice"],
        ["certs", "unbind", "FP", "--reason", "lost"],
    ],
)
def test_admin_actions_end_sessions(app: Flask, people: dict[str, Person], command: list[str]) -> None:
    client = _logged_in(app, people["alice"])
    bob = _logged_in(app, people["bob"])
    fp = hashlib.sha256(people["alice"].cert.der).hexdigest()
    result = app.test_cli_runner().invoke(args=[fp if c == "FP" else c for c in command])
    assert result.exit_code == 0, result.output
    assert not _home_ok(client)
    assert _home_ok(bob)  # nobody else's
