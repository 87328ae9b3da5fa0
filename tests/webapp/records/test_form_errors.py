# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""Forms that help (issue 17), through the real app and a real keyd.

A typo in a records form is the same page again, status 400, the rule next to its field (class
"field-error", aria-invalid, aria-describedby, the focus on the first invalid field), what was typed
put back only for the fields that are not secret, nothing written, one FORM_INVALID audit record
naming the field and the rule (never the value) and no alert. What is hostile stays refused and
alerted (docs/alerts.md). Every refusal page has a heading that says what happened and a way back
that is one of our own pages; every change says it worked (a flashed "success" message).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.webapp.conftest import Person, get, post
from tests.webapp.helpers import audit_rows, events
from tests.webapp.pan_spellings import GUARDED, HOSTILE, PAN
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    IBAN,
    VISA,
    add_card,
    add_item,
    add_record,
    card_data,
    keyd_running,
    logged_in,
    rows,
    staff,
    token_of,
    vault,
)
from webapp.db.tables import outbox, sessions
from webapp.events import ALERTS, Event
from webapp.records.tables import cards, customer_records, items

FORM_INVALID = "request.form_invalid"


class Page(HTMLParser):
    """The elements of a page by id, its labels, headings and nesting problems."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.by_id: dict[str, dict[str, str | None]] = {}
        self.text_of: dict[str, str] = {}
        self.labels_for: list[str] = []
        self.h1: list[str] = []
        self.inputs: list[dict[str, str | None]] = []
        self.selected: dict[str, str] = {}
        self.nested_labels = 0
        self._open: list[str] = []
        self._select: str | None = None
        self._label_depth = 0
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {"tag": tag, **dict(attrs)}
        if a.get("id"):
            self.by_id[str(a["id"])] = a
        if tag == "label":
            self.nested_labels += self._label_depth > 0
            self._label_depth += 1
            if a.get("for"):
                self.labels_for.append(str(a["for"]))
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.inputs.append(a)
        if tag == "select":
            self._select = str(a.get("id"))
        if tag == "option" and "selected" in a and self._select:
            self.selected[self._select] = str(a.get("value"))
        if tag not in ("input", "meta", "link", "br", "option"):
            self._open.append(str(a.get("id") or f"<{tag}>"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_depth -= 1
        if tag == "select":
            self._select = None
        if tag not in ("input", "meta", "link", "br", "option") and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open and self._open[-1] == "<h1>":
            self.h1.append(data.strip())
        for name in self._open:
            if not name.startswith("<"):
                self.text_of[name] = self.text_of.get(name, "") + data


def assert_accessible(page: Page) -> None:
    """One h1, every visible field labelled with for=, no label inside a label, unique ids."""
    assert len(page.h1) == 1, page.h1
    assert page.nested_labels == 0
    for element in page.inputs:
        assert element.get("id") in page.labels_for, element


# --- typos: a table per form ---------------------------------------------------------------------


@dataclass(frozen=True)
class Typo:
    form: str  # record, search, card, edit-card, bank, identity, note, edit-note, edit-bank
    fields: dict[str, str | None]  # what is sent on top of a valid form (None: left out)
    invalid: tuple[str, ...]  # the ids of the fields that get an error, the first one focused
    message: str  # the rule, next to the first invalid field and in the audit detail
    kept: dict[str, str] = field(default_factory=dict)  # id -> value put back
    secret: tuple[str, ...] = ()  # typed values that must not come back


NAME = "Ada Lovelace"
TYPOS = {
    "crm too short": Typo(
        "record",
        {"crm_ref": "C12"},
        ("record-crm_ref",),
        "CRM reference: wrong format",
        kept={"record-crm_ref": "C12"},
    ),
    "crm lower case": Typo(
        "record",
        {"crm_ref": "c1234567"},
        ("record-crm_ref",),
        "wrong format",
        kept={"record-crm_ref": "c1234567"},
    ),
    "crm missing": Typo("record", {"crm_ref": ""}, ("record-crm_ref",), "CRM reference: required"),
    "crm too long": Typo("record", {"crm_ref": "C" * 40}, ("record-crm_ref",), "CRM reference: wrong format"),
    "search too short": Typo(
        "search",
        {"crm_ref": "X1"},
        ("search-crm_ref",),
        "CRM reference: wrong format",
        kept={"search-crm_ref": "X1"},
    ),
    "search empty": Typo("search", {"crm_ref": ""}, ("search-crm_ref",), "CRM reference: required"),
    "bad luhn": Typo(
        "card",
        {"pan": "4111 1111 1111 1112"},
        ("card-pan",),
        "check digit is wrong (Luhn)",
        kept={"card-exp_month": "12", "card-exp_year": "2028", "card-pan": "", "card-cardholder": ""},
        secret=("4111 1111 1111 1112", NAME),
    ),
    "pan letters": Typo(
        "card",
        {"pan": "4111 1111 1111 111x"},
        ("card-pan",),
        "digits only",
        secret=("4111 1111 1111 111x", NAME),
    ),
    "pan missing": Typo("card", {"pan": None}, ("card-pan",), "card number: required", secret=(NAME,)),
    "expired": Typo(
        "card",
        {"exp_month": "10", "exp_year": "2026"},
        ("card-exp_year",),
        "the card has expired",
        kept={"card-exp_month": "10", "card-exp_year": "2026"},
        secret=(VISA, NAME),
    ),
    "month 13": Typo(
        "card",
        {"exp_month": "13"},
        ("card-exp_month",),
        "expiry month: must be 1 to 12",
        kept={"card-exp_month": "13", "card-exp_year": "2028"},
        secret=(VISA, NAME),
    ),
    "year not a number": Typo(
        "card",
        {"exp_year": "20x8"},
        ("card-exp_year",),
        "not a valid integer",
        kept={"card-exp_year": ""},
        secret=(VISA, NAME),
    ),
    "name with digits": Typo(
        "card",
        {"cardholder": "Ada 2nd"},
        ("card-cardholder",),
        "letters, spaces",
        kept={"card-cardholder": ""},
        secret=(VISA, "Ada 2nd"),
    ),
    "two at once": Typo(
        "card",
        {"pan": "4111 1111 1111 1112", "exp_month": "0"},
        ("card-pan", "card-exp_month"),
        "Luhn",
        secret=("4111 1111 1111 1112", NAME),
    ),
    "edit expired": Typo(
        "edit-card",
        {"exp_month": "1", "exp_year": "2020"},
        ("edit-exp_year",),
        "the card has expired",
        kept={"edit-exp_month": "1", "edit-exp_year": "2020"},
        secret=("Ada King",),
    ),
    "edit name missing": Typo(
        "edit-card", {"cardholder": ""}, ("edit-cardholder",), "cardholder name: required"
    ),
    "iban check digits": Typo(
        "bank",
        {"value": "DE89 3704 0044 0532 0130 01"},
        ("bank-value",),
        "IBAN: check digits are wrong",
        secret=("DE89 3704 0044 0532 0130 01",),
    ),
    "iban country": Typo(
        "bank",
        {"value": "XX89 3704 0044 0532 0130 00"},
        ("bank-value",),
        "IBAN: unknown country code",
        secret=("XX89 3704 0044 0532 0130 00",),
    ),
    "document too short": Typo(
        "identity",
        {"value": "AB12", "doc_type": "driving_licence"},
        ("identity-value",),
        "5 to 20 characters",
        kept={"identity-doc_type": "driving_licence"},
    ),
    "document type unknown": Typo(
        "identity",
        {"value": "C01X00T47", "doc_type": "library_card"},
        ("identity-doc_type",),
        "document type: unknown",
        secret=("C01X00T47",),
    ),
    "note too long": Typo(
        "note", {"value": "y" * 2001}, ("note-value",), "note: at most 2000 characters", secret=("y" * 50,)
    ),
    "note missing": Typo("note", {"value": None}, ("note-value",), "note: required"),
    "note invisible": Typo(
        "note",
        {"value": "call\u200bme later"},
        ("note-value",),
        "control or invisible",
        secret=("call\u200bme later",),
    ),
    "edit iban": Typo(
        "edit-bank",
        {"value": "GB82 WEST 1234 5698 7654 33"},
        ("edit-value",),
        "IBAN: check digits are wrong",
        secret=("GB82 WEST 1234 5698 7654 33",),
    ),
    "edit note blank": Typo("edit-note", {"value": "   "}, ("edit-value",), "note: required"),
}


@dataclass
class Setup:
    record_id: int
    card_id: str
    bank_id: str
    note_id: str


def _setup(client: FlaskClient) -> Setup:
    record_id = add_record(client)
    return Setup(
        record_id,
        add_card(client, record_id),
        add_item(client, record_id, "bank", IBAN),
        add_item(client, record_id, "note", "prefers calls after five"),
    )


def _send(client: FlaskClient, s: Setup, form: str, fields: Mapping[str, str | None]) -> TestResponse:
    """The form `form` with its valid values, `fields` on top (None: left out)."""
    r, t = s.record_id, token_of(client)
    base: dict[str, str | None]
    if form == "search":
        query = {k: v for k, v in fields.items() if v is not None}
        return get(client, "/records/", query_string=query)
    if form == "record":
        path, base = "/records/", {"crm_ref": "C7654321"}
    elif form == "card":
        path, base = f"/records/{r}/cards", dict(card_data())
    elif form == "edit-card":
        path, base = (
            f"/records/{r}/cards/{s.card_id}/edit",
            {"cardholder": "Ada King", "exp_month": "3", "exp_year": "2031"},
        )
    elif form == "edit-bank":
        path, base = f"/records/{r}/bank/{s.bank_id}/edit", {"value": "GB82 WEST 1234 5698 7654 32"}
    elif form == "edit-note":
        path, base = f"/records/{r}/note/{s.note_id}/edit", {"value": "a new note"}
    else:
        path = f"/records/{r}/{form}"
        base = {"value": {"bank": IBAN, "identity": "C01X00T47", "note": "a note"}[form]}
        if form == "identity":
            base["doc_type"] = "passport"
    data = {k: v for k, v in {**base, **fields}.items() if v is not None}
    return post(client, path, data={"csrf_token": t, **data})


def _stored(app: Flask) -> tuple[list[sa.Row], ...]:
    return rows(app, customer_records), rows(app, cards), rows(app, items)


@pytest.mark.parametrize("name", TYPOS)
def test_a_typo_is_shown_next_to_its_field_and_nothing_else_happens(
    app: Flask, staff: dict[str, Person], name: str
) -> None:
    typo = TYPOS[name]
    client = logged_in(app, staff["clerk"])
    s = _setup(client)
    before, outbox_before = _stored(app), rows(app, outbox)
    r = _send(client, s, typo.form, typo.fields)
    assert r.status_code == 400, r.text
    page = Page(r.text)
    assert_accessible(page)
    for i, field_id in enumerate(typo.invalid):
        element = page.by_id[field_id]
        assert element["aria-invalid"] == "true"
        assert element["aria-describedby"] == f"{field_id}-error"
        assert ("autofocus" in element) == (i == 0)  # the focus on the first invalid field only
        error = page.by_id[f"{field_id}-error"]
        assert error["class"] == "field-error"
    assert typo.message in page.text_of[f"{typo.invalid[0]}-error"]
    assert sum("autofocus" in e for e in page.by_id.values()) == 1
    for field_id, value in typo.kept.items():
        element = page.by_id[field_id]
        if element["tag"] == "select":
            assert page.selected.get(field_id) == value
        else:
            assert element.get("value") == value, field_id
    for secret in typo.secret:
        assert secret not in r.text
    # Nothing written, one form-error record naming the field and the rule, no alert.
    assert _stored(app) == before
    (record,) = audit_rows(app, FORM_INVALID)
    assert record.outcome == "failure"
    assert typo.message in record.detail
    for field_id in typo.invalid:
        assert field_id.split("-", 1)[1] in record.detail
    for secret in typo.secret:
        assert secret not in record.detail
    assert rows(app, outbox) == outbox_before
    assert Event.FORM_INVALID not in ALERTS


def test_what_is_typed_comes_back_only_where_it_may(app: Flask, staff: dict[str, Person]) -> None:
    """A card number typed into a field whose value is put back (the CRM reference, the expiry) is
    not put back, whatever its spelling."""
    client = logged_in(app, staff["clerk"])
    s = _setup(client)
    for name in sorted(set(HOSTILE) - GUARDED):
        spelling = HOSTILE[name]
        for form, fields in (
            ("card", {"pan": spelling, "exp_year": spelling}),
            ("record", {"crm_ref": spelling}),
            ("search", {"crm_ref": spelling}),
        ):
            r = _send(client, s, form, fields)
            assert r.status_code == 400, (name, form)
            assert spelling not in r.text, (name, form)
            assert PAN[:12] not in _digits(r.text), (name, form)


def _digits(text: str) -> str:
    return "".join(str(unicodedata.digit(c)) for c in text if unicodedata.digit(c, None) is not None)


# --- hostile: still refused, and alerted ------------------------------------------------------------


def _raw_post(client: FlaskClient, path: str, body: str) -> TestResponse:
    return post(client, path, data=body, content_type="application/x-www-form-urlencoded")


Hostile = Callable[[FlaskClient, Setup], TestResponse]
HOSTILE_INPUTS: dict[str, tuple[Hostile, int, str]] = {
    "unknown parameter": (
        lambda c, s: _send(c, s, "card", {"nickname": "x"}),
        400,
        "request.input_refused",
    ),
    "duplicated parameter": (
        lambda c, s: _raw_post(c, "/records/", f"csrf_token={token_of(c)}&crm_ref=C1234567&crm_ref=C7654321"),
        400,
        "request.input_refused",
    ),
    "oversized value": (
        lambda c, s: _send(c, s, "note", {"value": "z" * 3000}),
        400,
        "request.input_refused",
    ),
    "oversized body": (
        lambda c, s: _raw_post(
            c, f"/records/{s.record_id}/note", f"csrf_token={token_of(c)}&value=" + "z" * 70000
        ),
        400,
        "request.input_refused",
    ),
    "control character": (
        lambda c, s: _send(c, s, "note", {"value": "ring\x07the bell"}),
        400,
        "request.input_refused",
    ),
    "no CSRF token": (
        lambda c, s: post(c, "/records/", data={"crm_ref": "C7654321"}),
        400,
        "request.csrf_refused",
    ),
    "security code sent": (lambda c, s: _send(c, s, "card", {"cvv": "123"}), 400, "card.refused"),
    "security code on an edit": (lambda c, s: _send(c, s, "edit-card", {"cvc2": ""}), 400, "card.refused"),
    "card number in a note": (
        lambda c, s: _send(c, s, "note", {"value": f"card {PAN}"}),
        400,
        "item.refused",
    ),
    "card number in an edited note": (
        lambda c, s: _send(c, s, "edit-note", {"value": f"card {PAN}"}),
        400,
        "item.refused",
    ),
    "card number as a CRM reference": (
        lambda c, s: _send(c, s, "record", {"crm_ref": PAN}),
        400,
        "records.refused",
    ),
    "card number searched": (lambda c, s: _send(c, s, "search", {"crm_ref": PAN}), 400, "records.refused"),
}


@pytest.mark.parametrize("name", HOSTILE_INPUTS)
def test_hostile_input_is_still_refused_and_alerted(app: Flask, staff: dict[str, Person], name: str) -> None:
    send, status, event = HOSTILE_INPUTS[name]
    client = logged_in(app, staff["clerk"])
    s = _setup(client)
    before = _stored(app)
    r = send(client, s)
    assert r.status_code == status, r.text
    assert _stored(app) == before
    assert audit_rows(app, event)
    assert not audit_rows(app, FORM_INVALID)
    assert event in events(app)
    assert PAN not in r.text
    assert Event(event) in ALERTS


def test_a_card_number_in_a_free_text_field_is_shown_next_to_it_but_never_kept(
    app: Flask, staff: dict[str, Person]
) -> None:
    client = logged_in(app, staff["clerk"])
    s = _setup(client)
    r = _send(client, s, "record", {"crm_ref": PAN})
    page = Page(r.text)
    assert page.by_id["record-crm_ref"]["aria-invalid"] == "true"
    assert page.by_id["record-crm_ref"]["value"] == ""
    assert "looks like a card number" in page.text_of["record-crm_ref-error"]


# --- a way back from every refusal ---------------------------------------------------------------


def _back(html: str) -> str:
    """The refusal page's way back (webapp/templates/_back.html)."""
    marker = '<p class="back"><a href="'
    assert marker in html, html
    return html.split(marker, 1)[1].split('"', 1)[0]


