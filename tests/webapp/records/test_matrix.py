# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""The permission matrix, every cell (role × field class × action), against the real app and a real
keyd: allowed -> 200/302 and the cell's own audit event; refused -> 403, an access_denied audit row
naming the cell, and nothing changed. Plus the matrix file's strict validation, and that each field
class can be granted on its own."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.webapp.conftest import Person, get, post
from tests.webapp.helpers import audit_rows
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    ADMIN_PASSWORD,
    CRM,
    IBAN,
    REASON,
    SUPERVISOR_PASSWORD,
    card_data,
    keyd_running,
    logged_in,
    reveal,
    staff,
    token_of,
    vault,
)
from webapp.config import ConfigError
from webapp.records import items as item_rules
from webapp.records import permissions, service
from webapp.records.cards import parse_pan
from webapp.records.permissions import CELLS, Act, FieldClass
from webapp.records.tables import cards, customer_records, items

ROLES = ("clerk", "supervisor", "auditor", "admin")
PASSWORDS = {"supervisor": SUPERVISOR_PASSWORD, "admin": ADMIN_PASSWORD}
ITEM_VALUES = {"bank": (IBAN, ""), "identity": ("X1234567", "passport"), "note": ("call after 5pm", "")}
KIND_OF = {FieldClass.BANK: "bank", FieldClass.IDENTITY: "identity", FieldClass.NOTES: "note"}


@dataclass
class Fixture:
    record_id: int
    card_id: str
    item_ids: dict[str, str]


def _seed(app: Flask) -> Fixture:
    svc = app.extensions["strongroom"]
    now = svc.clock.now()
    with svc.engine.begin() as conn:
        record_id = service.add_record(conn, CRM, actor="seed", now=now)
        card = service.NewCard(pan=parse_pan("4111111111111111"), cardholder="Ada Lovelace", expiry="12/2028")
        card_id = service.add_card(conn, svc.vault, record_id, card, actor="seed", now=now)
        item_ids = {}
        for kind, (value, doc_type) in ITEM_VALUES.items():
            clean, hint = item_rules.check(kind, value, doc_type)
            item_ids[kind] = service.add_item(
                conn, svc.vault, record_id, kind, clean, hint, actor="seed", now=now
            )
    return Fixture(record_id, card_id, item_ids)


def _state(app: Flask) -> list[object]:
    """Everything a cell could change."""
    with app.extensions["strongroom"].engine.connect() as conn:
        return [
            list(conn.execute(sa.select(customer_records).order_by(customer_records.c.id))),
            list(conn.execute(sa.select(cards).order_by(cards.c.id))),
            list(conn.execute(sa.select(items).order_by(items.c.id))),
        ]


Call = Callable[[FlaskClient, Fixture, str], TestResponse]


def _item_call(kind: str, action: Act) -> Call:
    def call(c: FlaskClient, f: Fixture, password: str) -> TestResponse:
        base = f"/records/{f.record_id}/{kind}"
        value, doc_type = ITEM_VALUES[kind]
        form = {"csrf_token": token_of(c), "value": value, **({"doc_type": doc_type} if doc_type else {})}
        item = f"{base}/{f.item_ids[kind]}"
        if action is Act.VIEW:
            return get(c, item)
        if action is Act.ADD:
            return post(c, base, data=form)
        if action is Act.EDIT:
            return post(c, f"{item}/edit", data=form)
        if action is Act.RETIRE:
            return post(c, f"{item}/retire", data={"csrf_token": token_of(c)})
        return _reveal(c, f"/records/{f.record_id}/reveal/{kind}/{f.item_ids[kind]}/value", password)

    return call


def _reveal(c: FlaskClient, url: str, password: str) -> TestResponse:
    form = get(c, url)
    if form.status_code != 200:
        # Refused at the form: the POST must be refused on its own too (a direct call, no token).
        direct = post(c, url, data={"csrf_token": token_of(c), "stepup": "a" * 43, "reason": REASON})
        assert direct.status_code == form.status_code
        return form
    return reveal(c, url, password)


