"""The admin console's alerts page (/admin/alerts): the outbox as its mails describe it, the mailer's
state, and the test alert, mailed by the real mailer to a real SMTP server (aiosmtpd on loopback).
On SQLite and MariaDB (the db_url fixture)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures.pki import TestCA
from tests.support import free_port
from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post
from tests.webapp.helpers import audit_rows, events
from tests.webapp.records.support import ADMIN_PASSWORD, SUPERVISOR_PASSWORD, add_person
from tests.webapp.smtpsink import Sink, smtp_server
from webapp import outbox
from webapp.clock import FakeClock
from webapp.db.tables import outbox as outbox_table
from webapp.events import ALERTS, Event

PAN = "4111 1111 1111 1111"
# What an outbox row carries and neither its mail nor the page may show.
PRIVATE = ["mallory", "10.9.8.7", "user:mallory", "crm:C-1234", PAN, "4111111111111111", "tcp/2222"]


def mail_config(port: int) -> dict[str, object]:
    return {"SMTP_PORT": port, "MAIL_FROM": "strongroom@vault.example", "ALERT_TO": "admin@example.com"}


@pytest.fixture
def admin(app: Flask, ca: TestCA, tmp_path: Path, owner_engine: sa.Engine) -> Person:
    """An administrator, and an empty outbox (adding them raised alerts; the owner may delete)."""
    person = add_person(app, ca, tmp_path, "root", "admin", ADMIN_PASSWORD)
    with owner_engine.begin() as conn:
        conn.execute(sa.delete(outbox_table))
    return person


def logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def plant(app: Flask, clock: FakeClock, event: str, n: int = 1) -> None:
    with app.extensions["strongroom"].engine.begin() as conn:
        for i in range(n):
            outbox.enqueue(
                conn,
                event,
                now=clock.now() + timedelta(seconds=i),
                actor="mallory",
                ip="10.9.8.7",
                resource="user:mallory tcp/2222",
                detail=f"crm:C-1234 pan={PAN}",
            )


def send(app: Flask) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["mail", "send"])
    return result.exit_code, result.output


def cells(html: str) -> list[list[str]]:
    """The outbox table's body rows, as text cells."""
    body = html.split("<caption>Outbox rows", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)[1:]  # after the header row
    return [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]


def test_the_admin_sees_the_outbox_as_its_mails_say_it_and_nothing_more(
    make_app: Callable[..., Flask], admin: Person, clock: FakeClock
) -> None:
    sink = Sink(refuse=True)
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port))
        plant(app, clock, str(Event.ACCOUNT_LOCKED))
        assert send(app)[0] == 1  # refused: the row stays pending with the class of the failure
        plant(app, clock, "ops.port_new", n=2)  # two findings: a row each (not coalesced)
        sink.refuse = False
        clock.advance(timedelta(minutes=5))
        plant(app, clock, str(Event.USER_DISABLED))
    with app.extensions["strongroom"].engine.begin() as conn:
        (added,) = [r for r in outbox.pending(conn) if r.event == Event.USER_DISABLED]
        outbox.mark_sent(conn, [added.id], now=clock.now())
    client = logged_in(app, admin)
    page = get(client, "/admin/alerts")
    assert page.status_code == 200
    html = page.text
    assert "<h1>Alerts</h1>" in html
    for private in PRIVATE:
        assert private not in html
    rows = cells(html)
    # Newest first: event, what the mail says, events, first, last, state, attempts, last error, sent.
    assert [r[0] for r in rows] == [
        str(Event.USER_DISABLED),
        "ops.port_new",
        "ops.port_new",
        str(Event.ACCOUNT_LOCKED),
    ]
    assert rows[0][1:3] == ["user disabled", "1"]
    assert rows[0][5:] == ["sent", "0", "", "2026-11-25 10:05"]
    locked = rows[3]
    assert locked[1:3] == ["account locked after failed logins", "1"]
    assert locked[5:8] == ["failed", "1", "SMTPDataError"]
    assert "Failed, retried on the next pass</dt><dd>1 row(s), 1 event(s)" in html
    assert "Queued (not tried yet)</dt><dd>2 row(s), 2 event(s)" in html
    assert "The mailer's last successful delivery</dt>\n  <dd>2026-11-25 10:05:00 UTC" in html
    (view,) = [r for r in audit_rows(app, Event.PAGE_VIEW) if r.resource == "/admin/alerts"]
    assert (view.actor, view.outcome) == ("root", "success")
    assert view.detail == "page=1 state=all rows=4"


