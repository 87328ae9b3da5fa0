"""POST /api/v1/imports: the bulk import call (webapp/api/bulk.py): rows stored with the call's
Idempotency-Key in one transaction (a retry stores nothing twice), rule breaks refused row by row by
number and rule with nothing echoed, a malformed row or a security code refusing the whole call."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.api.conftest import api_post, assert_problem, audit_rows, counts
from webapp.records import bulk

PAN = "4539777777777777"
OTHER = "5204777777777778"


def row(**over: Any) -> dict[str, Any]:
    return {"crm_ref": "C1000001", "cardholder": "Ada Lovelace", "pan": PAN, "expiry": "12/2030", **over}


def test_rows_are_stored_and_refusals_listed_without_values(app: Flask, api: FlaskClient) -> None:
    rows = [
        row(),
        row(pan=PAN[:-1] + "8"),
        row(cardholder=OTHER),
        row(crm_ref="C1000002", expiry="01/2020"),
        row(),
    ]
    r = api_post(api, "/imports", {"rows": rows}, key="bulk-1")
    assert r.status_code == 200, r.text
    body = r.json
    assert body is not None
    assert (body["accepted"], body["refused"], body["records_created"]) == (2, 3, 1)
    assert [c["row"] for c in body["cards"]] == [1, 5]
    assert {(c["brand"], c["last4"]) for c in body["cards"]} == {("visa", PAN[-4:])}
    assert [(x["row"], x["field"]) for x in body["refusals"]] == [
        (2, "pan"),
        (3, "cardholder"),
        (4, "expiry"),
    ]
    assert PAN not in r.text
    assert OTHER not in r.text
    assert counts(app)["cards"] == 2
    again = api_post(api, "/imports", {"rows": rows}, key="bulk-1")  # the CRM's retry
    assert again.status_code == 200
    assert again.json == body
    assert counts(app)["cards"] == 2
    batches = [a for a in audit_rows(app) if a.event == "records.import_batch"]
    assert len(batches) == 1
    assert batches[0].actor == "crm"
    assert "accepted=2 refused=3" in batches[0].detail
    assert any(a.event == "records.import_refused" for a in audit_rows(app))  # the card number as a name


@pytest.mark.parametrize(
    ("rows", "slug"),
    [
        pytest.param([row(cvv="123")], "security-code-refused", id="cvv"),
        pytest.param([row(CVC2="123")], "security-code-refused", id="cvc2-upper"),
        pytest.param([row(extra="x")], "input-refused", id="unknown-field"),
        pytest.param([{"crm_ref": "C1000001"}], "input-refused", id="missing-fields"),
        pytest.param([row(pan=int(PAN))], "input-refused", id="number"),
        pytest.param(["C1000001,Ada,4539777777777777,12/2030"], "input-refused", id="not-an-object"),
        pytest.param([row(cardholder="Ada " * 13 + OTHER)], "card-number-in-text", id="pan-in-long-name"),
        pytest.param([row(crm_ref="C" * 40)], "input-refused", id="long-crm"),
        pytest.param([], "input-refused", id="no-rows"),
        pytest.param([row()] * (bulk.API_MAX_ROWS + 1), "body-too-large", id="too-many"),
    ],
)
def test_a_malformed_call_is_refused_whole(app: Flask, api: FlaskClient, rows: list[Any], slug: str) -> None:
    before = counts(app)
    r = api_post(api, "/imports", {"rows": rows})
    assert_problem(r, slug)
    assert PAN not in r.text
    assert OTHER not in r.text
    after = counts(app)
    assert after["cards"] == before["cards"]
    assert after["customer_records"] == before["customer_records"]


def test_rows_must_be_an_array(api: FlaskClient) -> None:
    assert_problem(api_post(api, "/imports", {"rows": "C1000001"}), "wrong-type")