def _card(path: str, **data: str) -> Call:
    def call(c: FlaskClient, f: Fixture, _password: str) -> TestResponse:
        return post(c, path.format(r=f.record_id, c=f.card_id), data={"csrf_token": token_of(c), **data})

    return call


# How to exercise each cell, and the audit event an allowed call leaves.
CALLS: dict[tuple[FieldClass, Act], tuple[Call, str]] = {
    (FieldClass.RECORD, Act.LIST): (lambda c, f, _p: get(c, f"/records/?crm_ref={CRM}"), "records.listed"),
    (FieldClass.RECORD, Act.VIEW): (lambda c, f, _p: get(c, f"/records/{f.record_id}"), "records.viewed"),
    (FieldClass.RECORD, Act.ADD): (_card("/records/", crm_ref="C7654321"), "records.added"),
    (FieldClass.RECORD, Act.RETIRE): (_card("/records/{r}/retire"), "records.retired"),
    (FieldClass.CARD_MASKED, Act.VIEW): (
        lambda c, f, _p: get(c, f"/records/{f.record_id}/cards/{f.card_id}"),
        "card.viewed",
    ),
    (FieldClass.CARD_MASKED, Act.ADD): (_card("/records/{r}/cards", **card_data()), "card.added"),
    (FieldClass.CARD_MASKED, Act.EDIT): (
        _card("/records/{r}/cards/{c}/edit", cardholder="Ada King", exp_month="1", exp_year="2030"),
        "card.edited",
    ),
    (FieldClass.CARD_MASKED, Act.RETIRE): (_card("/records/{r}/cards/{c}/retire"), "card.retired"),
    (FieldClass.CARD_PAN, Act.REVEAL): (
        lambda c, f, p: _reveal(c, f"/records/{f.record_id}/reveal/card/{f.card_id}/pan", p),
        "reveal.done",
    ),
    (FieldClass.CARD_CARDHOLDER, Act.REVEAL): (
        lambda c, f, p: _reveal(c, f"/records/{f.record_id}/reveal/card/{f.card_id}/cardholder", p),
        "reveal.done",
    ),
}
for _cls, _kind in KIND_OF.items():
    for _act, _event in (
        (Act.VIEW, "item.viewed"),
        (Act.ADD, "item.added"),
        (Act.EDIT, "item.edited"),
        (Act.RETIRE, "item.retired"),
        (Act.REVEAL, "reveal.done"),
    ):
        CALLS[(_cls, _act)] = (_item_call(_kind, _act), _event)

ALL_CELLS = sorted((c, a) for c, acts in CELLS.items() for a in acts)

# The expected matrix, written out here on its own (not read from permissions.json): the test fails
# if the shipped file drifts from what the issue asks.
DESK = {(FieldClass.RECORD, a) for a in (Act.LIST, Act.VIEW, Act.ADD, Act.RETIRE)} | {
    (c, a)
    for c in (FieldClass.CARD_MASKED, FieldClass.BANK, FieldClass.IDENTITY, FieldClass.NOTES)
    for a in (Act.VIEW, Act.ADD, Act.EDIT, Act.RETIRE)
}
REVEALS = {
    (c, Act.REVEAL)
    for c in (
        FieldClass.CARD_PAN,
        FieldClass.CARD_CARDHOLDER,
        FieldClass.BANK,
        FieldClass.IDENTITY,
        FieldClass.NOTES,
    )
}
EXPECTED = {"clerk": DESK, "supervisor": DESK | REVEALS, "auditor": set(), "admin": set()}


