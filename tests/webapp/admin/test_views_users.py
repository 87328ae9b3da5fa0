"""The admin console's users pages: the list, add, disable/enable, unlock, change role, reset password
(a one-time password, shown once), end sessions. Each change confirmed (reason + password) and
audited with its reason; each page refused (403, audited) for every other role."""

from __future__ import annotations

import hashlib
import html as html_text
import logging
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures.pki import TestCA
from tests.webapp.admin.conftest import ADMIN_PASSWORDS, REASON, add_person, confirm_post, logged_in
from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post
from tests.webapp.helpers import audit_rows, events, live_sessions, user_row
from webapp.admin import service
from webapp.auth import passwords
from webapp.db.tables import audit_log, outbox, sessions
from webapp.events import Event
from webapp.services import services
from webapp.unit import Origin

_OTP = re.compile(r'<output aria-label="One-time password">([^<]+)</output>')


def _otp(html: str) -> str:
    m = _OTP.search(html)
    assert m, "no one-time password on the page"
    return m.group(1)


def _uid(app: Flask, name: str) -> int:
    return int(user_row(app, name).id)


def _nowhere_but_the_page(app: Flask, secret: str, caplog: pytest.LogCaptureFixture) -> None:
    """The one-time password is in no audit record, outbox row, session and log line."""
    with app.extensions["strongroom"].engine.connect() as conn:
        for table in (audit_log, outbox, sessions):
            for row in conn.execute(sa.select(table)):
                assert secret not in " ".join(str(v) for v in row), table.name
    assert secret not in caplog.text


# --- pages and who may open them -------------------------------------------------------------------

PAGES = [
    "/admin/users",
    "/admin/users/new",
    "/admin/users/1/disable",
    "/admin/users/1/enable",
    "/admin/users/1/unlock",
    "/admin/users/1/reset-password",
    "/admin/users/1/end-sessions",
    "/admin/users/1/role",
]


@pytest.mark.parametrize("path", PAGES)
def test_each_page_opens_for_an_admin_and_is_audited(app: Flask, ada: FlaskClient, path: str) -> None:
    before = len(audit_rows(app))
    page = get(ada, path)
    assert page.status_code == 200
    assert page.text.count("<h1>") == 1
    new = audit_rows(app)[before:]
    expected = Event.USERS_LISTED if path == "/admin/users" else Event.PAGE_VIEW
    assert [r.event for r in new] == [expected]
    assert new[0].actor == "ada"


def test_the_list_shows_role_state_last_login_and_certificates(
    app: Flask, ada: FlaskClient, people: dict[str, Person]
) -> None:
    logged_in(app, people["alice"], ip="10.0.0.7")
    page = get(ada, "/admin/users").text
    alice = page[page.index(">alice<") :]
    alice = alice[: alice.index("</tr>")]
    assert "clerk" in alice
    assert "active" in alice
    assert "from 10.0.0.7" in alice
    assert user_row(app, "alice").last_login_ip == "10.0.0.7"
    assert hashlib.sha256(people["alice"].cert.der).hexdigest() in alice
    assert "CN=alice" in alice
    assert "unknown" in alice  # no CRL configured: never "not revoked"


@pytest.mark.parametrize("who", ["alice", "audrey", "sam"])
@pytest.mark.parametrize("path", ["/admin/users", "/admin/users/new", "/admin/users/1/role", "/admin/"])
def test_every_other_role_is_refused_and_audited(
    app: Flask, people: dict[str, Person], supervisor: Person, who: str, path: str
) -> None:
    person = supervisor if who == "sam" else people[who]
    client = logged_in(app, person)
    before = len(audit_rows(app))
    page = get(client, path)
    assert page.status_code == 403
    [denied] = [r for r in audit_rows(app)[before:] if r.event == Event.ACCESS_DENIED]
    assert denied.actor == who
    assert denied.detail == "role:admin"


