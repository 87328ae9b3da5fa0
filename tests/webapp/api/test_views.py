"""The API's calls: what each answers, pagination, the matrix, budgets, and what is audited."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures.pki import TestCA
from tests.webapp.api.conftest import (
    VISA,
    api_get,
    api_post,
    assert_problem,
    audit_rows,
    card_body,
    counts,
    crm,  # noqa: F401 - fixture
    new_record,
)
from tests.webapp.conftest import HTTPS, client_for
from webapp.clock import FakeClock
from webapp.records.tables import cards, customer_records

MASTERCARD = "5555555555554444"
AMEX = "378282246310005"


def test_a_record_and_its_cards(app: Flask, api: FlaskClient) -> None:
    r = api_post(api, "/records", {"crm_ref": "C1234567"})
    assert r.status_code == 201
    record = r.json
    assert record is not None
    assert record["crm_ref"] == "C1234567"
    assert record["retired"] is False
    rid = record["id"]
    assert api_get(api, f"/records/{rid}").json == record

    added = [api_post(api, f"/records/{rid}/cards", card_body(pan=p)) for p in (VISA, MASTERCARD, AMEX)]
    assert [a.status_code for a in added] == [201, 201, 201]
    assert [(a.json or {})["brand"] for a in added] == ["visa", "mastercard", "amex"]
    assert [(a.json or {})["last4"] for a in added] == ["1111", "4444", "0005"]
    listed = api_get(api, f"/records/{rid}/cards").json
    assert listed is not None
    assert {c["id"] for c in listed["cards"]} == {(a.json or {})["id"] for a in added}
    assert listed["next_cursor"] is None

    card_id = (added[0].json or {})["id"]
    retired = api_post(api, f"/records/{rid}/cards/{card_id}/retire", {})
    assert retired.status_code == 200
    assert (retired.json or {})["retired"] is True
    again = api_post(api, f"/records/{rid}/cards/{card_id}/retire", {})
    assert_problem(again, "read-only")

    found = api_get(api, "/records?crm_ref=C1234567").json
    assert found == {"records": [record], "next_cursor": None}

    # No answer ever carries a card number, and the audit log names the service for each call.
    for pan in (VISA, MASTERCARD, AMEX):
        assert all(pan not in a.text for a in added)
    events = [(row.event, row.actor, row.outcome) for row in audit_rows(app)[2:]]
    assert ("card.added", "crm", "success") in events
    assert ("card.retired", "crm", "success") in events
    assert ("records.listed", "crm", "success") in events
    assert all(actor == "crm" for _, actor, _ in events)


def test_cards_page_by_page(app: Flask, api: FlaskClient, clock: FakeClock) -> None:
    from datetime import timedelta

    rid = new_record(api)
    made = []
    for i in range(5):
        made.append((api_post(api, f"/records/{rid}/cards", card_body()).json or {})["id"])
        if i % 2:
            clock.advance(timedelta(seconds=1))  # some share a creation time, some do not
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = api_get(api, f"/records/{rid}/cards{query}").json
        assert page is not None
        assert len(page["cards"]) <= 2
        seen += [c["id"] for c in page["cards"]]
        pages += 1
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(made)
    assert len(seen) == 5
    assert pages == 3


def test_records_page_by_page(api: FlaskClient) -> None:
    ids = [new_record(api, "C7777777") for _ in range(3)]
    first = api_get(api, "/records?crm_ref=C7777777&limit=2").json
    assert first is not None
    assert [r["id"] for r in first["records"]] == ids[:2]
    second = api_get(api, f"/records?crm_ref=C7777777&limit=2&cursor={first['next_cursor']}").json
    assert second is not None
    assert [r["id"] for r in second["records"]] == ids[2:]
    assert second["next_cursor"] is None


def test_a_cursor_works_for_its_own_listing_only(api: FlaskClient) -> None:
    a, b = new_record(api, "C1111111"), new_record(api, "C1111111")
    for rid in (a, a, a):
        api_post(api, f"/records/{rid}/cards", card_body())
    cursor = (api_get(api, f"/records/{a}/cards?limit=1").json or {})["next_cursor"]
    assert cursor
    assert_problem(api_get(api, f"/records/{b}/cards?cursor={cursor}"), "cursor-invalid")
    assert_problem(api_get(api, f"/records?crm_ref=C1111111&cursor={cursor}"), "cursor-invalid")
    body, mac = cursor.split(".")
    assert_problem(api_get(api, f"/records/{a}/cards?cursor={body}.{'0' * len(mac)}"), "cursor-invalid")


@pytest.mark.parametrize(
    ("method", "path", "slug"),
    [
        ("GET", "/records/999", "not-found"),
        ("GET", "/records/999/cards", "not-found"),
        ("POST", "/records/999/cards", "not-found"),
        ("POST", "/records/{rid}/cards/" + "0" * 32 + "/retire", "not-found"),
        ("POST", "/records/{rid}/cards/" + VISA + "/retire", "not-found"),  # not an id: 404 before the view
        ("GET", "/records/" + VISA, "not-found"),
        ("GET", "/nowhere", "not-found"),
    ],
)
def test_not_found(app: Flask, api: FlaskClient, method: str, path: str, slug: str) -> None:
    rid = new_record(api)
    path = path.format(rid=rid)
    before = counts(app)
    body = {} if path.endswith("/retire") else card_body()
    r = api_get(api, path) if method == "GET" else api_post(api, path, body)
    assert_problem(r, slug)
    assert counts(app) == before
    assert VISA not in audit_rows(app)[-1].resource


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_only_get_head_post(api: FlaskClient, method: str) -> None:
    r = api.open("/api/v1/records", method=method, base_url=HTTPS)
    assert_problem(r, "method-not-allowed")


def test_head(api: FlaskClient) -> None:
    r = api.head("/api/v1/records?crm_ref=C1234567", base_url=HTTPS)
    assert r.status_code == 200
    assert r.data == b""


def test_a_card_on_a_retired_record_is_refused(app: Flask, api: FlaskClient) -> None:
    rid = new_record(api)
    with app.extensions["strongroom"].engine.begin() as conn:
        conn.execute(
            sa.update(customer_records)
            .where(customer_records.c.id == rid)
            .values(retired_at=sa.func.current_timestamp(), retired_by="clerk")
        )
    before = counts(app)
    assert_problem(api_post(api, f"/records/{rid}/cards", card_body()), "read-only")
    assert counts(app) == before
    assert audit_rows(app)[-1].event == "card.refused"


_NO_CARD_ADD = {"crm": {"record": ["list", "view", "add"], "card.masked": ["view"]}}


def test_the_matrix_decides(make_app: Any, ca: TestCA, tmp_path: Any) -> None:
    from tests.webapp.api.conftest import add_service

    app = make_app(RECORDS_PERMISSIONS=_NO_CARD_ADD)
    service = add_service(app, ca, tmp_path)
    client = client_for(app, service.cert)
    rid = new_record(client)
    before = counts(app)
    r = api_post(client, f"/records/{rid}/cards", card_body())
    assert_problem(r, "permission-denied")
    assert counts(app) == before
    last = audit_rows(app)[-1]
    assert (last.event, last.actor, last.detail) == ("request.access_denied", "crm", "matrix:card.masked:add")


def test_the_shipped_crm_column_is_exactly_what_the_issue_asks() -> None:
    """Written out here, not read from permissions.json: list, view, add records; view (masked),
    add, retire cards; nothing else (no reveal, no items, no edits, no retiring records)."""
    from webapp.records.permissions import CELLS, DEFAULT_FILE, Act, FieldClass, load

    matrix = load(DEFAULT_FILE)
    granted = {(c, a) for c, acts in CELLS.items() for a in acts if matrix.allows("crm", c, a)}
    assert granted == {
        (FieldClass.RECORD, Act.LIST),
        (FieldClass.RECORD, Act.VIEW),
        (FieldClass.RECORD, Act.ADD),
        (FieldClass.CARD_MASKED, Act.VIEW),
        (FieldClass.CARD_MASKED, Act.ADD),
        (FieldClass.CARD_MASKED, Act.RETIRE),
    }


def test_budgets_count_the_service_account(make_app: Any, ca: TestCA, tmp_path: Any) -> None:
    from tests.webapp.api.conftest import add_service

    rules = [{"scope": "employee", "window": 3600, "alert": 2, "limit": 3}]
    app = make_app(REQUEST_BUDGETS=rules)
    client = client_for(app, add_service(app, ca, tmp_path).cert)
    for _ in range(3):
        assert api_get(client, "/records?crm_ref=C1234567").status_code == 200
    before = counts(app)
    r = api_post(client, "/records", {"crm_ref": "C1234567"})
    assert_problem(r, "budget-exceeded")
    assert int(r.headers["Retry-After"]) > 0
    assert counts(app) == before
    events = [(row.event, row.actor) for row in audit_rows(app)]
    assert ("budget.alert", "crm") in events
    assert ("budget.refused", "crm") in events


def test_keyd_sealed_is_a_problem_and_stores_nothing(app: Flask, api: FlaskClient, vault: Any) -> None:
    rid = new_record(api)
    before = counts(app)
    vault.sealed = True
    r = api_post(api, f"/records/{rid}/cards", card_body())
    assert_problem(r, "vault-unavailable")
    assert counts(app) == before
    with app.extensions["strongroom"].engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(cards)).scalar_one() == 0
