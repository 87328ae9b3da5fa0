"""Strict bodies: every hostile shape is refused with its problem type, audited, and changes nothing;
the refusal never echoes what was sent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.api.conftest import (
    VISA,
    api_get,
    api_post,
    assert_problem,
    audit_rows,
    card_body,
    counts,
    new_record,
)
from tests.webapp.conftest import HTTPS

CANARY = "Zyxwvut"  # a value that must never come back in a refusal or reach the audit log


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


HOSTILE_CARD_BODIES: list[tuple[str, bytes, str, str]] = [
    # (id, raw body, content type, problem type)
    ("unknown-field", _json(card_body(note=CANARY)), "application/json", "unknown-field"),
    ("unknown-field-only", _json({CANARY: 1}), "application/json", "unknown-field"),
    (
        "missing-pan",
        _json({k: v for k, v in card_body().items() if k != "pan"}),
        "application/json",
        "missing-field",
    ),
    ("empty-object", b"{}", "application/json", "missing-field"),
    ("month-as-string", _json(card_body(exp_month="12")), "application/json", "wrong-type"),
    ("month-as-float", _json(card_body(exp_month=12.0)), "application/json", "wrong-type"),
    ("month-as-bool", _json(card_body(exp_month=True)), "application/json", "wrong-type"),
    ("month-null", _json(card_body(exp_month=None)), "application/json", "wrong-type"),
    ("pan-as-number", _json(card_body(pan=int(VISA))), "application/json", "wrong-type"),
    ("pan-as-list", _json(card_body(pan=[VISA])), "application/json", "wrong-type"),
    ("cardholder-object", _json(card_body(cardholder={"n": CANARY})), "application/json", "wrong-type"),
    (
        "duplicate-key",
        b'{"pan":"%s","pan":"%s","cardholder":"A B","exp_month":1,"exp_year":2030}'
        % (VISA.encode(), VISA.encode()),
        "application/json",
        "duplicate-key",
    ),
    ("nested-duplicate", b'{"pan":{"a":1,"a":2}}', "application/json", "duplicate-key"),
    ("deep-nesting", b'{"pan":' + b"[" * 50 + b"]" * 50 + b"}", "application/json", "body-too-deep"),
    ("very-deep-nesting", b"[" * 4000 + b"]" * 4000, "application/json", "body-too-deep"),
    ("huge", _json(card_body(cardholder="A" * 9000)), "application/json", "body-too-large"),
    ("top-level-array", _json([card_body()]), "application/json", "body-malformed"),
    ("top-level-string", _json(CANARY), "application/json", "body-malformed"),
    ("not-json", b"pan=" + VISA.encode(), "application/json", "body-malformed"),
    ("truncated", _json(card_body())[:-1], "application/json", "body-malformed"),
    ("empty", b"", "application/json", "body-malformed"),
    (
        "nan",
        b'{"pan":"1","cardholder":"A","exp_month":NaN,"exp_year":2030}',
        "application/json",
        "body-malformed",
    ),
    ("bom", b"\xef\xbb\xbf" + _json(card_body()), "application/json", "body-malformed"),
    (
        "not-utf8",
        b'{"pan":"\xff\xfe","cardholder":"A","exp_month":1,"exp_year":2030}',
        "application/json",
        "body-malformed",
    ),
    (
        "huge-int",
        b'{"pan":"1","cardholder":"A","exp_month":' + b"9" * 5000 + b',"exp_year":2030}',
        "application/json",
        "body-malformed",
    ),
    ("nul-in-name", _json(card_body(cardholder="Ada\u0000Lovelace")), "application/json", "input-refused"),
    (
        "lone-surrogate",
        b'{"pan":"%s","cardholder":"Ada\\ud800","exp_month":1,"exp_year":2030}' % VISA.encode(),
        "application/json",
        "input-refused",
    ),
    ("cvv", _json(card_body(cvv="123")), "application/json", "security-code-refused"),
    ("cvc-upper", _json(card_body(CVC="123")), "application/json", "security-code-refused"),
    (
        "form-encoded",
        b"pan=" + VISA.encode() + b"&cardholder=A",
        "application/x-www-form-urlencoded",
        "unsupported-media-type",
    ),
    ("text-plain", _json(card_body()), "text/plain", "unsupported-media-type"),
    ("json-latin1", _json(card_body()), "application/json; charset=latin-1", "unsupported-media-type"),
    ("json-extra-param", _json(card_body()), "application/json; boundary=x", "unsupported-media-type"),
    ("json-suffix", _json(card_body()), "application/vnd.api+json", "unsupported-media-type"),
    ("multipart", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", "unsupported-media-type"),
]

# The browser's value rules, through the API: a typo (form.invalid, not alerted) or a policy breach.
INVALID_CARD_VALUES: list[tuple[str, dict[str, Any], str, str]] = [
    ("luhn", card_body(pan="4111111111111112"), "card-number-invalid", "request.form_invalid"),
    ("letters", card_body(pan="4111-1111-1111-111x"), "card-number-invalid", "request.form_invalid"),
    ("short", card_body(pan="4111"), "card-number-invalid", "request.form_invalid"),
    ("unknown-brand", card_body(pan="9999999999999995"), "card-number-invalid", "request.form_invalid"),
    ("name-digits", card_body(cardholder="Ada 4"), "cardholder-invalid", "request.form_invalid"),
    ("name-long", card_body(cardholder="A" * 27), "cardholder-invalid", "request.form_invalid"),
    ("name-empty", card_body(cardholder="  "), "cardholder-invalid", "request.form_invalid"),
    ("month-13", card_body(exp_month=13), "expiry-invalid", "request.form_invalid"),
    ("expired", card_body(exp_month=1, exp_year=2020), "expiry-invalid", "request.form_invalid"),
    ("far-future", card_body(exp_year=2099), "expiry-invalid", "request.form_invalid"),
    ("negative-month", card_body(exp_month=-1), "expiry-invalid", "request.form_invalid"),
]


@pytest.mark.parametrize(
    ("raw", "content_type", "slug"),
    [c[1:] for c in HOSTILE_CARD_BODIES],
    ids=[c[0] for c in HOSTILE_CARD_BODIES],
)
def test_hostile_card_bodies(app: Flask, api: FlaskClient, raw: bytes, content_type: str, slug: str) -> None:
    record_id = new_record(api)
    before = counts(app)
    r = api_post(api, f"/records/{record_id}/cards", raw=raw, content_type=content_type)
    assert_problem(r, slug)
    assert counts(app) == before
    assert CANARY not in r.text
    assert VISA not in r.text
    last = audit_rows(app)[-1]
    assert last.outcome == "failure"
    assert last.actor == "crm"
    assert CANARY not in last.detail
    assert VISA not in last.detail
    assert VISA not in last.resource
    assert last.event == ("card.refused" if slug == "security-code-refused" else "request.input_refused")


@pytest.mark.parametrize(
    ("body", "slug", "event"), [c[1:] for c in INVALID_CARD_VALUES], ids=[c[0] for c in INVALID_CARD_VALUES]
)
def test_card_values_follow_the_browsers_rules(
    app: Flask, api: FlaskClient, body: dict[str, Any], slug: str, event: str
) -> None:
    record_id = new_record(api)
    before = counts(app)
    r = api_post(api, f"/records/{record_id}/cards", body)
    assert_problem(r, slug)
    assert counts(app) == before
    assert body["pan"] not in r.text
    last = audit_rows(app)[-1]
    assert (last.event, last.outcome, last.actor) == (event, "failure", "crm")


@pytest.mark.parametrize(
    ("crm_ref", "slug", "event"),
    [
        (VISA, "card-number-in-text", "records.refused"),  # alerted, as in the browser
        ("4111 1111 1111 1111", "card-number-in-text", "records.refused"),
        ("X123", "crm-ref-invalid", "request.form_invalid"),
        ("C12345678901234567890", "crm-ref-invalid", "request.form_invalid"),
        ("", "crm-ref-invalid", "request.form_invalid"),
    ],
)
def test_crm_ref_rules(app: Flask, api: FlaskClient, crm_ref: str, slug: str, event: str) -> None:
    before = counts(app)
    r = api_post(api, "/records", {"crm_ref": crm_ref})
    assert_problem(r, slug)
    assert counts(app) == before
    last = audit_rows(app)[-1]
    assert (last.event, last.actor) == (event, "crm")
    assert VISA not in last.detail
    assert "4111 1111" not in last.detail
    assert VISA not in r.text


@pytest.mark.parametrize(
    ("query", "slug"),
    [
        ("crm_ref=" + VISA, "card-number-in-text"),
        ("crm_ref=C1234567&crm_ref=C1234568", "input-refused"),
        ("crm_ref=C1234567&debug=1", "input-refused"),
        ("crm_ref=C1234567&limit=0", "input-refused"),
        ("crm_ref=C1234567&limit=101", "input-refused"),
        ("crm_ref=C1234567&limit=ten", "input-refused"),
        ("crm_ref=C1234567&cursor=forged.0123", "cursor-invalid"),
        ("crm_ref=%ff", "input-refused"),
        ("crm_ref=C%001234567", "input-refused"),
        ("", "missing-field"),
    ],
)
def test_hostile_queries(app: Flask, api: FlaskClient, query: str, slug: str) -> None:
    r = api_get(api, "/records?" + query)
    assert_problem(r, slug)
    assert VISA not in r.text
    assert VISA not in audit_rows(app)[-1].detail


def test_a_get_with_a_body_is_refused(api: FlaskClient) -> None:
    r = api.get(
        "/api/v1/records?crm_ref=C1234567", base_url=HTTPS, data=b"{}", content_type="application/json"
    )
    assert_problem(r, "input-refused")


def test_retire_takes_an_empty_object_only(app: Flask, api: FlaskClient) -> None:
    record_id = new_record(api)
    card = api_post(api, f"/records/{record_id}/cards", card_body()).json
    assert card is not None
    r = api_post(api, f"/records/{record_id}/cards/{card['id']}/retire", {"reason": "x"})
    assert_problem(r, "unknown-field")
    listed = api_get(api, f"/records/{record_id}/cards").json
    assert listed is not None
    assert listed["cards"][0]["retired"] is False