@pytest.mark.parametrize("who", ["alice", "audrey", "sam"])
def test_every_other_role_is_refused_a_change(
    app: Flask, people: dict[str, Person], supervisor: Person, who: str
) -> None:
    person = supervisor if who == "sam" else people[who]
    client = logged_in(app, person)
    token = csrf_token(get(client, "/").text)
    data = {"csrf_token": token, "reason": REASON, "confirm_typed": person.password}
    response = post(client, f"/admin/users/{_uid(app, 'bob')}/disable", data=data)
    assert response.status_code == 403
    assert user_row(app, "bob").active
    assert not audit_rows(app, Event.USER_DISABLED)


def test_anonymous_goes_to_the_login(app: Flask, people: dict[str, Person]) -> None:
    response = get(client_for(app, people["alice"].cert), "/admin/users")
    assert response.status_code == 302
    assert response.headers["Location"].endswith("/login")


# --- adding a user: a one-time password, shown once ------------------------------------------------


def test_add_user_generates_a_one_time_password_shown_once(
    app: Flask, ada: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    response = confirm_post(ada, "/admin/users/new", username="carol", role="supervisor")
    assert response.status_code == 200
    assert "Location" not in response.headers  # shown on this page, never through a URL
    assert response.headers["Cache-Control"] == "no-store"
    otp = _otp(response.text)
    row = user_row(app, "carol")
    assert row.role == "supervisor"
    assert row.must_change_password
    assert passwords.verify(services(app).hasher, row.password_hash, otp)
    assert passwords.check_policy(services(app).hasher, otp, username="carol", recent_hashes=[]).ok
    [added] = audit_rows(app, Event.USER_ADDED)[-1:]
    assert added.actor == "ada"
    assert f"reason={REASON}" in added.detail
    assert "one_time=yes" in added.detail
    assert Event.USER_ADDED in events(app)
    assert otp not in get(ada, "/admin/users").text  # once
    _nowhere_but_the_page(app, otp, caplog)


@pytest.mark.parametrize(
    ("username", "message", "kept"),
    [
        ("", "usernames are 1-64 characters", ""),
        ("-eve", "starting with a letter or digit", "-eve"),
        ("eve vil", "usernames are 1-64 characters", "eve vil"),
        ("évé", "usernames are 1-64 characters", "évé"),
        ("e" * 65, "usernames are 1-64 characters", "e" * 65),
        ("alice", "alice already exists", "alice"),
        ("4111111111111111", "card number", ""),  # never written back
        ("<script>x</script>", "usernames are 1-64 characters", "&lt;script&gt;x&lt;/script&gt;"),
    ],
)
def test_add_user_typos_are_shown_next_to_the_field(
    app: Flask, ada: FlaskClient, username: str, message: str, kept: str
) -> None:
    users_before = len(service_users(app))
    response = confirm_post(ada, "/admin/users/new", username=username, role="clerk")
    assert response.status_code == 400
    html = response.text
    assert 'id="username-error"' in html
    error = html[html.index('id="username-error"') :]
    assert message in error[: error.index("</span>")]
    assert f'value="{kept}"' in html
    assert ADMIN_PASSWORDS["ada"] not in html  # the confirmation password is never written back
    assert len(service_users(app)) == users_before
    [invalid] = audit_rows(app, Event.FORM_INVALID)
    assert invalid.detail == "fields:username"
    assert Event.FORM_INVALID not in events(app)  # a typo: audited, not alerted
    assert not audit_rows(app, Event.STEPUP_SUCCESS)  # a typo asks no password


def service_users(app: Flask) -> list[sa.Row]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT username FROM users")))


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        ({"role": "root"}, "not one of the roles"),  # a select's value outside its options
        ({"role": "clerk", "is_admin": "1"}, "unknown parameter"),
        ({"role": "clerk", "username": ["a", "b"]}, "more than once"),
    ],
)
def test_add_user_hostile_shapes_are_refused_and_alerted(
    app: Flask, ada: FlaskClient, data: dict[str, object], refusal: str
) -> None:
    page = get(ada, "/admin/users/new")
    fields = {"username": "eve", "reason": REASON, "confirm_typed": ADMIN_PASSWORDS["ada"], **data}
    response = post(ada, "/admin/users/new", data={"csrf_token": csrf_token(page.text), **fields})
    assert response.status_code == 400
    assert refusal in response.text
    assert Event.INPUT_REFUSED in events(app)
    assert len(service_users(app)) == 4