@pytest.mark.parametrize(
    ("how", "heading", "back"),
    [
        ("cvv", "Card not saved", "/records/{r}"),
        ("card 404", "Page not found", "/records/{r}"),
        ("pan as record id", "Page not found", "/records/"),
        ("unknown page", "Page not found", "/"),
        ("read-only", "Not saved: read-only", "/records/{r}/note/{n}"),
        ("foreign referer", "Page not found", "/records/{r}"),
        ("referer with a query", "Page not found", "/records/"),
        ("referer with a card number", "Page not found", "/records/{r}"),
    ],
)
def test_every_refusal_says_what_happened_and_has_a_way_back(
    app: Flask, staff: dict[str, Person], how: str, heading: str, back: str
) -> None:
    client = logged_in(app, staff["clerk"])
    s = _setup(client)
    r_id, t = s.record_id, token_of(client)
    missing = f"/records/{r_id}/cards/{'0' * 32}"
    if how == "cvv":
        r = post(client, f"/records/{r_id}/cards", data={"csrf_token": t, **card_data(), "cvv": "123"})
    elif how == "card 404":
        r = get(client, missing)
    elif how == "pan as record id":
        r = get(client, f"/records/{PAN}")
    elif how == "unknown page":
        r = get(client, "/nowhere")
    elif how == "read-only":
        assert (
            post(client, f"/records/{r_id}/note/{s.note_id}/retire", data={"csrf_token": t}).status_code
            == 302
        )
        r = post(client, f"/records/{r_id}/note/{s.note_id}/edit", data={"csrf_token": t, "value": "x y"})
    elif how == "foreign referer":
        r = get(client, missing, headers={"Referer": "https://evil.example/records/"})
    elif how == "referer with a query":
        r = get(client, missing, headers={"Referer": f"https://vault.example/records/?crm_ref={PAN}"})
    else:
        r = get(client, missing, headers={"Referer": f"https://vault.example/records/{PAN}"})
    assert r.status_code in (400, 404), r.text
    page = Page(r.text)
    assert page.h1 == [heading]
    assert _back(r.text) == back.format(r=r_id, n=s.note_id)
    assert PAN not in r.text
    assert "evil.example" not in r.text


