"""An employee changes their own password (webapp/auth/account.py): the current password through the
login's check and lockout, the new one twice under the policy and its history, the other sessions
ended; every refusal next to its field, audited and not alerted, no password ever sent back."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.webapp.auth.keypad_entry import layout, spell
from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post, session_cookie
from tests.webapp.helpers import audit_rows, events, live_sessions, user_row
from webapp.auth import passwords
from webapp.clock import FakeClock
from webapp.db.tables import audit_log, outbox, password_history, sessions
from webapp.events import Event

NEW = "Saffron-Meadow-Copper-7391"
CURRENT = "<the current password>"  # a marker in the table below
PAGE = "/account/password"


def _logged_in(app: Flask, person: Person, *, ip: str = "10.0.0.5") -> FlaskClient:
    client = client_for(app, person.cert, ip=ip)
    assert login(client, person.username, person.password).status_code == 302
    return client


def _change(
    client: FlaskClient, current: str, new: str, again: str | None = None, **extra: str
) -> TestResponse:
    page = get(client, PAGE)
    assert page.status_code == 200
    data = {
        "csrf_token": csrf_token(page.text),
        "current_password": current,
        "new_password": new,
        "new_password_again": new if again is None else again,
        **extra,
    }
    return post(client, PAGE, data=data)


def _home_ok(client: FlaskClient) -> bool:
    r = get(client, "/")
    return r.status_code == 200 and "Welcome" in r.text


def _password_is(app: Flask, username: str, password: str) -> bool:
    hasher = app.extensions["strongroom"].hasher
    return passwords.verify(hasher, user_row(app, username).password_hash, password)


def _everything_recorded(app: Flask) -> str:
    """Every audit field and outbox field, as one text to search."""
    with app.extensions["strongroom"].engine.connect() as conn:
        rows = [*conn.execute(sa.select(audit_log)), *conn.execute(sa.select(outbox))]
        data = [r.data for r in conn.execute(sa.select(sessions.c.data))]
    return "\n".join([*(repr(tuple(r)) for r in rows), *data])


def test_change_my_password(app: Flask, people: dict[str, Person], clock: FakeClock) -> None:
    alice = people["alice"]
    client = _logged_in(app, alice)
    clock.advance(timedelta(minutes=1))
    r = _change(client, alice.password, NEW)
    assert r.status_code == 302
    assert r.headers["Location"].endswith(PAGE)
    done = get(client, PAGE)
    assert 'class="success"' in done.text
    assert "Your password was changed. You had no other sessions open." in done.text
    row = user_row(app, "alice")
    assert row.password_changed_at == clock.now().replace(tzinfo=None)
    assert not row.must_change_password
    assert _password_is(app, "alice", NEW)
    [changed] = audit_rows(app, Event.PASSWORD_CHANGED)
    assert (changed.actor, changed.outcome, changed.resource, changed.detail) == (
        "alice",
        "success",
        f"user:{row.id}",
        "self_service;other_sessions_ended=0",
    )
    with app.extensions["strongroom"].engine.connect() as conn:
        history = conn.execute(
            sa.select(password_history.c.password_hash).where(password_history.c.user_id == row.id)
        ).scalars()
        assert sum(passwords.verify(app.extensions["strongroom"].hasher, h, NEW) for h in history) == 1
    # The old password is gone, the new one logs in.
    assert login(client_for(app, alice.cert), "alice", alice.password).status_code == 200
    assert login(client_for(app, alice.cert), "alice", NEW).status_code == 302
    assert Event.PASSWORD_CHANGED not in events(app)  # audited, not alerted


def test_the_change_ends_my_other_sessions_and_rotates_this_one(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    alice = people["alice"]
    other = _logged_in(app, alice, ip="10.0.0.6")
    clock.advance(timedelta(minutes=5))
    client = _logged_in(app, alice)
    bob = _logged_in(app, people["bob"])
    started = {r.id_hash: r.created_at for r in live_sessions(app)}
    before = session_cookie(client)
    clock.advance(timedelta(minutes=5))
    assert _change(client, alice.password, NEW).status_code == 302
    assert "Your other open session was ended." in get(client, PAGE).text
    after = session_cookie(client)
    assert after
    assert after != before
    assert _home_ok(client)
    assert not _home_ok(other)  # ended
    assert _home_ok(bob)  # someone else's session is not touched
    # The rotated session keeps its age: the absolute timeout still counts from the login.
    [mine] = [r for r in live_sessions(app) if r.user_id == user_row(app, "alice").id]
    assert mine.created_at == clock.now().replace(tzinfo=None) - timedelta(minutes=5)
    assert mine.id_hash not in started
    # The old id is dead.
    thief = client_for(app, alice.cert)
    thief.set_cookie("__Host-strongroom", before or "", domain="vault.example")
    assert not _home_ok(thief)
    [changed] = audit_rows(app, Event.PASSWORD_CHANGED)
    assert changed.detail == "self_service;other_sessions_ended=1"


# (new, again, field with the message, message, audit detail's start)
REFUSALS = [
    pytest.param(NEW, NEW + "x", "again", "not the same", "mismatch", id="mismatch"),
    pytest.param(NEW, "", "again", "a second time", "missing", id="again-missing"),
    pytest.param("", "", "new", "Enter a new password", "missing", id="new-missing"),
    pytest.param("Short-pass-1", None, "new", "at least 15 characters", "policy", id="too-short"),
    pytest.param("Saffron-Meadow-Copper", None, "new", "must contain a digit", "policy", id="no-digit"),
    pytest.param("2026-11-25 10:00:00", None, "new", "must contain a letter", "policy", id="no-letter"),
    pytest.param(
        "alice-Saffron-Meadow-7391", None, "new", "must not contain the username", "policy", id="username"
    ),
    pytest.param(
        "ALICE-saffron-meadow-7391",
        None,
        "new",
        "must not contain the username",
        "policy",
        id="username-case",
    ),
    pytest.param("password12345678", None, "new", "too common or too easy to guess", "policy", id="common"),
    pytest.param("Aa1" * 43, None, "new", "at most 128 characters", "policy", id="too-long"),
    pytest.param("Aa1" * 350, None, "new", "far too long", "too_long", id="far-too-long"),
    pytest.param(
        "Saffron\u200bMeadow-Copper-7391", None, "new", "control characters", "policy", id="zero-width"
    ),
    pytest.param(
        "Saffron\u202eMeadow-Copper-7391", None, "new", "control characters", "policy", id="bidi-override"
    ),
    pytest.param("Cafe\u0301-Saffron-Meadow-7391", None, "new", "unnormalized", "policy", id="unnormalized"),
    pytest.param(CURRENT, None, "new", "last 4 passwords", "policy", id="same-as-current"),
]


@pytest.mark.parametrize(("new", "again", "field", "message", "detail"), REFUSALS)
def test_refusals_are_shown_next_to_the_field(
    app: Flask, people: dict[str, Person], new: str, again: str | None, field: str, message: str, detail: str
) -> None:
    alice = people["alice"]
    if new == CURRENT:
        new = alice.password
    client = _logged_in(app, alice)
    r = _change(client, alice.password, new, again)
    assert r.status_code == 400
    assert f'id="{field}-error"' in r.text
    error = r.text.split(f'id="{field}-error"', 1)[1].split("</div>", 1)[0]
    assert message in error
    assert 'aria-invalid="true"' in r.text
    assert re.search(r"aria-describedby=\"" + field + "-error", r.text)
    assert "autofocus" in r.text
    # Never sent back: no password field has a value, and no password appears anywhere on the page.
    if new:
        assert new[:60] not in r.text
    assert alice.password not in r.text
    assert not re.search(r'type="password"[^>]*value=', r.text)
    assert _password_is(app, "alice", alice.password)  # nothing changed
    [refused] = audit_rows(app, Event.PASSWORD_CHANGE_REFUSED)
    assert refused.detail.startswith(detail)
    assert Event.PASSWORD_CHANGE_REFUSED not in events(app)  # a typo is not an alert
    assert not audit_rows(app, Event.PASSWORD_CHANGED)
    assert _home_ok(client)  # still logged in


def test_the_policy_lists_every_reason(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    r = _change(_logged_in(app, alice), alice.password, "alice")
    error = r.text.split('id="new-error"', 1)[1].split("</div>", 1)[0]
    for reason in ("must be at least 15 characters", "must contain a digit", "must not contain the username"):
        assert f"<li>It {reason}" in error


# Shapes no employee types: refused by the input guard before the view (400, INPUT_REFUSED, alerted).
HOSTILE = [
    pytest.param({"new_password": "Saffron\x07Meadow-Copper-7391"}, id="control-character"),
    pytest.param({"new_password": "Saffron\x00Meadow-Copper-7391"}, id="nul"),
    pytest.param({"role": "admin"}, id="unknown-parameter"),
    pytest.param({"new_password": "x" * 3000}, id="beyond-the-guard"),
]


@pytest.mark.parametrize("extra", HOSTILE)
def test_hostile_shapes_are_refused_before_the_view(
    app: Flask, people: dict[str, Person], extra: dict[str, str]
) -> None:
    alice = people["alice"]
    client = _logged_in(app, alice)
    page = get(client, PAGE)
    data = {
        "csrf_token": csrf_token(page.text),
        "current_password": alice.password,
        "new_password": NEW,
        "new_password_again": NEW,
        **extra,
    }
    r = post(client, PAGE, data=data)
    assert r.status_code == 400
    assert audit_rows(app, Event.INPUT_REFUSED)
    assert _password_is(app, "alice", alice.password)


def test_a_missing_csrf_token_changes_nothing(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = _logged_in(app, alice)
    r = post(
        client,
        PAGE,
        data={"current_password": alice.password, "new_password": NEW, "new_password_again": NEW},
    )
    assert r.status_code == 400
    assert audit_rows(app, Event.CSRF_REFUSED)
    assert _password_is(app, "alice", alice.password)


def test_only_logged_in_employees_reach_the_page(app: Flask, people: dict[str, Person]) -> None:
    r = get(client_for(app, people["alice"].cert), PAGE)
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/login")


@pytest.mark.parametrize("back", [1, 2, 3, 4])
def test_none_of_the_last_four_passwords_comes_back(app: Flask, people: dict[str, Person], back: int) -> None:
    alice = people["alice"]
    client = _logged_in(app, alice)
    used = [alice.password]
    for n in range(4):
        new = f"Saffron-Meadow-Copper-{7391 + n}"
        assert _change(client, used[-1], new).status_code == 302, n
        used.append(new)
    # used[-1] is the current one; used[-back] is `back` passwords ago (1 = the current).
    r = _change(client, used[-1], used[-back])
    assert r.status_code == 400
    assert "last 4 passwords" in r.text
    # Five changes back, a password may return.
    assert _change(client, used[-1], used[0]).status_code == 302


def test_a_wrong_current_password_counts_and_changes_nothing(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = _logged_in(app, alice)
    r = _change(client, people["bob"].password, NEW)
    assert r.status_code == 403
    error = r.text.split('id="current-error"', 1)[1].split("</div>", 1)[0]
    assert "not correct" in error
    assert people["bob"].password not in r.text
    assert user_row(app, "alice").failed_logins == 1
    assert _password_is(app, "alice", alice.password)
    [refused] = audit_rows(app, Event.PASSWORD_CHANGE_REFUSED)
    assert refused.detail == "wrong_password"
    assert _home_ok(client)


def test_a_missing_current_password_is_not_an_attempt(app: Flask, people: dict[str, Person]) -> None:
    client = _logged_in(app, people["alice"])
    r = _change(client, "", NEW)
    assert r.status_code == 400
    assert "Enter your current password" in r.text
    assert user_row(app, "alice").failed_logins == 0
    assert [a.detail for a in audit_rows(app, Event.PASSWORD_CHANGE_REFUSED)] == ["current_password_missing"]


def test_wrong_current_passwords_lock_the_account_and_end_the_session(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(LOCKOUT_THRESHOLD=3)
    alice = people["alice"]
    client = _logged_in(app, alice)
    for _ in range(2):
        assert _change(client, "Not-Her-Password-0000", NEW).status_code == 403
    r = _change(client, "Not-Her-Password-0000", NEW)
    assert r.status_code == 403
    assert "locked" in r.text
    assert not _home_ok(client)  # this session ended
    assert user_row(app, "alice").locked_until is not None
    assert Event.ACCOUNT_LOCKED in events(app)  # the lockout is alerted, as at login
    # Locked: even the right password does not log in now.
    assert login(client_for(app, alice.cert), "alice", alice.password).status_code == 200
    assert _password_is(app, "alice", alice.password)


def test_the_lockout_counts_login_and_change_attempts_together(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(LOCKOUT_THRESHOLD=3)
    alice = people["alice"]
    for _ in range(2):
        assert login(client_for(app, alice.cert), "alice", "Not-Her-Password-0000").status_code == 200
    client = _logged_in(app, alice)  # a success resets the count
    assert user_row(app, "alice").failed_logins == 0
    _change(client, "Not-Her-Password-0000", NEW)
    assert user_row(app, "alice").failed_logins == 1


def test_no_password_reaches_the_audit_log_the_outbox_sessions_or_the_logs(
    app: Flask, people: dict[str, Person], caplog: pytest.LogCaptureFixture
) -> None:
    alice = people["alice"]
    caplog.set_level(logging.DEBUG)
    client = _logged_in(app, alice)
    _change(client, "Wrong-Current-Password-11", NEW)
    _change(client, alice.password, NEW, NEW + "typo")
    _change(client, alice.password, "Short-pass-1")
    assert _change(client, alice.password, NEW).status_code == 302
    recorded = _everything_recorded(app) + caplog.text
    for secret in (alice.password, NEW, "Wrong-Current-Password-11", "Short-pass-1", NEW + "typo"):
        assert secret not in recorded


def test_keypad_mode_enters_every_password_on_the_keypad(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(LOGIN_ENTRY="keypad")
    alice = people["alice"]
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    keys = layout(page.text)
    r = post(
        client,
        "/login",
        data={
            "csrf_token": csrf_token(page.text),
            "username": "alice",
            "keypad": spell(keys, alice.password),
        },
    )
    assert r.status_code == 302
    page = get(client, PAGE)
    assert 'type="password"' not in page.text
    assert "keypads.js" in page.text
    assert page.text.count('class="keypad"') == 3
    keys = layout(page.text)
    # Typed where the keypad is required: missing, whatever it says.
    r = post(
        client,
        PAGE,
        data={
            "csrf_token": csrf_token(page.text),
            "keypad": spell(keys, alice.password),
            "new_password": NEW,
            "new_password_again": NEW,
        },
    )
    assert r.status_code == 400
    assert "Enter a new password" in r.text
    page = get(client, PAGE)
    keys = layout(page.text)
    r = post(
        client,
        PAGE,
        data={
            "csrf_token": csrf_token(page.text),
            "keypad": spell(keys, alice.password),
            "new_keypad": spell(keys, NEW),
            "again_keypad": spell(keys, NEW),
        },
    )
    assert r.status_code == 302
    assert _password_is(app, "alice", NEW)


def test_a_keypad_layout_is_good_for_one_answer(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(LOGIN_ENTRY="keypad")
    alice = people["alice"]
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    keys = layout(page.text)
    post(
        client,
        "/login",
        data={
            "csrf_token": csrf_token(page.text),
            "username": "alice",
            "keypad": spell(keys, alice.password),
        },
    )
    page = get(client, PAGE)
    keys = layout(page.text)
    data = {
        "csrf_token": csrf_token(page.text),
        "keypad": spell(keys, "wrong"),
        "new_keypad": spell(keys, NEW),
        "again_keypad": spell(keys, NEW),
    }
    assert post(client, PAGE, data=data).status_code == 403
    data["keypad"] = spell(keys, alice.password)  # the same (spent) layout
    r = post(client, PAGE, data=data)
    assert r.status_code == 400
    assert "Enter your current password" in r.text
    assert _password_is(app, "alice", alice.password)


def test_keypad_pin_mode_asks_for_the_pin_and_takes_the_new_password_typed(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(LOGIN_ENTRY="keypad-pin")
    alice = people["alice"]
    pin = "739146"
    result = app.test_cli_runner().invoke(args=["users", "set-pin", "alice", "--pin-stdin"], input=pin + "\n")
    assert result.exit_code == 0, result.output
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    r = post(
        client,
        "/login",
        data={
            "csrf_token": csrf_token(page.text),
            "username": "alice",
            "password": alice.password,
            "keypad": spell(layout(page.text), pin),
        },
    )
    assert r.status_code == 302
    page = get(client, PAGE)
    assert page.text.count('class="keypad"') == 1  # the PIN's
    data = {"current_password": alice.password, "new_password": NEW, "new_password_again": NEW}
    r = post(client, PAGE, data={"csrf_token": csrf_token(page.text), **data})  # no PIN
    assert r.status_code == 400
    assert "current password and PIN" in r.text
    page = get(client, PAGE)
    r = post(
        client,
        PAGE,
        data={"csrf_token": csrf_token(page.text), "keypad": spell(layout(page.text), pin), **data},
    )
    assert r.status_code == 302
    assert _password_is(app, "alice", NEW)