def test_a_change_without_csrf_token_is_refused(app: Flask, ada: FlaskClient) -> None:
    data = {"username": "eve", "role": "clerk", "reason": REASON, "confirm_typed": ADMIN_PASSWORDS["ada"]}
    response = post(ada, "/admin/users/new", data=data)
    assert response.status_code == 400
    assert audit_rows(app, Event.CSRF_REFUSED)


# --- confirmation ----------------------------------------------------------------------------------


WRONG = "Wrong-Password-Guess-1234"


@pytest.mark.parametrize(
    ("reason", "password", "status", "message", "event"),
    [
        (None, ADMIN_PASSWORDS["ada"], 400, "at least 10 characters", Event.CONFIRM_REFUSED),
        ("too short", ADMIN_PASSWORDS["ada"], 400, "at least 10 characters", Event.CONFIRM_REFUSED),
        ("x" * 141, ADMIN_PASSWORDS["ada"], 400, "at most 140 characters", Event.CONFIRM_REFUSED),
        ("x" * 401, ADMIN_PASSWORDS["ada"], 400, "cannot be longer than 400", Event.FORM_INVALID),
        ("card 4111 1111 1111 1111 lost", ADMIN_PASSWORDS["ada"], 400, "card number", Event.CONFIRM_REFUSED),
        ("account 12345678901 closed", ADMIN_PASSWORDS["ada"], 400, "long digit runs", Event.CONFIRM_REFUSED),
        ("zero\u200bwidth reason here", ADMIN_PASSWORDS["ada"], 400, "invisible", Event.CONFIRM_REFUSED),
        (REASON, None, 403, "Your password is required", Event.CONFIRM_REFUSED),
        (REASON, "", 403, "Your password is required", Event.CONFIRM_REFUSED),
        (REASON, WRONG, 403, "The password is incorrect", Event.STEPUP_FAILURE),
        (REASON, ADMIN_PASSWORDS["abe"], 403, "The password is incorrect", Event.STEPUP_FAILURE),
    ],
)
def test_a_change_needs_a_reason_and_the_password(
    app: Flask,
    ada: FlaskClient,
    reason: str | None,
    password: str | None,
    status: int,
    message: str,
    event: Event,
) -> None:
    bob = _uid(app, "bob")
    response = confirm_post(ada, f"/admin/users/{bob}/disable", reason=reason, password=password)
    assert response.status_code == status
    assert message in response.text
    assert 'class="field-error"' in response.text
    assert user_row(app, "bob").active  # nothing changed
    assert not audit_rows(app, Event.USER_DISABLED)
    if password:
        assert password not in response.text
    if reason and ("4111" in reason or "12345678901" in reason):
        assert reason not in response.text  # a number is never written back
    assert len(audit_rows(app, event)) == 1
    assert user_row(app, "ada").failed_logins == (1 if event == Event.STEPUP_FAILURE else 0)


def test_wrong_confirmations_lock_the_admin_out_and_end_the_session(app: Flask, ada: FlaskClient) -> None:
    bob = _uid(app, "bob")
    threshold = app.config["LOCKOUT_THRESHOLD"]
    for _ in range(threshold - 1):
        assert (
            confirm_post(ada, f"/admin/users/{bob}/disable", password="Wrong-Password-1234").status_code
            == 403
        )
    last = confirm_post(ada, f"/admin/users/{bob}/disable", password="Wrong-Password-1234")
    assert last.status_code == 302
    assert last.headers["Location"].endswith("/login")
    assert audit_rows(app, Event.ACCOUNT_LOCKED)
    assert user_row(app, "ada").locked_until is not None
    assert get(ada, "/admin/users").status_code == 302  # the session has ended
    assert user_row(app, "bob").active


# --- each change, audited with its reason ------------------------------------------------------------


def _detail(app: Flask, event: Event) -> str:
    [row] = audit_rows(app, event)[-1:]
    assert row.actor == "ada"
    assert row.outcome == "success"
    return str(row.detail)


