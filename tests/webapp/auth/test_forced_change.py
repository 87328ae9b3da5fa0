"""The one-time password an admin's reset leaves (users.must_change_password): it logs in once, is
spent at that very login, and the session opens nothing but the page that chooses a new password."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import argon2
import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.support import component_missing
from tests.webapp.auth.axe_check import blocking_axe_violations
from tests.webapp.auth.keypad_entry import layout, spell
from tests.webapp.conftest import CHEAP_ARGON2, Person, client_for, csrf_token, get, login, post
from tests.webapp.helpers import audit_rows, events, live_sessions, user_row
from tests.webapp.tls_server import Server, serve
from webapp.auth import passwords
from webapp.auth.service import SPENT_HASH
from webapp.clock import FakeClock, to_db
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log, outbox, password_history, sessions, users
from webapp.events import Event

OTP = "Tundra-Whistle-Beacon-6042"
NEW = "Saffron-Meadow-Copper-7391"
FORCED = "/account/new-password"


def _admin_reset(app: Flask, username: str, clock: FakeClock) -> None:
    """What an admin's reset leaves behind (console or CLI): a one-time password's hash, in the
    history too, and the must-change flag; the user's sessions ended."""
    hasher = app.extensions["strongroom"].hasher
    hashed = hasher.hash(OTP)
    now = to_db(clock.now())
    with app.extensions["strongroom"].engine.begin() as conn:
        user_id = conn.execute(sa.select(users.c.id).where(users.c.username == username)).scalar_one()
        conn.execute(
            sa.update(users)
            .where(users.c.id == user_id)
            .values(password_hash=hashed, must_change_password=True, password_changed_at=now)
        )
        conn.execute(
            sa.insert(password_history).values(user_id=user_id, password_hash=hashed, created_at=now)
        )
        conn.execute(
            sa.update(sessions)
            .where(sessions.c.user_id == user_id, sessions.c.ended_at.is_(None))
            .values(ended_at=now, end_reason="password_reset")
        )


