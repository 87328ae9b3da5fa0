"""The admin console's live sessions: who, from where, since when, idle for; end one (confirmed,
audited with the reason), end all of a user; a session shown by a short handle, never its id hash."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures.pki import TestCA
from tests.webapp.admin.conftest import REASON, add_person, confirm_post, logged_in
from tests.webapp.conftest import Person, csrf_token, get, post
from tests.webapp.helpers import audit_rows, events, live_sessions, user_row
from webapp.clock import FakeClock
from webapp.events import Event


def _session_of(app: Flask, username: str) -> str:
    [row] = [s for s in live_sessions(app) if s.user_id == user_row(app, username).id]
    return str(row.id_hash)


def test_the_page_shows_who_from_where_since_and_idle(
    app: Flask, ada: FlaskClient, people: dict[str, Person], clock: FakeClock
) -> None:
    logged_in(app, people["alice"], ip="10.0.0.7")
    id_hash = _session_of(app, "alice")
    clock.advance(dt.timedelta(minutes=4, seconds=5))
    before = len(audit_rows(app))
    page = get(ada, "/admin/sessions")
    assert page.status_code == 200
    assert page.text.count("<h1>") == 1
    [viewed] = audit_rows(app)[before:]
    assert viewed.event == Event.PAGE_VIEW
    assert viewed.detail == "live=2"
    row = page.text[page.text.index(">alice<") :]
    row = row[: row.index("</tr>")]
    assert "10.0.0.7" in row
    assert "2026-11-25 10:00 UTC" in row
    assert "<td>4 min 05 s</td>" in row  # idle for
    assert f"<code>{id_hash[:12]}</code>" in row
    assert id_hash not in page.text  # never the whole id hash
    assert "(this one: yours)" in page.text


def test_expired_and_ended_sessions_are_not_listed(
    app: Flask, ada: FlaskClient, people: dict[str, Person], clock: FakeClock
) -> None:
    alice = logged_in(app, people["alice"])
    logged_in(app, people["bob"])
    post(alice, "/logout", data={"csrf_token": csrf_token(get(alice, "/").text)})
    clock.advance(dt.timedelta(seconds=app.config["SESSION_IDLE_TIMEOUT"] - 60))
    assert ">bob<" in get(ada, "/admin/sessions").text  # ada's request keeps hers alive
    clock.advance(dt.timedelta(seconds=120))
    page = get(ada, "/admin/sessions").text
    assert ">bob<" not in page  # idle too long: not live, whatever the table still says
    assert ">alice<" not in page
    assert ">ada<" in page


def test_end_one_session(app: Flask, ada: FlaskClient, people: dict[str, Person]) -> None:
    first = logged_in(app, people["alice"], ip="10.0.0.7")
    handle = _session_of(app, "alice")[:12]
    second = logged_in(app, people["alice"], ip="10.0.0.8")
    response = confirm_post(ada, f"/admin/sessions/{handle}/end")
    assert response.status_code == 302
    [killed] = audit_rows(app, Event.SESSIONS_KILLED)
    assert killed.actor == "ada"
    assert killed.resource == f"user:{user_row(app, 'alice').id}"
    assert f"session={handle}" in killed.detail
    assert f"reason={REASON}" in killed.detail
    assert Event.SESSIONS_KILLED in events(app)
    assert get(first, "/").status_code == 302  # to the login
    assert get(second, "/").status_code == 200  # her other session goes on
    assert f"The session {handle} of alice ended." in get(ada, "/admin/sessions").text
    assert get(ada, f"/admin/sessions/{handle}/end").status_code == 404  # gone


def test_end_all_of_a_user_from_the_sessions_page(
    app: Flask, ada: FlaskClient, people: dict[str, Person]
) -> None:
    logged_in(app, people["bob"])
    logged_in(app, people["bob"])
    bob = user_row(app, "bob").id
    assert f"/admin/users/{bob}/end-sessions" in get(ada, "/admin/sessions").text
    assert confirm_post(ada, f"/admin/users/{bob}/end-sessions").status_code == 302
    assert not [s for s in live_sessions(app) if s.user_id == bob]


def test_your_own_session_is_ended_by_logging_out(app: Flask, ada: FlaskClient) -> None:
    handle = _session_of(app, "ada")[:12]
    assert f"/admin/sessions/{handle}/end" not in get(ada, "/admin/sessions").text
    response = confirm_post(ada, f"/admin/sessions/{handle}/end")
    assert response.status_code == 409
    assert "log out instead" in response.text
    assert get(ada, "/admin/sessions").status_code == 200
    assert audit_rows(app, Event.ADMIN_REFUSED)[-1].detail == "own_session"


@pytest.mark.parametrize(
    ("reason", "password", "status"),
    [(None, "Saffron-Meadow-Lattice-7394", 400), (REASON, None, 403), (REASON, "Wrong-Password-0000", 403)],
)
def test_ending_a_session_needs_the_confirmation(
    app: Flask,
    ada: FlaskClient,
    people: dict[str, Person],
    reason: str | None,
    password: str | None,
    status: int,
) -> None:
    alice = logged_in(app, people["alice"])
    handle = _session_of(app, "alice")[:12]
    response = confirm_post(ada, f"/admin/sessions/{handle}/end", reason=reason, password=password)
    assert response.status_code == status
    assert 'class="field-error"' in response.text
    assert get(alice, "/").status_code == 200
    assert not audit_rows(app, Event.SESSIONS_KILLED)


@pytest.mark.parametrize(
    "handle", ["0123456789ab", "0123456789AB", "0123", "0123456789abc", "%25", "4111111111111111"]
)
def test_unknown_or_malformed_handles_are_404(app: Flask, ada: FlaskClient, handle: str) -> None:
    assert get(ada, f"/admin/sessions/{handle}/end").status_code == 404


@pytest.mark.parametrize("who", ["alice", "audrey", "sam"])
def test_every_other_role_is_refused(
    app: Flask, ca: TestCA, tmp_path: Path, admin: Person, people: dict[str, Person], who: str
) -> None:
    logged_in(app, admin)
    handle = _session_of(app, "ada")[:12]
    person = add_person(app, ca, tmp_path, "sam", "supervisor") if who == "sam" else people[who]
    client = logged_in(app, person)
    assert get(client, "/admin/sessions").status_code == 403
    assert get(client, f"/admin/sessions/{handle}/end").status_code == 403
    data = {
        "csrf_token": csrf_token(get(client, "/").text),
        "reason": REASON,
        "confirm_typed": person.password,
    }
    assert post(client, f"/admin/sessions/{handle}/end", data=data).status_code == 403
    assert len([r for r in audit_rows(app, Event.ACCESS_DENIED) if r.actor == who]) == 3
    assert not audit_rows(app, Event.SESSIONS_KILLED)