def test_disable_then_enable(app: Flask, ada: FlaskClient, people: dict[str, Person]) -> None:
    bob_client = logged_in(app, people["bob"])
    bob = _uid(app, "bob")
    response = confirm_post(ada, f"/admin/users/{bob}/disable")
    assert response.status_code == 302
    assert not user_row(app, "bob").active
    assert f"reason={REASON}" in _detail(app, Event.USER_DISABLED)
    assert "sessions_ended=1" in _detail(app, Event.USER_DISABLED)
    assert get(bob_client, "/").status_code == 302
    assert "bob is disabled; 1 session(s) ended." in get(ada, "/admin/users").text
    assert confirm_post(ada, f"/admin/users/{bob}/enable").status_code == 302
    assert user_row(app, "bob").active
    assert f"reason={REASON}" in _detail(app, Event.USER_ENABLED)
    assert "bob is enabled again." in get(ada, "/admin/users").text


def test_unlock(app: Flask, ada: FlaskClient, people: dict[str, Person]) -> None:
    bob_browser = client_for(app, people["bob"].cert)
    for _ in range(app.config["LOCKOUT_THRESHOLD"]):
        login(bob_browser, "bob", "Not-Bobs-Password-9876")
    assert user_row(app, "bob").locked_until is not None
    page = get(ada, "/admin/users").text
    assert "locked until" in page
    assert f"/admin/users/{_uid(app, 'bob')}/unlock" in page
    assert confirm_post(ada, f"/admin/users/{_uid(app, 'bob')}/unlock").status_code == 302
    row = user_row(app, "bob")
    assert row.locked_until is None
    assert row.failed_logins == 0
    assert f"reason={REASON}" in _detail(app, Event.USER_UNLOCKED)
    assert login(bob_browser, "bob", people["bob"].password).status_code == 302


def test_end_sessions(app: Flask, ada: FlaskClient, people: dict[str, Person]) -> None:
    first, second = logged_in(app, people["bob"]), logged_in(app, people["bob"])
    assert confirm_post(ada, f"/admin/users/{_uid(app, 'bob')}/end-sessions").status_code == 302
    assert "sessions_ended=2" in _detail(app, Event.SESSIONS_KILLED)
    assert f"reason={REASON}" in _detail(app, Event.SESSIONS_KILLED)
    assert get(first, "/").status_code == 302
    assert get(second, "/").status_code == 302


def test_ending_your_own_sessions_keeps_the_one_you_use(app: Flask, ada: FlaskClient, admin: Person) -> None:
    other = logged_in(app, admin)
    assert confirm_post(ada, f"/admin/users/{_uid(app, 'ada')}/end-sessions").status_code == 302
    assert "sessions_ended=1" in _detail(app, Event.SESSIONS_KILLED)
    assert get(other, "/").status_code == 302
    assert get(ada, "/admin/users").status_code == 200


def test_change_role(app: Flask, ada: FlaskClient, people: dict[str, Person]) -> None:
    alice_client = logged_in(app, people["alice"])
    page = get(ada, f"/admin/users/{_uid(app, 'alice')}/role").text
    assert '<option value="clerk" selected>' in page
    response = confirm_post(ada, f"/admin/users/{_uid(app, 'alice')}/role", role="supervisor")
    assert response.status_code == 302
    assert user_row(app, "alice").role == "supervisor"
    detail = _detail(app, Event.USER_ROLE_CHANGED)
    assert "role=clerk->supervisor" in detail
    assert f"reason={REASON}" in detail
    assert Event.USER_ROLE_CHANGED in events(app)
    assert get(alice_client, "/").status_code == 302  # logs in again, under the new role
    assert "alice is now supervisor" in get(ada, "/admin/users").text


def test_change_role_to_the_same_role_is_refused(app: Flask, ada: FlaskClient) -> None:
    response = confirm_post(ada, f"/admin/users/{_uid(app, 'alice')}/role", role="clerk")
    assert response.status_code == 409
    assert "already has the role clerk" in response.text
    assert user_row(app, "alice").role == "clerk"