def test_a_row_says_what_its_mail_says_for_every_kind_of_name(
    app: Flask, admin: Person, clock: FakeClock, owner_engine: sa.Engine
) -> None:
    """A burst is one row with its count and span; a name the mailer would not spell out (written into
    the table by hand: the app never does) is shown as the mail shows it, not as stored."""
    plant(app, clock, str(Event.LOGIN_OFF_HOURS))
    with app.extensions["strongroom"].engine.begin() as conn:
        for i in range(1, 12):
            outbox._add(
                conn, str(Event.LOGIN_OFF_HOURS), now=clock.now() + timedelta(minutes=i // 2), coalesce=True
            )
    with owner_engine.begin() as conn:
        conn.execute(
            sa.insert(outbox_table).values(
                created_at=clock.now().replace(tzinfo=None),
                last_at=clock.now().replace(tzinfo=None),
                event="<script>4111111111111111",
                actor="-",
                ip="-",
                resource="-",
                detail="-",
                n_events=1,
                attempts=0,
            )
        )
    html = get(logged_in(app, admin), "/admin/alerts").text
    rows = cells(html)
    assert rows[0][:3] == ["an unrecognised event", "an unrecognised event", "1"]
    assert rows[1][:5] == [
        str(Event.LOGIN_OFF_HOURS),
        "off-hours login (12 events)",
        "12",
        "2026-11-25 10:00",
        "2026-11-25 10:05",
    ]
    assert "<script>" not in html
    assert "4111111111111111" not in html


def test_paging_and_the_state_filter(app: Flask, admin: Person, clock: FakeClock) -> None:
    plant(app, clock, "ops.disk_full", n=60)
    with app.extensions["strongroom"].engine.begin() as conn:
        ids = [r.id for r in outbox.pending(conn, limit=100)]
        outbox.mark_failed(conn, ids[:3], error="TimeoutError")
    client = logged_in(app, admin)
    first = get(client, "/admin/alerts")
    assert len(cells(first.text)) == 50
    assert 'href="/admin/alerts?page=2">Older</a>' in first.text
    second = get(client, "/admin/alerts?page=2")
    assert len(cells(second.text)) == 10
    assert "Older</a>" not in second.text
    assert 'href="/admin/alerts?page=1">Newer</a>' in second.text
    failed = cells(get(client, "/admin/alerts?state=failed").text)
    assert [r[5:8] for r in failed] == [["failed", "1", "TimeoutError"]] * 3
    assert cells(get(client, "/admin/alerts?state=sent").text) == [["No alerts."]]
    assert cells(get(client, "/admin/alerts?page=9").text) == [["No alerts on this page."]]


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "page=-1",
        "page=abc",
        "page=100001",
        "state=bogus",
        "state=sent&state=failed",
        "sort=id",
        "page=1%00",
    ],
)
def test_paging_parameters_the_page_never_offers_are_refused(app: Flask, admin: Person, query: str) -> None:
    client = logged_in(app, admin)
    response = get(client, f"/admin/alerts?{query}")
    assert response.status_code == 400
    assert audit_rows(app, Event.INPUT_REFUSED)[-1].outcome == "failure"
    assert not [r for r in audit_rows(app, Event.PAGE_VIEW) if r.resource == "/admin/alerts"]


