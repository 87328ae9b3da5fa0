"""The role-free login matrix, lockout, working hours, rehash-on-login."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.fixtures.pki import TestCA
from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post
from tests.webapp.helpers import audit_rows, events, refuse_audit_inserts, user_row
from webapp.auth import passwords
from webapp.clock import FakeClock
from webapp.events import Event

GENERIC = "Login failed."


def _is_logged_in(client: object) -> bool:
    r = get(client, "/")  # type: ignore[arg-type]
    return r.status_code == 200 and "Welcome" in r.text


def test_right_everything_logs_in(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    r = login(client, alice.username, alice.password)
    assert r.status_code == 302
    assert _is_logged_in(client)
    [ok] = audit_rows(app, Event.LOGIN_SUCCESS)
    assert (ok.actor, ok.outcome, ok.ip, ok.cert_serial) == (
        "alice",
        "success",
        "10.0.0.5",
        format(alice.cert.cert.serial_number, "x"),
    )


def test_a_login_records_when_and_from_where(app: Flask, people: dict[str, Person], clock: FakeClock) -> None:
    alice = people["alice"]
    assert user_row(app, "alice").last_login_at is None
    assert login(client_for(app, alice.cert, ip="10.0.0.5"), "alice", alice.password).status_code == 302
    row = user_row(app, "alice")
    assert (row.last_login_at, row.last_login_ip) == (clock.now().replace(tzinfo=None), "10.0.0.5")
    first = clock.now()
    clock.advance(timedelta(hours=2))
    client = client_for(app, alice.cert, ip="2001:db8::7")
    assert login(client, "alice", alice.password).status_code == 302
    row = user_row(app, "alice")
    assert (row.last_login_at, row.last_login_ip) == (clock.now().replace(tzinfo=None), "2001:db8::7")
    # The home page shows the login before this one, so a login that was not theirs stands out.
    home = get(client, "/")
    assert f"Your previous login: {first.strftime('%Y-%m-%d %H:%M')} UTC from 10.0.0.5" in home.text


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("Not-The-Password-123456", id="wrong"),
        pytest.param("", id="empty"),
    ],
)
def test_a_failed_login_records_no_last_login(app: Flask, people: dict[str, Person], password: str) -> None:
    login(client_for(app, people["alice"].cert), "alice", password)
    row = user_row(app, "alice")
    assert (row.last_login_at, row.last_login_ip) == (None, None)


def test_the_last_login_is_written_with_the_login_or_not_at_all(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    refuse_audit_inserts(owner_engine)  # the login's audit record fails: so must everything with it
    r = post(
        client,
        "/login",
        data={"csrf_token": csrf_token(page.text), "username": "alice", "password": alice.password},
    )
    assert r.status_code >= 500
    assert user_row(app, "alice").last_login_at is None


def test_each_role_s_home_page_says_what_the_role_does(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, people["audrey"].cert)
    assert login(client, "audrey", people["audrey"].password).status_code == 302
    home = get(client, "/")
    assert "<h1>Welcome, audrey: your auditor home page</h1>" in home.text
    assert "As an auditor" in home.text
    assert "<h2>What you can do here</h2>" in home.text
    assert 'href="/account/password">My password</a>: Change your own password.' in home.text
    assert 'href="/records/"' not in home.text  # an auditor sees no customer data


def test_login_page_tells_employees_credentials_are_personal(app: Flask, people: dict[str, Person]) -> None:
    page = get(client_for(app, people["alice"].cert), "/login")
    assert "personal" in page.text
    assert "recorded against your name" in page.text


def test_no_certificate_gets_no_login_page(app: Flask, people: dict[str, Person]) -> None:
    r = get(client_for(app, None), "/login")
    assert r.status_code == 403
    assert "<form" not in r.text
    assert [a.detail for a in audit_rows(app, Event.CERT_REFUSED)] == ["no_certificate"]


def test_unbound_certificate_gets_no_login_page(app: Flask, people: dict[str, Person], ca: TestCA) -> None:
    stranger = ca.issue("alice")  # same subject as a real user: subjects mean nothing, fingerprints do
    r = get(client_for(app, stranger), "/login")
    assert r.status_code == 403
    assert [a.detail for a in audit_rows(app, Event.CERT_REFUSED)] == ["certificate_not_bound"]


def test_revoked_certificate_gets_no_login_page(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    fp = hashlib.sha256(alice.cert.der).hexdigest()
    result = app.test_cli_runner().invoke(args=["certs", "unbind", fp, "--reason", "laptop stolen"])
    assert result.exit_code == 0, result.output
    assert get(client_for(app, alice.cert), "/login").status_code == 403


def test_disabled_user_gets_no_login_page(app: Flask, people: dict[str, Person]) -> None:
    assert app.test_cli_runner().invoke(args=["users", "disable", "alice"]).exit_code == 0
    assert get(client_for(app, people["alice"].cert), "/login").status_code == 403


@pytest.mark.parametrize(
    ("username", "password_of", "detail"),
    [
        ("alice", "bob", "wrong_password"),  # certificate of A, password of B
        ("bob", "bob", "username_does_not_match_certificate"),  # certificate of A, B's credentials
        ("alice", None, "wrong_password"),  # plainly wrong password
    ],
)
def test_wrong_credentials_fail_with_one_generic_message(
    app: Flask, people: dict[str, Person], username: str, password_of: str | None, detail: str
) -> None:
    password = people[password_of].password if password_of else "Not-The-Password-123456"
    client = client_for(app, people["alice"].cert)
    r = login(client, username, password)
    assert r.status_code == 200
    assert GENERIC in r.text
    assert not _is_logged_in(client)
    [failure] = audit_rows(app, Event.LOGIN_FAILURE)
    assert (failure.actor, failure.outcome, failure.detail) == ("alice", "failure", detail)
    assert password not in str([tuple(r) for r in audit_rows(app)])


def test_ten_failures_lock_for_thirty_minutes(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    for _ in range(10):
        assert GENERIC in login(client, "alice", "Wrong-Password-Attempt-99").text
    assert Event.ACCOUNT_LOCKED in events(app)
    assert user_row(app, "alice").locked_until is not None
    # Locked: even the right password fails, with the same message.
    assert GENERIC in login(client, "alice", alice.password).text
    assert audit_rows(app, Event.LOGIN_FAILURE)[-1].detail == "locked"
    clock.advance(timedelta(minutes=29))
    assert GENERIC in login(client, "alice", alice.password).text
    clock.advance(timedelta(minutes=2))
    assert login(client, "alice", alice.password).status_code == 302


def test_admin_can_unlock(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    for _ in range(10):
        login(client, "alice", "Wrong-Password-Attempt-99")
    assert app.test_cli_runner().invoke(args=["users", "unlock", "alice"]).exit_code == 0
    assert login(client, "alice", alice.password).status_code == 302
    assert Event.USER_UNLOCKED in events(app)


def test_success_resets_the_failure_count(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    for _ in range(9):
        login(client, "alice", "Wrong-Password-Attempt-99")
    assert login(client, "alice", alice.password).status_code == 302
    assert user_row(app, "alice").failed_logins == 0


@pytest.mark.parametrize("succeed", [True, False])
def test_off_hours_login_raises_an_event(
    app: Flask, people: dict[str, Person], clock: FakeClock, succeed: bool
) -> None:
    clock.advance(timedelta(days=3))  # Saturday
    alice = people["alice"]
    login(client_for(app, alice.cert), "alice", alice.password if succeed else "Wrong-Password-Attempt-99")
    [off] = audit_rows(app, Event.LOGIN_OFF_HOURS)
    assert off.outcome == ("success" if succeed else "failure")
    assert Event.LOGIN_OFF_HOURS in events(app)


def test_working_hours_are_timezone_aware(make_app: Callable[..., Flask], clock: FakeClock) -> None:
    # 10:00 UTC on a Wednesday is 19:00 in Tokyo: off hours there.
    app = make_app(WORKING_TIMEZONE="Asia/Tokyo")
    assert not app.extensions["strongroom"].hours.contains(clock.now())
    assert make_app().extensions["strongroom"].hours.contains(clock.now())


def test_in_hours_login_raises_no_event(app: Flask, people: dict[str, Person]) -> None:
    login(client_for(app, people["alice"].cert), "alice", people["alice"].password)
    assert audit_rows(app, Event.LOGIN_OFF_HOURS) == []


def test_every_attempt_is_audited(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, people["alice"].cert)
    for _ in range(3):
        login(client, "alice", "Wrong-Password-Attempt-99")
    login(client, "alice", people["alice"].password)
    assert len(audit_rows(app, Event.LOGIN_FAILURE)) == 3
    assert len(audit_rows(app, Event.LOGIN_SUCCESS)) == 1
    assert len(audit_rows(app, Event.LOGIN_PAGE)) == 4


def test_production_argon2_parameters_meet_owasp() -> None:
    hasher = passwords.make_hasher(
        time_cost=passwords.PRODUCTION_TIME_COST,
        memory_cost=passwords.PRODUCTION_MEMORY_COST_KIB,
        parallelism=passwords.PRODUCTION_PARALLELISM,
    )
    assert passwords.meets_owasp(hasher)
    assert not passwords.meets_owasp(passwords.make_hasher(time_cost=1, memory_cost=8, parallelism=1))


def test_login_rehashes_when_parameters_change(
    make_app: Callable[..., Flask], people: dict[str, Person], tmp_path: Path
) -> None:
    old_hash = user_row(make_app(), "alice").password_hash
    assert "t=1" in old_hash
    stronger = make_app(ARGON2_TIME_COST=2, ARGON2_MEMORY_COST=16)
    assert (
        login(client_for(stronger, people["alice"].cert), "alice", people["alice"].password).status_code
        == 302
    )
    new_hash = user_row(stronger, "alice").password_hash
    assert new_hash != old_hash
    assert "m=16,t=2" in new_hash


def _tampered(token: str) -> str:
    """One signature character changed where it carries six bits: replacing the last characters
    could leave the decoded signature unchanged (base64's spare bits), about 1 run in 1000."""
    i = len(token) - 5
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


def test_csrf_token_missing_or_wrong_is_refused(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    page = get(client, "/login")
    token = csrf_token(page.text)
    for data in (
        {"username": "alice", "password": alice.password},
        {"username": "alice", "password": alice.password, "csrf_token": _tampered(token)},
    ):
        r = post(client, "/login", data=data)
        assert r.status_code == 400
        assert "security token" in r.text
    assert not _is_logged_in(client)
    assert user_row(app, "alice").failed_logins == 0  # a refused request changes nothing
    assert len(audit_rows(app, Event.CSRF_REFUSED)) == 2
    assert events(app).count(Event.CSRF_REFUSED) == 2