def test_every_cell_has_a_route() -> None:
    assert set(CALLS) == set(ALL_CELLS)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the matrix is backend-independent
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("field_class", "action"), ALL_CELLS, ids=[f"{c}.{a}" for c, a in ALL_CELLS])
def test_matrix_cell(
    app: Flask, staff: dict[str, Person], role: str, field_class: FieldClass, action: Act
) -> None:
    fixture = _seed(app)
    person = staff[role]
    client = logged_in(app, person)
    call, event = CALLS[(field_class, action)]
    before = _state(app)
    denied_before = len(audit_rows(app, "request.access_denied"))
    r = call(client, fixture, PASSWORDS.get(role, person.password))
    if (field_class, action) in EXPECTED[role]:
        assert r.status_code in (200, 302), r.text
        assert audit_rows(app, event), f"no {event} audit record"
        if action is Act.REVEAL:
            assert r.headers["Cache-Control"] == "no-store"
    else:
        assert r.status_code == 403, r.text
        denied = audit_rows(app, "request.access_denied")
        assert len(denied) >= denied_before + 1
        assert denied[-1].detail == f"matrix:{field_class}:{action}"
        assert _state(app) == before
        assert not audit_rows(app, event)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_ui_shows_only_what_the_role_may_do(app: Flask, staff: dict[str, Person]) -> None:
    fixture = _seed(app)
    clerk = get(logged_in(app, staff["clerk"]), f"/records/{fixture.record_id}").text
    sup = get(logged_in(app, staff["supervisor"]), f"/records/{fixture.record_id}").text
    assert "/reveal/" not in clerk
    assert "/reveal/card/" in sup
    assert "/reveal/bank/" in sup


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_each_field_class_is_granted_on_its_own(
    make_app: Callable[..., Flask], staff: dict[str, Person], tmp_path: Path
) -> None:
    # A clerk who may see bank accounts (and reveal them) but nothing about cards or other items.
    path = tmp_path / "matrix.json"
    path.write_text(json.dumps({"clerk": {"record": ["view"], "bank": ["view", "reveal"]}}))
    app = make_app(RECORDS_PERMISSIONS=str(path))
    fixture = _seed(app)
    client = logged_in(app, staff["clerk"])
    page = get(client, f"/records/{fixture.record_id}")
    assert page.status_code == 200
    assert "DE •••• 3000" in page.text
    assert "visa" not in page.text
    assert "passport" not in page.text
    assert "note," not in page.text
    bank = f"/records/{fixture.record_id}/reveal/bank/{fixture.item_ids['bank']}/value"
    assert reveal(client, bank, staff["clerk"].password).status_code == 200
    assert get(client, f"/records/{fixture.record_id}/reveal/card/{fixture.card_id}/pan").status_code == 403
    assert get(client, f"/records/?crm_ref={CRM}").status_code == 403  # record.list not granted
    assert "Add a card" not in page.text
    assert "Add a bank account" not in page.text  # bank: view and reveal only
    assert "Retire this record" not in page.text
    assert get(client, f"/records/{fixture.record_id}/note/{fixture.item_ids['note']}").status_code == 403


@pytest.mark.parametrize(
    ("matrix", "problem"),
    [
        ([], "must be an object"),
        ({"intern": {}}, "unknown role"),
        ({"clerk": []}, "must be an object"),
        ({"clerk": {"card.cvv": ["view"]}}, "unknown field class"),
        ({"clerk": {"record": "view"}}, "must be a list"),
        ({"clerk": {"record": ["delete"]}}, "unknown action"),
        ({"clerk": {"record": ["reveal"]}}, "does not apply"),
        ({"clerk": {"card.pan": ["view"]}}, "does not apply"),
        ({"auditor": {"record": ["list"]}}, "may not be granted customer data"),
        ({"admin": {"card.pan": ["reveal"]}}, "may not be granted customer data"),
    ],
)
def test_bad_matrices_stop_the_start(matrix: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        permissions.load(matrix)
    assert problem in str(caught.value)


def test_a_missing_or_broken_matrix_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        permissions.load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        permissions.load(str(tmp_path / "bad.json"))


def test_the_shipped_matrix_is_the_expected_one() -> None:
    m = permissions.load(None)
    for role in ROLES:
        assert {cell for cell in ALL_CELLS if m.allows(role, *cell)} == EXPECTED[role]
    assert not m.allows("intern", FieldClass.RECORD, Act.VIEW)  # unknown roles get nothing