def test_reset_password_gives_a_one_time_password_and_ends_sessions(
    app: Flask, ada: FlaskClient, people: dict[str, Person], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    alice_client = logged_in(app, people["alice"])
    lock = client_for(app, people["alice"].cert)
    for _ in range(3):
        login(lock, "alice", "Not-Alices-Password-1234")
    response = confirm_post(ada, f"/admin/users/{_uid(app, 'alice')}/reset-password")
    assert response.status_code == 200
    assert "Location" not in response.headers
    otp = _otp(response.text)
    row = user_row(app, "alice")
    assert row.must_change_password
    assert row.failed_logins == 0
    assert row.locked_until is None
    hasher = services(app).hasher
    assert passwords.verify(hasher, row.password_hash, otp)
    assert not passwords.verify(hasher, row.password_hash, people["alice"].password)
    assert not [s for s in live_sessions(app) if s.user_id == row.id]
    assert get(alice_client, "/").status_code == 302
    detail = _detail(app, Event.PASSWORD_RESET)
    assert "one_time=yes" in detail
    assert f"reason={REASON}" in detail
    _nowhere_but_the_page(app, otp, caplog)


def test_the_one_time_password_logs_in_once_into_the_forced_change(
    app: Flask, ada: FlaskClient, people: dict[str, Person]
) -> None:
    """The other half of the contract (webapp/auth: the login spends it and forces a change)."""
    otp = _otp(confirm_post(ada, f"/admin/users/{_uid(app, 'alice')}/reset-password").text)
    browser = client_for(app, people["alice"].cert)
    assert login(browser, "alice", people["alice"].password).status_code != 302  # the old one is dead
    first = login(browser, "alice", otp)
    assert first.status_code == 302
    assert first.headers["Location"].endswith("/account/new-password")
    again = login(client_for(app, people["alice"].cert), "alice", otp)
    assert again.status_code != 302  # spent


# --- nobody locks the admins out ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fields", "message"),
    [
        ("disable", {}, "you cannot disable yourself"),
        ("role", {"role": "clerk"}, "you cannot change the role of yourself"),
        ("reset-password", {}, "you cannot reset the password of yourself"),
    ],
)
def test_an_admin_cannot_disable_demote_or_reset_themselves(
    app: Flask, ada: FlaskClient, path: str, fields: dict[str, str], message: str
) -> None:
    response = confirm_post(ada, f"/admin/users/{_uid(app, 'ada')}/{path}", **fields)
    assert response.status_code == 409
    assert message in response.text
    row = user_row(app, "ada")
    assert row.active
    assert row.role == "admin"
    assert not row.must_change_password
    [refused] = audit_rows(app, Event.ADMIN_REFUSED)
    assert refused.detail.startswith("self:")


def test_the_last_active_admin_is_kept(app: Flask, ca: TestCA, tmp_path: Path, admin: Person) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["users", "disable", "ada"])
    assert result.exit_code == 1
    assert "last active admin" in result.output
    assert user_row(app, "ada").active
    [refused] = audit_rows(app, Event.ADMIN_REFUSED)
    assert refused.detail == "last_active_admin"
    with app.app_context():
        svc = services(app)
        uow = svc.unit(Origin(actor="test", ip="local"))
        ctx = service.AdminContext(uow=uow, hasher=svc.hasher, now=svc.clock.now())
        with pytest.raises(service.AdminError, match="last active admin"):
            service.change_role(ctx, "ada", "clerk")
        uow.rollback()
    # With a second admin, one may go; then the other is the last again.
    add_person(app, ca, tmp_path, "abe", "admin")
    assert runner.invoke(args=["users", "disable", "abe"]).exit_code == 0
    assert runner.invoke(args=["users", "disable", "ada"]).exit_code == 1


def test_an_admin_may_demote_another_admin(app: Flask, ca: TestCA, tmp_path: Path, ada: FlaskClient) -> None:
    add_person(app, ca, tmp_path, "abe", "admin")
    response = confirm_post(ada, f"/admin/users/{_uid(app, 'abe')}/role", role="auditor")
    assert response.status_code == 302
    assert user_row(app, "abe").role == "auditor"