def test_the_test_alert_lands_in_the_outbox_and_the_real_mailer_sends_it(
    make_app: Callable[..., Flask], admin: Person
) -> None:
    sink = Sink()
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port))
        client = logged_in(app, admin)
        page = get(client, "/admin/alerts")
        assert "Send a test alert" in page.text
        done = post(client, "/admin/alerts/test", data={"csrf_token": csrf_token(page.text)})
        assert done.status_code == 302
        assert done.headers["Location"] == "/admin/alerts"
        assert Event.TEST_ALERT in ALERTS
        assert events(app).count(Event.TEST_ALERT) == 1
        (record,) = audit_rows(app, Event.TEST_ALERT)
        assert (record.actor, record.outcome, record.resource) == ("root", "success", "/admin/alerts")
        shown = get(client, "/admin/alerts").text
        assert '<p class="success" role="status">Test alert queued.' in shown
        assert cells(shown)[0][:6] == [
            str(Event.TEST_ALERT),
            "test alert (sent from the admin console)",
            "1",
            "2026-11-25 10:00",
            "2026-11-25 10:00",
            "queued",
        ]
        code, output = send(app)
    assert code == 0, output
    (mail,) = sink.messages
    assert mail.rcpt_tos == ["admin@example.com"]
    assert mail.message["Subject"] == "Strongroom: test alert (sent from the admin console)"
    assert "root" not in mail.raw.decode()
    after = get(client, "/admin/alerts").text
    assert cells(after)[0][5] == "sent"
    assert "Test alert queued" not in after  # the message is shown once
    assert "none in the outbox" not in after


def test_a_test_alert_whose_mail_fails_shows_the_failures_class(
    make_app: Callable[..., Flask], admin: Person
) -> None:
    app = make_app(**mail_config(free_port()))  # nothing listens there
    client = logged_in(app, admin)
    page = get(client, "/admin/alerts")
    assert post(client, "/admin/alerts/test", data={"csrf_token": csrf_token(page.text)}).status_code == 302
    assert send(app)[0] == 1
    row = cells(get(client, "/admin/alerts").text)[0]
    assert row[5:8] == ["failed", "1", "ConnectionRefusedError"]


def test_the_test_alert_needs_the_forms_token(app: Flask, admin: Person) -> None:
    client = logged_in(app, admin)
    get(client, "/admin/alerts")  # the session has a token; these requests do not carry it
    assert post(client, "/admin/alerts/test", data={"csrf_token": ""}).status_code == 400
    assert post(client, "/admin/alerts/test", data={"csrf_token": "forged"}).status_code == 400
    assert audit_rows(app, Event.TEST_ALERT) == []
    assert len(audit_rows(app, Event.CSRF_REFUSED)) == 2
    assert Event.TEST_ALERT not in events(app)


@pytest.fixture
def supervisor(app: Flask, ca: TestCA, tmp_path: Path) -> Person:
    return add_person(app, ca, tmp_path, "sue", "supervisor", SUPERVISOR_PASSWORD)


@pytest.mark.parametrize("who", ["alice", "audrey", "sue"])  # clerk, auditor, supervisor
@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/alerts"), ("POST", "/admin/alerts/test")])
def test_every_other_role_is_refused_and_audited(
    app: Flask, people: dict[str, Person], supervisor: Person, who: str, method: str, path: str
) -> None:
    person = supervisor if who == "sue" else people[who]
    client = logged_in(app, person)
    home = get(client, "/")
    assert "/admin/alerts" not in home.text  # no link to it in the header
    if method == "GET":
        response = get(client, path)
    else:
        response = post(client, path, data={"csrf_token": csrf_token(home.text)})
    assert response.status_code == 403
    denied = audit_rows(app, Event.ACCESS_DENIED)[-1]
    assert (denied.actor, denied.outcome, denied.detail) == (who, "failure", "role:admin")
    assert audit_rows(app, Event.TEST_ALERT) == []


def test_not_logged_in_goes_to_the_login(app: Flask, admin: Person) -> None:
    client = client_for(app, admin.cert)
    response = get(client, "/admin/alerts")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login"
    assert audit_rows(app, Event.ACCESS_DENIED)[-1].detail == "not_logged_in"


def test_the_admin_has_a_link_to_it(app: Flask, admin: Person) -> None:
    html = get(logged_in(app, admin), "/admin/alerts").text
    assert '<a href="/admin/alerts" aria-current="page">Alerts</a>' in html
    assert '<a href="/admin/budgets">Budgets and keys</a>' in html