def _otp_login(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    r = login(client, person.username, OTP)
    assert r.status_code == 302
    assert r.headers["Location"].endswith(FORCED)
    return client


def _choose(client: FlaskClient, new: str, again: str | None = None) -> TestResponse:
    page = get(client, FORCED)
    assert page.status_code == 200
    return post(
        client,
        FORCED,
        data={"csrf_token": csrf_token(page.text), "new_password": new, "new_password_again": again or new},
    )


def test_one_time_password_end_to_end(app: Flask, people: dict[str, Person], clock: FakeClock) -> None:
    alice = people["alice"]
    _admin_reset(app, "alice", clock)
    # The old password is gone.
    assert login(client_for(app, alice.cert), "alice", alice.password).status_code == 200
    client = _otp_login(app, alice)
    # Spent at the login: the stored hash is unusable from now on.
    row = user_row(app, "alice")
    assert row.password_hash == SPENT_HASH
    assert row.must_change_password
    [spent] = audit_rows(app, Event.ONE_TIME_PASSWORD_SPENT)
    assert (spent.actor, spent.resource) == ("alice", f"user:{row.id}")
    # Nothing else opens.
    for path in ("/", "/records/", "/account/password", "/login"):
        r = get(client, path)
        assert r.status_code == 302, path
        assert r.headers["Location"].endswith(FORCED), path
    assert len(audit_rows(app, Event.PASSWORD_CHANGE_REQUIRED)) == 4
    page = get(client, FORCED)
    assert "<h1>Choose a new password</h1>" in page.text
    assert 'aria-label="Main"' not in page.text  # no menu of pages that would not open
    assert "current_password" not in page.text  # the one-time password is spent: not asked again
    clock.advance(timedelta(minutes=1))
    r = _choose(client, NEW)
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/")
    home = get(client, "/")
    assert home.status_code == 200
    assert "Your new password is set" in home.text
    assert get(client, "/records/").status_code == 200
    row = user_row(app, "alice")
    assert not row.must_change_password
    assert row.password_changed_at == to_db(clock.now())
    [changed] = audit_rows(app, Event.PASSWORD_CHANGED)
    assert changed.detail == "forced_after_reset;other_sessions_ended=0"
    # Log out, the one-time password fails a second time, the new one works.
    post(client, "/logout", data={"csrf_token": csrf_token(home.text)})
    assert login(client_for(app, alice.cert), "alice", OTP).status_code == 200
    again = client_for(app, alice.cert)
    r = login(again, "alice", NEW)
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/")
    assert get(again, "/records/").status_code == 200
    assert [a.detail for a in audit_rows(app, Event.LOGIN_FAILURE)][-1] == "wrong_password"
    for kind in (Event.ONE_TIME_PASSWORD_SPENT, Event.PASSWORD_CHANGE_REQUIRED, Event.PASSWORD_CHANGED):
        assert kind not in events(app)  # audited, not alerted


def test_an_abandoned_change_leaves_no_working_password(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    alice = people["alice"]
    _admin_reset(app, "alice", clock)
    _otp_login(app, alice)  # and the browser is closed
    r = login(client_for(app, alice.cert), "alice", OTP)
    assert r.status_code == 200
    assert "Login failed." in r.text
    assert user_row(app, "alice").failed_logins == 1  # an attempt like any other
    assert user_row(app, "alice").password_hash == SPENT_HASH


def test_the_forced_session_may_log_out_fetch_static_files_and_answer_the_idle_warning(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    alice = people["alice"]
    _admin_reset(app, "alice", clock)
    client = _otp_login(app, alice)
    with get(client, "/static/strongroom.css") as css:
        assert css.status_code == 200
    assert get(client, "/account/still-here").status_code == 204
    page = get(client, FORCED)
    r = post(client, "/logout", data={"csrf_token": csrf_token(page.text)})
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/login")
    assert live_sessions(app) == []


def test_a_forced_session_cannot_post_elsewhere(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    alice = people["alice"]
    _admin_reset(app, "alice", clock)
    client = _otp_login(app, alice)
    page = get(client, FORCED)
    r = post(
        client,
        "/account/password",
        data={
            "csrf_token": csrf_token(page.text),
            "current_password": OTP,
            "new_password": NEW,
            "new_password_again": NEW,
        },
    )
    assert r.status_code == 302
    assert r.headers["Location"].endswith(FORCED)
    assert user_row(app, "alice").password_hash == SPENT_HASH


# (new, again, field, message, audit detail's start)
REFUSALS = [
    pytest.param(NEW, NEW + "x", "again", "not the same", "mismatch", id="mismatch"),
    pytest.param("", "", "new", "Enter a new password", "missing", id="missing"),
    pytest.param("Short-pass-1", None, "new", "at least 15 characters", "policy", id="too-short"),
    pytest.param(
        "alice-Saffron-Meadow-7391", None, "new", "must not contain the username", "policy", id="username"
    ),
    pytest.param("password12345678", None, "new", "too easy to guess", "policy", id="common"),
    pytest.param("Aa1" * 43, None, "new", "at most 128 characters", "policy", id="too-long"),
    pytest.param(
        "Saffron\u200bMeadow-Copper-7391", None, "new", "control characters", "policy", id="zero-width"
    ),
    pytest.param(OTP, None, "new", "last 4 passwords", "policy", id="the-one-time-password-itself"),
    pytest.param("<old>", None, "new", "last 4 passwords", "policy", id="the-password-before-the-reset"),
]


@pytest.mark.parametrize(("new", "again", "field", "message", "detail"), REFUSALS)
def test_the_forced_change_applies_the_policy_and_history(
    app: Flask,
    people: dict[str, Person],
    clock: FakeClock,
    new: str,
    again: str | None,
    field: str,
    message: str,
    detail: str,
) -> None:
    alice = people["alice"]
    if new == "<old>":
        new = alice.password
    _admin_reset(app, "alice", clock)
    client = _otp_login(app, alice)
    page = get(client, FORCED)
    r = post(
        client,
        FORCED,
        data={
            "csrf_token": csrf_token(page.text),
            "new_password": new,
            "new_password_again": new if again is None else again,
        },
    )
    assert r.status_code == 400
    error = r.text.split(f'id="{field}-error"', 1)[1].split("</div>", 1)[0]
    assert message in error
    assert not re.search(r'type="password"[^>]*value=', r.text)
    if new:
        assert new[:60] not in r.text
    [refused] = audit_rows(app, Event.PASSWORD_CHANGE_REFUSED)
    assert refused.detail.startswith(detail)
    row = user_row(app, "alice")
    assert row.must_change_password
    assert row.password_hash == SPENT_HASH
    assert get(client, "/").headers["Location"].endswith(FORCED)  # still held on the page


def test_the_forced_change_ends_other_sessions_and_rotates(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    alice = people["alice"]
    _admin_reset(app, "alice", clock)
    first = _otp_login(app, alice)
    before = first.get_cookie("__Host-strongroom", domain="vault.example")
    assert before is not None
    r = _choose(first, NEW)
    assert r.status_code == 302
    after = first.get_cookie("__Host-strongroom", domain="vault.example")
    assert after is not None
    assert after.value != before.value
    assert len(live_sessions(app)) == 1


def test_without_a_pending_change_the_page_sends_to_the_ordinary_one(
    app: Flask, people: dict[str, Person]
) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    login(client, "alice", alice.password)
    r = get(client, FORCED)
    assert r.status_code == 302
    assert r.headers["Location"].endswith("/account/password")
    page = get(client, "/account/password")
    r = post(
        client,
        FORCED,
        data={"csrf_token": csrf_token(page.text), "new_password": NEW, "new_password_again": NEW},
    )
    assert r.status_code == 302
    assert passwords.verify(
        app.extensions["strongroom"].hasher, user_row(app, "alice").password_hash, alice.password
    )


def test_keypad_mode_chooses_the_new_password_on_the_keypad(
    make_app: Callable[..., Flask], people: dict[str, Person], clock: FakeClock
) -> None:
    app = make_app(LOGIN_ENTRY="keypad")
    alice = people["alice"]
    _admin_reset(app, "alice", clock)
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    r = post(
        client,
        "/login",
        data={
            "csrf_token": csrf_token(page.text),
            "username": "alice",
            "keypad": spell(layout(page.text), OTP),
        },
    )
    assert r.headers["Location"].endswith(FORCED)
    page = get(client, FORCED)
    assert 'type="password"' not in page.text
    assert page.text.count('class="keypad"') == 2
    keys = layout(page.text)
    r = post(
        client,
        FORCED,
        data={
            "csrf_token": csrf_token(page.text),
            "new_keypad": spell(keys, NEW),
            "again_keypad": spell(keys, NEW),
        },
    )
    assert r.status_code == 302
    assert not user_row(app, "alice").must_change_password


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(SPENT_HASH, id="spent"),
        pytest.param(
            "!" + "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", id="bang-prefixed-hash"
        ),
        pytest.param("", id="empty"),
        pytest.param(None, id="none"),
        pytest.param("not a hash", id="malformed"),
        pytest.param("$argon2id$v=19$m=8,t=1,p=1$broken", id="truncated"),
    ],
)
def test_verify_is_false_for_an_unusable_hash_and_never_raises(stored: str | None) -> None:
    hasher = passwords.make_hasher(time_cost=1, memory_cost=8, parallelism=1)
    for candidate in ("", OTP, "!", SPENT_HASH, "one-time-password-spent"):
        assert passwords.verify(hasher, stored, candidate) is False


def test_a_bang_prefixed_real_hash_is_refused_too() -> None:
    hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    real = hasher.hash(OTP)
    assert passwords.verify(hasher, real, OTP)
    assert not passwords.verify(hasher, "!" + real, OTP)


def test_the_one_time_password_is_nowhere_in_the_records_or_logs(
    app: Flask, people: dict[str, Person], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    alice = people["alice"]
    caplog.set_level(logging.DEBUG)
    _admin_reset(app, "alice", clock)
    client = _otp_login(app, alice)
    _choose(client, NEW, NEW + "x")
    _choose(client, NEW)
    login(client_for(app, alice.cert), "alice", OTP)
    with app.extensions["strongroom"].engine.connect() as conn:
        recorded = "\n".join(
            [
                *(repr(tuple(r)) for r in conn.execute(sa.select(audit_log))),
                *(repr(tuple(r)) for r in conn.execute(sa.select(outbox))),
                *conn.execute(sa.select(sessions.c.data)).scalars(),
            ]
        )
    for secret in (OTP, NEW):
        assert secret not in recorded
        assert secret not in caplog.text


# The keypads of the change page (static/keypads.js) in Chromium, under the CSP, as test_browser.py
# drives the login's keypad: a keypad deployment whose clerk was reset by an admin.
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def keypad_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("forced"), {"STRONGROOM_LOGIN_ENTRY": "keypad"}) as running:
        engine = make_engine(running.db_url)
        hashed = passwords.make_hasher(
            time_cost=CHEAP_ARGON2["ARGON2_TIME_COST"],
            memory_cost=CHEAP_ARGON2["ARGON2_MEMORY_COST"],
            parallelism=CHEAP_ARGON2["ARGON2_PARALLELISM"],
        ).hash(OTP)
        with engine.begin() as conn:
            conn.execute(
                sa.update(users)
                .where(users.c.username == "alice")
                .values(password_hash=hashed, must_change_password=True)
            )
        engine.dispose()
        yield running


def _click(page: Any, pad: str, password: str) -> None:
    tokens = dict(
        page.eval_on_selector_all(
            f"{pad} button[data-token]", "buttons => buttons.map(b => [b.textContent, b.dataset.token])"
        )
    )
    for char in password:
        page.click(f'{pad} button[data-token="{tokens[char]}"]')


def test_the_forced_change_on_keypads_in_a_real_browser(
    keypad_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (os.path.exists(CHROMIUM) and shutil.which("chromium")):
        component_missing("chromium is not installed (scripts/debian-packages.txt)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        component_missing("playwright is not installed (requirements-dev.txt)")
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(keypad_server.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cert, key = keypad_server.alice
    base = f"https://127.0.0.1:{keypad_server.port}"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu", "--no-first-run"])
        context = browser.new_context(
            client_certificates=[{"origin": base, "certPath": str(cert), "keyPath": str(key)}]
        )
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "alice")
            _click(page, "#keypad", OTP)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            assert page.url.endswith(FORCED)
            assert page.locator("h1").text_content() == "Choose a new password"
            assert blocking_axe_violations(page) == []
            # A refusal first: the two entries differ; shown next to the field, still accessible.
            _click(page, "div[data-value='new_keypad-value']", NEW)
            _click(page, "div[data-value='again_keypad-value']", NEW + "x")
            page.click("button:has-text('Set my new password')")
            page.wait_for_load_state()
            assert "not the same" in (page.text_content("#again-error") or "")
            assert blocking_axe_violations(page) == []
            _click(page, "div[data-value='new_keypad-value']", NEW)
            _click(page, "div[data-value='again_keypad-value']", NEW)
            assert page.text_content("#new_keypad-count") == str(len(NEW))
            assert NEW not in page.input_value("#new_keypad-value")  # tokens, never characters
            page.click("button:has-text('Set my new password')")
            page.wait_for_load_state()
            assert page.url == f"{base}/"
        finally:
            context.close()
            browser.close()
    engine = make_engine(keypad_server.db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(users).where(users.c.username == "alice")).one()
    finally:
        engine.dispose()
    assert not row.must_change_password
    assert passwords.verify(
        passwords.make_hasher(time_cost=1, memory_cost=8, parallelism=1), row.password_hash, NEW
    )
    assert [p for p in problems if "Content Security Policy" in p or "Refused" in p] == []


def test_the_cli_reset_s_one_time_password_works_once(app: Flask, people: dict[str, Person]) -> None:
    """The same flow from the admin's real reset (`users reset-password`, webapp/admin/service.py)."""
    alice = people["alice"]
    result = app.test_cli_runner().invoke(args=["users", "reset-password", "alice"])
    assert result.exit_code == 0, result.output
    found = re.search(r"one-time password[^:]*: (\S+)", result.output)
    assert found
    one_time = found.group(1)
    client = client_for(app, alice.cert)
    r = login(client, "alice", one_time)
    assert r.headers["Location"].endswith(FORCED)
    assert get(client, "/records/").headers["Location"].endswith(FORCED)
    assert _choose(client, NEW).status_code == 302
    assert get(client, "/records/").status_code == 200
    assert login(client_for(app, alice.cert), "alice", one_time).status_code == 200  # spent
    assert login(client_for(app, alice.cert), "alice", NEW).status_code == 302
    assert one_time not in "\n".join(repr(tuple(a)) for a in audit_rows(app))
