"""The admin console's budgets and keys page (/admin/budgets): each user's request counts against
every window's alert and limit and their reveal counts against the reveal limits, who is refused now,
the whole vault's counts of both, keyd's state (unreachable shown as such), the stored ciphertexts
per key version; and lifting an employee's spent budgets, a confirmed change (reason + password),
audited and alerted, exact under concurrency. On SQLite and MariaDB (the db_url fixture; on MariaDB
the app runs as the user db/grants.sql sets up: no DELETE on counters)."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from datetime import timedelta
from html import escape as html_escape
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape as markup_escape
from werkzeug.test import TestResponse

from keyd.errors import Unavailable
from tests.fixtures.pki import TestCA
from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post
from tests.webapp.fakes import FakeVault
from tests.webapp.helpers import audit_rows, events, user_row
from tests.webapp.records.support import ADMIN_PASSWORD, SUPERVISOR_PASSWORD, add_person, reveal
from webapp.budgets import request_counters
from webapp.clock import FakeClock, to_db
from webapp.events import Event
from webapp.records import service as records
from webapp.records.cards import parse_pan

LIMIT = 8
HOURLY = {"scope": "employee", "window": 3600, "alert": 3, "limit": LIMIT}
DAILY = {"scope": "employee", "window": 86400, "alert": 100, "limit": None}
TOTAL = {"scope": "total", "window": 3600, "alert": 500, "limit": None}
BUDGETS = [HOURLY, DAILY, TOTAL]
REVEAL_LIMIT = 2  # an employee's reveals per minute; every other reveal window out of the way
REVEALS = {
    "employee": {"minute": REVEAL_LIMIT, "hour": 300, "day": 1000},
    "global": {"minute": 300, "hour": 3000, "day": 20000},
}
REASON = "ticket SR-2231: month-end reconciliation, checked with her manager"
SECOND_ADMIN_PASSWORD = "Juniper-Cascade-Lantern-3904"


@pytest.fixture
def admins(app: Flask, ca: TestCA, tmp_path: Path) -> dict[str, Person]:
    return {
        "root": add_person(app, ca, tmp_path, "root", "admin", ADMIN_PASSWORD),
        "ada": add_person(app, ca, tmp_path, "ada", "admin", SECOND_ADMIN_PASSWORD),
    }


@pytest.fixture
def budget_app(make_app: Callable[..., Flask], admins: dict[str, Person], people: dict[str, Person]) -> Flask:
    return make_app(REQUEST_BUDGETS=BUDGETS, REVEAL_BUDGETS=REVEALS)


def logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def spend(app: Flask, person: Person, n: int) -> list[int]:
    client = logged_in(app, person)
    return [get(client, "/").status_code for _ in range(n)]


def user_id(app: Flask, username: str) -> int:
    return int(user_row(app, username).id)


def counters(app: Flask) -> dict[tuple[str, int], tuple[int, Any]]:
    with app.extensions["strongroom"].engine.connect() as conn:
        rows = conn.execute(sa.select(request_counters)).all()
    return {(r.scope, int(r.window_seconds)): (int(r.n), r.window_start) for r in rows}


def lift(app: Flask, client: FlaskClient, username: str, **fields: str) -> TestResponse:
    page = get(client, f"/admin/budgets/{user_id(app, username)}/lift")
    assert page.status_code == 200, page.status_code
    data = {"csrf_token": csrf_token(page.text), **fields}
    return post(client, f"/admin/budgets/{user_id(app, username)}/lift", data=data)


def employee_rows(html: str) -> dict[str, list[str]]:
    body = html.split("<caption>Requests and reveals per user", 1)[1].split("</tbody>", 1)[0]
    found = {}
    for row in re.findall(r"<tr><th scope=\"row\">(.*?)</tr>", body, re.S):
        name, rest = row.split("</th>", 1)
        found[name] = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", rest, re.S)]
    return found


def tables_are_whole(html: str) -> None:
    """Every table has a caption and column headers, and every row as many cells as it has headers
    (what a screen reader needs to name each cell, and what axe checks in tests/e2e)."""
    tables = re.findall(r"<table>(.*?)</table>", html, re.S)
    assert tables
    for table in tables:
        assert re.match(r"\s*<caption>[^<]+", table), table[:200]
        columns = len(re.findall(r'<th scope="col">', table.split("</thead>", 1)[0]))
        assert columns > 0
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>", 1)[1], re.S):
            spans = re.findall(r'colspan="(\d+)"', row)
            cells = len(re.findall(r"<t[dh][ >]", row)) - len(spans) + sum(int(n) for n in spans)
            assert cells == columns, row


def test_the_admin_sees_each_users_usage_the_totals_keyd_and_the_key_versions(
    budget_app: Flask,
    admins: dict[str, Person],
    people: dict[str, Person],
    vault: FakeVault,
    clock: FakeClock,
) -> None:
    app = budget_app
    assert spend(app, people["alice"], LIMIT + 1) == [200] * LIMIT + [429]
    assert spend(app, people["bob"], 3) == [200] * 3
    with app.extensions["strongroom"].engine.begin() as conn:
        record = records.add_record(conn, "C1234567", actor="alice", now=clock.now())
        card = records.NewCard(parse_pan("4111 1111 1111 1111"), "A Customer", "12/2030")
        records.add_card(conn, vault, record, card, actor="alice", now=clock.now())
        vault.key_version = 2
        records.add_card(conn, vault, record, card, actor="alice", now=clock.now())
        records.add_card(conn, vault, record, card, actor="alice", now=clock.now())
    client = logged_in(app, admins["root"])
    page = get(client, "/admin/budgets")
    assert page.status_code == 200
    html = page.text
    assert "<h1>Budgets and keys</h1>" in html
    rows = employee_rows(html)
    assert list(rows)[:2] == ["alice", "bob"]  # the most used first
    no_reveals = ["0", "0", "0"]
    assert rows["alice"] == [
        "clerk",
        "active",
        f"{LIMIT + 1} exhausted",
        str(LIMIT + 1),
        *no_reveals,
        "requests until 2026-11-25 11:00",
        "Lift the budgets of alice",
    ]
    assert rows["bob"] == [
        "clerk",
        "active",
        "3 alert reached",
        "3",
        *no_reveals,
        "no",
        "Lift the budgets of bob",
    ]
    assert rows["audrey"] == ["auditor", "active", "0", "0", *no_reveals, "no", "nothing used"]
    assert rows["root"][-1] == "yours: another administrator may lift it"
    assert '<th scope="col">Requests this hour (alert at 3, limit 8)</th>' in html
    assert '<th scope="col">Requests this day (alert at 100, no limit)</th>' in html
    assert '<th scope="col">Reveals this minute (limit 2)</th>' in html
    assert '<th scope="col">Reveals this day (limit 1000)</th>' in html
    # The whole vault: alice's served requests and bob's (her refused one is hers alone).
    assert re.search(r"<td>this hour</td><td>11</td><td>500</td><td>none</td><td>2026-11-25 11:00</td>", html)
    assert "<caption>Reveals of all users together</caption>" in html
    tables_are_whole(html)
    tables_are_whole(get(client, f"/admin/budgets/{user_id(app, 'alice')}/lift").text)
    assert "<tr><td>this minute</td><td>0</td><td>300</td><td>2026-11-25 10:01</td></tr>" in html
    assert '<p class="success">keyd is unsealed.</p>' in html
    assert "<tr><td>1</td><td>3</td></tr>" in html  # key version 1: one card's three fields
    assert "<tr><td>2</td><td>6</td></tr>" in html
    assert "<tr><td>cards</td><td>pan</td><td>2</td><td>2</td></tr>" in html
    assert "cannot be lifted from this console" in html  # keyd's decrypt budgets
    assert "4111" not in html
    (view,) = [r for r in audit_rows(app, Event.PAGE_VIEW) if r.resource == "/admin/budgets"]
    assert (view.actor, view.outcome, view.detail) == (
        "root",
        "success",
        "users=5 keyd=unsealed versions=1:3,2:6",
    )


@pytest.mark.parametrize(
    ("breakage", "shown"),
    [
        ("sealed", "keyd is sealed: it holds no key"),
        ("unreachable", "keyd is unreachable (Unavailable)"),
    ],
)
def test_keyd_sealed_or_unreachable_is_shown_as_such(
    budget_app: Flask, admins: dict[str, Person], vault: FakeVault, breakage: str, shown: str
) -> None:
    client = logged_in(budget_app, admins["root"])
    if breakage == "sealed":
        vault.sealed = True
    else:
        vault.error = Unavailable("keyd connection failed")
    page = get(client, "/admin/budgets")
    assert page.status_code == 200
    assert shown in page.text
    assert "keyd is unsealed" not in page.text
    assert "connection failed" not in page.text  # the class of the failure, never its text
    view = [r for r in audit_rows(budget_app, Event.PAGE_VIEW) if r.resource == "/admin/budgets"][-1]
    assert f"keyd={breakage}" in view.detail


def test_lifting_resets_only_that_employees_current_windows_and_is_audited(
    budget_app: Flask, admins: dict[str, Person], people: dict[str, Person]
) -> None:
    app = budget_app
    alice, bob = user_id(app, "alice"), user_id(app, "bob")
    assert spend(app, people["alice"], LIMIT + 2)[-1] == 429
    spend(app, people["bob"], 2)
    before = counters(app)
    client = logged_in(app, admins["root"])
    done = lift(app, client, "alice", reason=f"  {REASON} ", confirm_typed=ADMIN_PASSWORD)
    assert done.status_code == 302
    assert done.headers["Location"] == "/admin/budgets"
    after = counters(app)
    assert after[(f"user:{alice}", 3600)][0] == 0
    assert after[(f"user:{alice}", 86400)][0] == 0
    assert after[(f"user:{alice}", 3600)][1] == before[(f"user:{alice}", 3600)][1]  # same window, by UPDATE
    assert after[(f"user:{bob}", 3600)] == before[(f"user:{bob}", 3600)]
    assert after[(f"user:{bob}", 86400)] == before[(f"user:{bob}", 86400)]
    assert after[("total", 3600)][0] >= before[("total", 3600)][0]  # the whole vault's count is kept
    (lifted,) = audit_rows(app, Event.BUDGET_LIFTED)
    assert (lifted.actor, lifted.outcome, lifted.resource) == ("root", "success", "budget:user:alice")
    assert lifted.detail == f"reason: {REASON}; was employee/3600s={LIMIT + 2} employee/86400s={LIMIT + 2}"
    assert Event.BUDGET_LIFTED in events(app)  # alerted: mailed like any alert
    page = get(client, "/admin/budgets").text
    # She revealed nothing: the message names the budget that was lifted, as the audit detail does.
    assert '<p class="success" role="status">Request budget of alice lifted: the current windows' in page
    assert employee_rows(page)["alice"][2:8] == ["0", "0", "0", "0", "0", "no"]
    # alice is served again, up to the limit, and the alert is raised again when she reaches it.
    assert spend(app, people["alice"], LIMIT + 1) == [200] * LIMIT + [429]
    assert len(audit_rows(app, Event.BUDGET_LIMIT_REACHED)) == 2
    assert len([r for r in audit_rows(app, Event.BUDGET_ALERT) if r.actor == "alice"]) == 2


def test_a_counter_of_an_earlier_window_is_left_alone(
    budget_app: Flask, admins: dict[str, Person], people: dict[str, Person], clock: FakeClock
) -> None:
    app = budget_app
    alice = user_id(app, "alice")
    spend(app, people["alice"], 4)
    clock.advance(timedelta(minutes=90))  # 11:30: the hourly counter is of the 10:00 window now
    client = logged_in(app, admins["root"])
    assert lift(app, client, "alice", reason=REASON, confirm_typed=ADMIN_PASSWORD).status_code == 302
    after = counters(app)
    assert after[(f"user:{alice}", 3600)] == (4, to_db(clock.now().replace(hour=10, minute=0)))
    assert after[(f"user:{alice}", 86400)][0] == 0
    (lifted,) = audit_rows(app, Event.BUDGET_LIFTED)
    assert lifted.detail.endswith("; was employee/3600s=0 employee/86400s=4")


def a_card(app: Flask, vault: FakeVault, clock: FakeClock) -> str:
    """The reveal URL of a card's number, stored without a request (no one's request counts)."""
    with app.extensions["strongroom"].engine.begin() as conn:
        record = records.add_record(conn, "C7654321", actor="alice", now=clock.now())
        card = records.NewCard(parse_pan("4111 1111 1111 1111"), "A Customer", "12/2030")
        card_id = records.add_card(conn, vault, record, card, actor="alice", now=clock.now())
    return f"/records/{record}/reveal/card/{card_id}/pan"


def test_reveals_show_beside_requests_and_a_lift_resets_both(
    budget_app: Flask, admins: dict[str, Person], supervisor: Person, vault: FakeVault, clock: FakeClock
) -> None:
    app = budget_app
    url = a_card(app, vault, clock)
    sue_client = logged_in(app, supervisor)
    assert [reveal(sue_client, url, SUPERVISOR_PASSWORD).status_code for _ in range(REVEAL_LIMIT)] == [
        200
    ] * REVEAL_LIMIT
    sue = user_id(app, "sue")
    requests = counters(app)[(f"user:{sue}", 3600)][0]
    assert HOURLY["alert"] <= requests < LIMIT
    client = logged_in(app, admins["root"])
    html = get(client, "/admin/budgets").text
    row = employee_rows(html)["sue"]
    # At her minute's limit: her next reveal is refused until the minute renews; requests are served.
    assert row == [
        "supervisor",
        "active",
        f"{requests} alert reached",  # the forms and the reveals
        str(requests),
        f"{REVEAL_LIMIT} exhausted",
        str(REVEAL_LIMIT),
        str(REVEAL_LIMIT),
        "reveals until 2026-11-25 10:01",
        "Lift the budgets of sue",
    ]
    assert "<tr><td>this minute</td><td>2</td><td>300</td><td>2026-11-25 10:01</td></tr>" in html  # all users
    assert reveal(sue_client, url, SUPERVISOR_PASSWORD).status_code == 429  # as the page says

    form = get(client, f"/admin/budgets/{sue}/lift").text
    assert "<caption>Reveals of sue in the current windows (UTC)</caption>" in form
    assert f"<tr><td>this minute</td><td>{REVEAL_LIMIT + 1} <strong>exhausted</strong></td><td>2</td>" in form
    tables_are_whole(form)
    assert lift(app, client, "sue", reason=REASON, confirm_typed=ADMIN_PASSWORD).status_code == 302
    after = counters(app)
    assert {after[(f"{scope}user:{sue}", w)][0] for scope in ("", "reveal:") for w in (3600, 86400)} == {0}
    assert after[(f"reveal:user:{sue}", 60)][0] == 0
    (lifted,) = audit_rows(app, Event.BUDGET_LIFTED)
    spent = REVEAL_LIMIT + 1  # the refused reveal counts too
    assert lifted.detail.startswith(
        f"reason: {REASON}; was reveal:employee/60s={spent} reveal:employee/3600s={spent}"
    )
    page = get(client, "/admin/budgets").text
    assert (
        '<p class="success" role="status">Request and reveal budgets of sue lifted: '
        "the current windows count from 0 again.</p>"
    ) in page
    assert employee_rows(page)["sue"][4:8] == ["0", "0", "0", "no"]
    assert reveal(sue_client, url, SUPERVISOR_PASSWORD).status_code == 200


def test_a_lift_of_reveals_alone_names_reveals_alone(
    make_app: Callable[..., Flask],
    admins: dict[str, Person],
    supervisor: Person,
    vault: FakeVault,
    clock: FakeClock,
) -> None:
    """Without a per-user request budget only reveals are counted per user: those are lifted, and
    the message says so (before, the lift form said there was nothing to lift)."""
    app = make_app(REQUEST_BUDGETS=[TOTAL], REVEAL_BUDGETS=REVEALS)
    url = a_card(app, vault, clock)
    assert reveal(logged_in(app, supervisor), url, SUPERVISOR_PASSWORD).status_code == 200
    client = logged_in(app, admins["root"])
    html = get(client, "/admin/budgets").text
    assert "No per-user request budget is set: only reveals are limited per user." in html
    tables_are_whole(html)
    assert employee_rows(html)["sue"] == [
        "supervisor",
        "active",
        "1",
        "1",
        "1",
        "no",
        "Lift the budgets of sue",
    ]
    form = get(client, f"/admin/budgets/{user_id(app, 'sue')}/lift")
    assert "Nothing to lift" not in form.text
    assert "No per-user request budget is set." in form.text
    assert lift(app, client, "sue", reason=REASON, confirm_typed=ADMIN_PASSWORD).status_code == 302
    (lifted,) = audit_rows(app, Event.BUDGET_LIFTED)
    assert lifted.detail.endswith(
        "; was reveal:employee/60s=1 reveal:employee/3600s=1 reveal:employee/86400s=1"
    )
    assert (
        "Reveal budget of sue lifted: the current windows count from 0 again."
        in get(client, "/admin/budgets").text
    )


HOSTILE_NAME = '<img src=x onerror="alert(1)">&bob'


def test_the_page_the_lift_form_and_the_message_escape_a_users_name(
    budget_app: Flask, admins: dict[str, Person], people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    """A name the console never accepts (users add refuses it), planted in the database as a
    compromised tool or an old row could: shown as text everywhere, never as markup."""
    app = budget_app
    spend(app, people["bob"], 2)
    with owner_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE users SET username = :name WHERE username = 'bob'"), {"name": HOSTILE_NAME}
        )
    shown = str(markup_escape(HOSTILE_NAME))
    client = logged_in(app, admins["root"])
    html = get(client, "/admin/budgets").text
    assert HOSTILE_NAME not in html
    assert f'<th scope="row">{shown}</th>' in html
    assert f">Lift the budgets of {shown}</a>" in html
    bob = user_id(app, HOSTILE_NAME)
    form = get(client, f"/admin/budgets/{bob}/lift").text
    assert HOSTILE_NAME not in form
    assert f"<h1>Lift the budgets of {shown}</h1>" in form
    assert lift(app, client, HOSTILE_NAME, reason=REASON, confirm_typed=ADMIN_PASSWORD).status_code == 302
    page = get(client, "/admin/budgets").text
    assert HOSTILE_NAME not in page
    assert f'<p class="success" role="status">Request budget of {shown} lifted' in page


BAD_REASONS = [
    ("", "at least 10 characters"),
    ("too short", "at least 10 characters"),
    ("x" * 141, "at most 140 characters"),
    ("card 4111 1111 1111 1111 was used", "card number"),
    ("customer account 12345678 checked", "long digit runs"),
    ("looked into it\u200bthoroughly", "control or invisible characters"),
]


@pytest.mark.parametrize(("reason", "message"), BAD_REASONS)
def test_a_bad_reason_changes_nothing_and_is_shown_next_to_its_field(
    budget_app: Flask, admins: dict[str, Person], people: dict[str, Person], reason: str, message: str
) -> None:
    app = budget_app
    spend(app, people["alice"], 3)
    before = counters(app)
    client = logged_in(app, admins["root"])
    response = lift(app, client, "alice", reason=reason, confirm_typed=ADMIN_PASSWORD)
    assert response.status_code == 400
    assert 'aria-invalid="true" aria-describedby="reason-error" autofocus' in response.text
    error = re.search(r'<span class="field-error" id="reason-error">(.*?)</span>', response.text)
    assert error is not None
    assert message in error.group(1)
    assert ADMIN_PASSWORD not in response.text  # never echoed back
    kept = re.search(r'id="reason" name="reason"[^>]*value="([^"]*)"', response.text)
    assert kept is not None
    # What was typed is kept, unless it holds a card or account number.
    assert kept.group(1) == ("" if any(c.isdigit() for c in reason) else html_escape(reason, quote=True))
    assert "4111 1111 1111 1111" not in response.text
    assert "12345678" not in response.text
    user = f"user:{user_id(app, 'alice')}"
    assert counters(app)[(user, 3600)] == before[(user, 3600)]
    assert audit_rows(app, Event.BUDGET_LIFTED) == []
    (refused,) = audit_rows(app, Event.CONFIRM_REFUSED)
    assert (refused.actor, refused.resource) == ("root", "budget:user:alice")
    assert refused.detail.startswith("reason:")


@pytest.mark.parametrize(
    ("password", "detail"),
    [("", "password_missing"), ("Wrong-Password-Attempt-99", None)],
    ids=["missing", "wrong"],
)
def test_the_admins_password_is_required_and_a_wrong_one_counts(
    budget_app: Flask, admins: dict[str, Person], people: dict[str, Person], password: str, detail: str | None
) -> None:
    app = budget_app
    spend(app, people["alice"], 3)
    client = logged_in(app, admins["root"])
    response = lift(app, client, "alice", reason=REASON, confirm_typed=password)
    assert response.status_code == 403
    assert 'aria-describedby="confirm-error" autofocus' in response.text
    assert f'value="{REASON}"' in response.text  # the reason typed is kept
    assert counters(app)[(f"user:{user_id(app, 'alice')}", 3600)][0] == 3
    assert audit_rows(app, Event.BUDGET_LIFTED) == []
    if detail:
        assert audit_rows(app, Event.CONFIRM_REFUSED)[-1].detail == detail
    else:
        assert audit_rows(app, Event.STEPUP_FAILURE)[-1].actor == "root"
        assert user_row(app, "root").failed_logins == 1


def test_wrong_passwords_that_lock_the_admin_out_end_their_session(
    make_app: Callable[..., Flask], admins: dict[str, Person], people: dict[str, Person]
) -> None:
    app = make_app(REQUEST_BUDGETS=BUDGETS, REVEAL_BUDGETS=REVEALS, LOCKOUT_THRESHOLD=2)
    spend(app, people["alice"], 3)
    client = logged_in(app, admins["root"])
    assert (
        lift(app, client, "alice", reason=REASON, confirm_typed="Wrong-Password-Attempt-99").status_code
        == 403
    )
    locked = lift(app, client, "alice", reason=REASON, confirm_typed="Wrong-Password-Attempt-98")
    assert locked.status_code == 302
    assert locked.headers["Location"] == "/login"
    assert user_row(app, "root").locked_until is not None
    assert get(client, "/admin/budgets").status_code == 302  # the session has ended
    assert audit_rows(app, Event.BUDGET_LIFTED) == []
    assert counters(app)[(f"user:{user_id(app, 'alice')}", 3600)][0] == 3


def test_an_overlong_field_is_a_typo_shown_inline_not_an_alert(
    budget_app: Flask, admins: dict[str, Person], people: dict[str, Person]
) -> None:
    app = budget_app
    spend(app, people["alice"], 3)
    client = logged_in(app, admins["root"])
    response = lift(app, client, "alice", reason="r" * 500, confirm_typed=ADMIN_PASSWORD)
    assert response.status_code == 400
    assert 'id="reason-error">Reason: too long.' in response.text
    (invalid,) = audit_rows(app, Event.FORM_INVALID)
    assert (invalid.resource, invalid.outcome) == ("budget:user:alice", "failure")
    assert Event.FORM_INVALID not in events(app)
    assert audit_rows(app, Event.STEPUP_SUCCESS) == []  # the password was not even checked
    assert audit_rows(app, Event.BUDGET_LIFTED) == []


def test_nothing_to_lift_says_so(budget_app: Flask, admins: dict[str, Person]) -> None:
    app = budget_app
    client = logged_in(app, admins["root"])
    page = get(client, f"/admin/budgets/{user_id(app, 'audrey')}/lift")
    assert page.status_code == 200
    assert "Nothing to lift: audrey has no requests or\n  reveals counted" in page.text
    assert 'name="confirm_typed"' not in page.text
    response = post(
        client,
        f"/admin/budgets/{user_id(app, 'audrey')}/lift",
        data={"csrf_token": csrf_token(page.text), "reason": REASON, "confirm_typed": ADMIN_PASSWORD},
    )
    assert response.status_code == 409
    assert "Nothing to lift" in response.text
    assert audit_rows(app, Event.FORM_INVALID)[-1].detail == "nothing_to_lift"
    assert audit_rows(app, Event.BUDGET_LIFTED) == []
    assert audit_rows(app, Event.STEPUP_SUCCESS) == []


def test_an_admin_never_lifts_their_own_budget(budget_app: Flask, admins: dict[str, Person]) -> None:
    app = budget_app
    client = logged_in(app, admins["root"])
    home = get(client, "/admin/budgets")
    mine = f"/admin/budgets/{user_id(app, 'root')}/lift"
    assert get(client, mine).status_code == 403
    data = {"csrf_token": csrf_token(home.text), "reason": REASON, "confirm_typed": ADMIN_PASSWORD}
    assert post(client, mine, data=data).status_code == 403
    denied = audit_rows(app, Event.ACCESS_DENIED)
    assert [(r.actor, r.resource, r.detail) for r in denied] == [
        ("root", "budget:user:root", "budget_lift:own")
    ] * 2
    assert audit_rows(app, Event.BUDGET_LIFTED) == []


def test_an_unknown_user_is_404(budget_app: Flask, admins: dict[str, Person]) -> None:
    client = logged_in(budget_app, admins["root"])
    assert get(client, "/admin/budgets/999999/lift").status_code == 404
    assert get(client, "/admin/budgets/4111111111111111/lift").status_code == 404


@pytest.fixture
def supervisor(app: Flask, ca: TestCA, tmp_path: Path) -> Person:
    return add_person(app, ca, tmp_path, "sue", "supervisor", SUPERVISOR_PASSWORD)


@pytest.mark.parametrize("who", ["alice", "audrey", "sue"])  # clerk, auditor, supervisor
@pytest.mark.parametrize(("method", "path"), [("GET", ""), ("GET", "/{id}/lift"), ("POST", "/{id}/lift")])
def test_every_other_role_is_refused_and_audited(
    budget_app: Flask,
    people: dict[str, Person],
    supervisor: Person,
    who: str,
    method: str,
    path: str,
) -> None:
    app = budget_app
    spend(app, people["bob"], 2)
    person = supervisor if who == "sue" else people[who]
    client = logged_in(app, person)
    home = get(client, "/")
    assert "/admin/budgets" not in home.text
    url = "/admin/budgets" + path.format(id=user_id(app, "bob"))
    if method == "GET":
        response = get(client, url)
    else:
        data = {"csrf_token": csrf_token(home.text), "reason": REASON, "confirm_typed": person.password}
        response = post(client, url, data=data)
    assert response.status_code == 403
    denied = audit_rows(app, Event.ACCESS_DENIED)[-1]
    assert (denied.actor, denied.outcome, denied.detail) == (who, "failure", "role:admin")
    assert audit_rows(app, Event.BUDGET_LIFTED) == []
    assert counters(app)[(f"user:{user_id(app, 'bob')}", 3600)][0] == 2


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)


def test_a_lift_while_the_employee_hammers_loses_and_doubles_no_request(
    make_app: Callable[..., Flask], admins: dict[str, Person], people: dict[str, Person]
) -> None:
    """Two app instances (two workers), four clients of alice far past her limit, and a lift in the
    middle of it: every request of hers is counted once, before the lift (in the count it reset,
    which its audit record states) or after it (in the lifted window's count), and she is served at
    most her limit in each."""
    budgets = [{"scope": "employee", "window": 3600, "alert": 5, "limit": 10}]
    workers = [make_app(REQUEST_BUDGETS=budgets), make_app(REQUEST_BUDGETS=budgets)]
    clients = [logged_in(w, people["alice"]) for w in workers for _ in range(2)]
    admin = logged_in(workers[0], admins["root"])
    alice = user_id(workers[0], "alice")
    for c in clients[:1]:
        assert get(c, "/").status_code == 200  # something to lift, whatever the threads do
    page = get(admin, f"/admin/budgets/{alice}/lift")
    statuses: list[int] = []
    lifted: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients) + 1)
    errors: list[BaseException] = []

    def hammer(client: FlaskClient) -> None:
        try:
            barrier.wait()
            for _ in range(8):
                status = get(client, "/").status_code
                with lock:
                    statuses.append(status)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def lift_now() -> None:
        try:
            barrier.wait()
            data = {"csrf_token": csrf_token(page.text), "reason": REASON, "confirm_typed": ADMIN_PASSWORD}
            lifted.append(post(admin, f"/admin/budgets/{alice}/lift", data=data).status_code)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    _run([threading.Thread(target=hammer, args=(c,)) for c in clients] + [threading.Thread(target=lift_now)])
    assert errors == []
    assert lifted == [302]
    assert set(statuses) <= {200, 429}
    (record,) = audit_rows(workers[0], Event.BUDGET_LIFTED)
    match = re.search(r"was employee/3600s=(\d+)$", record.detail)
    assert match is not None
    reset = int(match.group(1))
    now = counters(workers[0])[(f"user:{alice}", 3600)][0]
    assert reset + now == 1 + len(statuses)  # each request counted exactly once
    assert statuses.count(200) + 1 <= min(reset, 10) + min(now, 10)


def test_two_admins_lifting_each_other_at_once_do_not_deadlock(
    make_app: Callable[..., Flask], admins: dict[str, Person]
) -> None:
    """Each lift locks both admins' counters in the one order before its own request charges its own:
    on MariaDB, two admins lifting each other's budgets at the same moment must both get through."""
    budgets = [{"scope": "employee", "window": 3600, "alert": 1000, "limit": None}, TOTAL]
    app = make_app(REQUEST_BUDGETS=budgets)
    pairs = [("root", "ada"), ("ada", "root")]
    clients = {who: logged_in(app, admins[who]) for who, _ in pairs}
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def lifts(who: str, other: str) -> None:
        try:
            client = clients[who]
            password = admins[who].password
            for _ in range(4):
                page = get(client, f"/admin/budgets/{user_id(app, other)}/lift")
                data = {"csrf_token": csrf_token(page.text), "reason": REASON, "confirm_typed": password}
                barrier.wait()
                results.append(
                    post(client, f"/admin/budgets/{user_id(app, other)}/lift", data=data).status_code
                )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    _run([threading.Thread(target=lifts, args=pair) for pair in pairs])
    assert errors == []
    assert len(results) == 8
    # 409: the other's lift had just set this admin's count to 0 when the form was read (nothing to lift).
    assert set(results) <= {302, 409}
    assert results.count(302) >= 2
    assert len(audit_rows(app, Event.BUDGET_LIFTED)) == results.count(302)
