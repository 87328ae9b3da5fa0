"""Each employee's activity: the list of employees and a page per employee, for supervisors and
auditors; logins, reveals with their reasons, refusals, counts over a period, the request budget."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.audit.support import link, resources, tbody, write_records
from tests.webapp.conftest import WEDNESDAY_10_UTC, Person, client_for, get, login
from tests.webapp.helpers import audit_rows, events, user_row
from webapp.budgets import request_counters
from webapp.clock import FakeClock, to_db
from webapp.events import Event

AsRole = Callable[[str], FlaskClient]


@pytest.mark.parametrize(
    ("role", "allowed"), [("auditor", True), ("supervisor", True), ("clerk", False), ("admin", False)]
)
def test_the_employee_list_is_for_supervisors_and_auditors(
    app: Flask, as_role: AsRole, staff: dict[str, Person], role: str, allowed: bool
) -> None:
    client = as_role(role)
    r = get(client, "/audit/activity")
    if not allowed:
        assert r.status_code == 403
        denied = audit_rows(app, Event.ACCESS_DENIED)[-1]
        assert (denied.resource, denied.detail) == ("audit.activity", "role:auditor|supervisor")
        assert "alice" not in r.text.split("<main>")[1]
        return
    assert r.status_code == 200
    assert "<h1>Employee activity</h1>" in r.text
    for name in staff:
        assert link(r.text, name) == f"/audit/activity/{user_row(app, name).id}"
    for role_name in ("clerk", "auditor", "supervisor", "admin"):
        assert f"<td>{role_name}</td>" in r.text
    viewed = audit_rows(app, Event.AUDIT_VIEWED)[-1]
    assert (viewed.resource, viewed.detail) == ("/audit/activity", f"employees={len(staff)}")


@pytest.mark.parametrize(
    ("role", "allowed"), [("auditor", True), ("supervisor", True), ("clerk", False), ("admin", False)]
)
def test_an_employee_page_is_for_supervisors_and_auditors(
    app: Flask, as_role: AsRole, role: str, allowed: bool
) -> None:
    alice = user_row(app, "alice")
    r = get(as_role(role), f"/audit/activity/{alice.id}")
    if allowed:
        assert r.status_code == 200
        assert "<h1>Activity of alice</h1>" in r.text
        viewed = audit_rows(app, Event.AUDIT_VIEWED)[-1]
        assert viewed.resource == f"user:{alice.id}"
        assert viewed.detail.startswith("activity days=7 ")
    else:
        assert r.status_code == 403
        assert audit_rows(app, Event.ACCESS_DENIED)[-1].resource == "audit.employee"
        assert not audit_rows(app, Event.AUDIT_VIEWED)


def test_the_page_shows_logins_reveals_refusals_and_counts(
    app: Flask, people: dict[str, Person], as_role: AsRole
) -> None:
    alice = people["alice"]
    login(client_for(app, alice.cert), "alice", "Wrong-Password-Attempt-99")
    clerk = client_for(app, alice.cert)
    login(clerk, "alice", alice.password)
    assert get(clerk, "/audit/").status_code == 403  # a refusal of hers
    write_records(
        app,
        "alice",
        1,
        event=Event.REVEALED,
        resource="card:ab12",
        detail="reason=customer called, ticket 8812",
    )
    write_records(app, "bob", 1, event=Event.REVEALED, resource="card:cd34", detail="reason=bob's reason")
    page = get(as_role("supervisor"), f"/audit/activity/{user_row(app, 'alice').id}").text
    logins = tbody(page, "Logins, successful and failed, newest first")
    assert "auth.login_success" in logins
    assert "auth.login_failure" in logins
    reveals = tbody(page, "Reveals with their reasons, newest first")
    assert "reason=customer called, ticket 8812" in reveals
    assert "bob&#39;s reason" not in reveals
    assert "bob's reason" not in reveals
    refusals = tbody(page, "Refused and failed actions, newest first")
    assert "request.access_denied" in refusals
    assert "auth.login_failure" in refusals
    assert "auth.login_success" not in refusals
    counts = tbody(page, "Records by event")
    assert "auth.login_failure</a></td><td>0</td><td>1</td>" in counts
    assert "reveal.done</a></td><td>1</td><td>0</td>" in counts
    # Every list leads on to the full log, filtered for her.
    more = link(page, "All reveals in the audit log")
    assert more is not None
    assert "actor=alice" in more
    assert "event=reveal.done" in more
    assert "since=" in more
    assert "reason=customer called" in get(as_role("auditor"), more).text


def test_the_period_bounds_the_counts_and_lists(app: Flask, clock: FakeClock, as_role: AsRole) -> None:
    old = WEDNESDAY_10_UTC - timedelta(days=10)
    write_records(
        app, "alice", 1, event=Event.REVEALED, resource="card:old", detail="reason=old", clock=clock, at=old
    )
    write_records(app, "alice", 1, event=Event.REVEALED, resource="card:new", detail="reason=new")
    supervisor = as_role("supervisor")
    alice = user_row(app, "alice").id
    week = get(supervisor, f"/audit/activity/{alice}").text
    assert resources(week, "Reveals with their reasons, newest first") == ["card:new"]
    assert "reveal.done</a></td><td>1</td>" in tbody(week, "Records by event")
    month = get(supervisor, f"/audit/activity/{alice}?days=30").text
    assert resources(month, "Reveals with their reasons, newest first") == ["card:new", "card:old"]
    assert "reveal.done</a></td><td>2</td>" in tbody(month, "Records by event")
    assert audit_rows(app, Event.AUDIT_VIEWED)[-1].detail.startswith("activity days=30 ")


def test_recent_records_are_paged(app: Flask, as_role: AsRole) -> None:
    app.config["AUDIT_PAGE_SIZE"] = 2
    write_records(app, "bob", 5)
    bob = user_row(app, "bob").id
    auditor = as_role("auditor")
    caption = "Records of bob, newest first"
    first = get(auditor, f"/audit/activity/{bob}?days=1").text
    assert resources(first, caption) == ["/w4", "/w3"]
    older = link(first, "Older records")
    assert older is not None
    assert older.startswith(f"/audit/activity/{bob}?")
    assert "days=1" in older
    second = get(auditor, older).text
    assert resources(second, caption) == ["/w2", "/w1"]
    newer = link(second, "Newer records")
    assert newer is not None
    assert resources(get(auditor, newer).text, caption) == ["/w4", "/w3"]


def test_the_budget_shows_this_window_and_counts_a_stale_one_as_zero(
    app: Flask, people: dict[str, Person], as_role: AsRole, clock: FakeClock
) -> None:
    alice = people["alice"]
    clerk = client_for(app, alice.cert)
    login(clerk, "alice", alice.password)
    for _ in range(3):
        get(clerk, "/")
    alice_id = user_row(app, "alice").id
    supervisor = as_role("supervisor")
    page = get(supervisor, f"/audit/activity/{alice_id}").text
    budget = tbody(page, "Requests of alice in the current windows")
    hourly = budget.split("<tr>")[1]
    assert hourly.startswith("<td>1 h</td>")
    assert "<td>3</td>" in hourly  # the three home pages (requests before the login are nobody's)
    assert "<td>300</td>" in hourly  # the default alert threshold
    # A counter last written in an earlier window is 0 now, whatever it says.
    with app.extensions["strongroom"].engine.begin() as conn:
        conn.execute(
            sa.update(request_counters)
            .where(request_counters.c.scope == f"user:{alice_id}")
            .values(n=999, window_start=to_db(WEDNESDAY_10_UTC - timedelta(days=3)))
        )
    budget = tbody(
        get(supervisor, f"/audit/activity/{alice_id}").text, "Requests of alice in the current windows"
    )
    assert "<td>999</td>" not in budget
    assert all(row.split("</td>")[1].strip() == "<td>0" for row in budget.split("<tr>")[1:])


@pytest.mark.parametrize("user_id", ["999", "0", "4111111111111111", "99999999999999999999999"])
def test_an_unknown_employee_is_404(app: Flask, as_role: AsRole, user_id: str) -> None:
    r = get(as_role("auditor"), f"/audit/activity/{user_id}")
    assert r.status_code == 404
    assert audit_rows(app, Event.NOT_FOUND)
    assert not audit_rows(app, Event.AUDIT_VIEWED)
    assert all("4111111111111111" not in (r.resource + r.detail) for r in audit_rows(app))


@pytest.mark.parametrize(
    ("query", "refusal"),
    [
        ("?days=2", "parameter 'days' not a valid choice"),
        ("?days=7%27+OR+1%3D1", "parameter 'days' not a valid choice"),
        ("?before=x", "parameter 'before' not a valid integer value"),
        ("?before=3&after=1", "parameter 'before' cannot be given with 'after'"),
        ("?actor=bob", "unknown parameter 'actor'"),
        ("?days=7&days=30", "parameter 'days' given more than once"),
        ("?days=%07", "parameter 'days' contains control or invalid characters"),
    ],
)
def test_tampered_activity_parameters_are_refused(
    app: Flask, as_role: AsRole, query: str, refusal: str
) -> None:
    alice = user_row(app, "alice").id
    r = get(as_role("supervisor"), f"/audit/activity/{alice}{query}")
    assert r.status_code == 400
    assert refusal in r.text.replace("&#39;", "'")
    assert Event.INPUT_REFUSED in events(app)
    assert not audit_rows(app, Event.AUDIT_VIEWED)


def test_the_employee_list_takes_no_parameters(app: Flask, as_role: AsRole) -> None:
    r = get(as_role("auditor"), "/audit/activity?user=1")
    assert r.status_code == 400
    assert "unknown parameter 'user'" in r.text.replace("&#39;", "'")