@pytest.mark.parametrize(
    "path", ["/admin/users/999/disable", "/admin/users/0/role", "/admin/users/99999999999/unlock"]
)
def test_unknown_users_are_404(app: Flask, ada: FlaskClient, path: str) -> None:
    assert get(ada, path).status_code == 404


def test_the_one_time_password_passes_the_policy(app: Flask) -> None:
    with app.app_context():
        svc = services(app)
        ctx = service.AdminContext(uow=svc.unit(Origin()), hasher=svc.hasher, now=svc.clock.now())
        seen = {service.one_time_password(ctx, "carol") for _ in range(20)}
    assert len(seen) == 20
    for otp in seen:
        assert re.fullmatch(r"[A-HJ-NP-Za-km-np-z2-9]{5}(-[A-HJ-NP-Za-km-np-z2-9]{5}){3}", otp)
        assert passwords.check_policy(svc.hasher, otp, username="carol", recent_hashes=[]).ok


class _Structure(HTMLParser):
    """What axe would flag first: duplicate ids, fields without a label, labels inside labels, h1s."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.label_for: set[str] = set()
        self.fields: list[str | None] = []
        self.h1 = 0
        self.in_label = 0
        self.nested_labels = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(str(a["id"]))
        if tag == "label":
            self.nested_labels += self.in_label
            self.in_label += 1
            self.label_for.add(str(a.get("for")))
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.fields.append(a.get("id"))
        self.h1 += tag == "h1"

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self.in_label -= 1


def test_every_console_page_has_one_heading_and_labelled_fields(
    app: Flask, ada: FlaskClient, people: dict[str, Person]
) -> None:
    logged_in(app, people["bob"])
    alice = _uid(app, "alice")
    handle = re.findall(r"/admin/sessions/([0-9a-f]{12})/end", get(ada, "/admin/sessions").text)[0]
    fingerprint = hashlib.sha256(people["alice"].cert.der).hexdigest()
    pages = [
        get(ada, path).text
        for path in [
            *PAGES,
            "/admin/certificates",
            f"/admin/certificates/{fingerprint}/unbind",
            "/admin/sessions",
            f"/admin/sessions/{handle}/end",
        ]
    ]
    pages.append(confirm_post(ada, "/admin/users/new", username="x y", reason="short").text)  # errors
    pages.append(confirm_post(ada, "/admin/certificates", username="x y", pem="zz").text)
    pages.append(confirm_post(ada, f"/admin/users/{alice}/reset-password").text)  # the one-time password
    for html in pages:
        found = _Structure()
        found.feed(html)
        assert found.h1 == 1
        assert len(found.ids) == len(set(found.ids)), found.ids
        assert all(f in found.label_for for f in found.fields), (found.fields, found.label_for)
        assert found.nested_labels == 0


_KEY = re.compile(r'data-token="([0-9a-f]{8})">([^<]+)</button>')


def test_the_confirmation_is_clicked_where_passwords_are_entered_on_the_keypad(
    make_app: Callable[..., Flask], admin: Person, people: dict[str, Person]
) -> None:
    keypad_app = make_app(LOGIN_ENTRY="keypad")  # the same database, entered on the keypad
    client = client_for(keypad_app, admin.cert)

    def spell(page: str, secret: str) -> str:
        layout = {html_text.unescape(char): token for token, char in _KEY.findall(page)}
        return ".".join(layout[c] for c in secret)

    page = get(client, "/login").text
    data = {"csrf_token": csrf_token(page), "username": "ada", "keypad": spell(page, admin.password)}
    assert post(client, "/login", data=data).status_code == 302
    path = f"/admin/users/{_uid(keypad_app, 'bob')}/disable"
    page = get(client, path).text
    assert "keypad.js" in page
    assert 'type="password"' not in page
    data = {"csrf_token": csrf_token(page), "reason": REASON, "keypad": spell(page, admin.password)}
    assert post(client, path, data=data).status_code == 302
    assert not user_row(keypad_app, "bob").active