def test_a_same_site_referer_that_is_one_of_our_pages_is_the_way_back(
    app: Flask, staff: dict[str, Person]
) -> None:
    client = logged_in(app, staff["clerk"])
    s = _setup(client)
    here = f"/records/{s.record_id}/note/{s.note_id}"
    r = get(
        client,
        f"/records/{s.record_id}/cards/{'0' * 32}",
        headers={"Referer": f"https://vault.example{here}"},
    )
    assert _back(r.text) == here
    r = get(client, "/nowhere", headers={"Referer": "/records/<script>"})
    assert _back(r.text) == "/"


# --- success messages ----------------------------------------------------------------------------


def _flashed(client: FlaskClient, r: TestResponse) -> list[str]:
    assert r.status_code == 302, r.text
    page = get(client, r.headers["Location"])
    marker = '<p class="success" role="status">'
    return [part.split("</p>", 1)[0] for part in page.text.split(marker)[1:]]


def test_every_change_says_it_worked_without_a_secret(app: Flask, staff: dict[str, Person]) -> None:
    client = logged_in(app, staff["clerk"])
    t = token_of(client)
    r = post(client, "/records/", data={"csrf_token": t, "crm_ref": "C1234567"})
    record_id = int(r.headers["Location"].rsplit("/", 1)[1])
    assert _flashed(client, r) == [f"Record {record_id} added for C1234567."]
    base = f"/records/{record_id}"
    r = post(client, f"{base}/cards", data={"csrf_token": t, **card_data()})
    assert _flashed(client, r) == ["Card visa •••• 1111 added."]
    (card_id,) = {row.id for row in rows(app, cards)}
    r = post(
        client,
        f"{base}/cards/{card_id}/edit",
        data={"csrf_token": t, "cardholder": "Ada King", "exp_month": "3", "exp_year": "2031"},
    )
    assert _flashed(client, r) == ["Card visa •••• 1111 updated: cardholder and expiry saved."]
    r = post(client, f"{base}/cards/{card_id}/retire", data={"csrf_token": t})
    assert _flashed(client, r) == ["Card visa •••• 1111 retired: it is now read-only."]
    r = post(client, f"{base}/bank", data={"csrf_token": t, "value": IBAN})
    assert _flashed(client, r) == ["Bank account added: DE •••• 3000."]
    (bank_id,) = {row.id for row in rows(app, items)}
    r = post(
        client, f"{base}/bank/{bank_id}/edit", data={"csrf_token": t, "value": "GB82 WEST 1234 5698 7654 32"}
    )
    assert _flashed(client, r) == ["Bank account updated: GB •••• 5432."]
    r = post(client, f"{base}/bank/{bank_id}/retire", data={"csrf_token": t})
    assert _flashed(client, r) == ["Bank account GB •••• 5432 retired: it is now read-only."]
    r = post(client, f"{base}/identity", data={"csrf_token": t, "value": "C01X00T47", "doc_type": "passport"})
    assert _flashed(client, r) == ["Identity document added: passport •••• 47."]
    # Shown once, then gone; never a card number, an IBAN or a name in a page or the session store.
    assert 'class="success"' not in get(client, base).text
    with app.extensions["strongroom"].engine.connect() as conn:
        stored = " ".join(str(v) for v in conn.execute(sa.select(sessions.c.data)).scalars())
    for secret in ("4111111111111111", VISA, "DE89370400440532013000", "GB82WEST", "Ada", "C01X00T47"):
        assert secret not in stored


# --- the records pages' HTML ---------------------------------------------------------------------


def test_the_records_pages_are_labelled_with_one_heading(app: Flask, staff: dict[str, Person]) -> None:
    client = logged_in(app, staff["clerk"])
    s = _setup(client)
    identity = add_item(client, s.record_id, "identity", "C01X00T47", "passport")
    base = f"/records/{s.record_id}"
    for path in (
        "/records/",
        "/records/?crm_ref=C1234567",
        base,
        f"{base}/cards/{s.card_id}",
        f"{base}/bank/{s.bank_id}",
        f"{base}/note/{s.note_id}",
        f"{base}/identity/{identity}",
    ):
        r = get(client, path)
        assert r.status_code == 200, path
        page = Page(r.text)
        assert_accessible(page)
        ids = [e["id"] for e in page.inputs]
        assert len(ids) == len(set(ids)), path
    assert "<legend>Expiry date</legend>" in get(client, base).text
