"""Idempotency-Key: a retry gets the first answer and never stores a card twice; the same key with
another body is refused; no key, no POST; keys expire after 24 hours."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures.pki import TestCA
from tests.webapp.api.conftest import (
    Service,
    add_service,
    api_post,
    assert_problem,
    audit_rows,
    card_body,
    counts,
    new_record,
)
from tests.webapp.conftest import client_for
from webapp.api.idempotency import TTL
from webapp.clock import FakeClock


def test_a_retry_gets_the_same_answer_and_one_card(app: Flask, api: FlaskClient) -> None:
    rid = new_record(api)
    first = api_post(api, f"/records/{rid}/cards", card_body(), key="order-1")
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    stored = counts(app)
    again = api_post(api, f"/records/{rid}/cards", card_body(), key="order-1")
    assert (again.status_code, again.json) == (first.status_code, first.json)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(app) == stored  # no second card
    assert stored["cards"] == 1
    last = audit_rows(app)[-1]
    assert (last.event, last.outcome, last.actor) == ("api.replayed", "success", "crm")


def test_the_same_body_spelled_differently_is_the_same_request(app: Flask, api: FlaskClient) -> None:
    rid = new_record(api)
    first = api_post(
        api,
        f"/records/{rid}/cards",
        raw=b'{"pan":"4111111111111111","cardholder":"Ada Lovelace","exp_month":12,"exp_year":2030}',
        key="k",
    )
    again = api_post(
        api,
        f"/records/{rid}/cards",
        raw=b'{ "exp_year": 2030, "exp_month": 12, "cardholder": "Ada Lovelace", "pan": "4111111111111111" }',
        key="k",
    )
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    "other",
    [
        {"body": card_body(pan="5555555555554444")},
        {"body": card_body(cardholder="Grace Hopper")},
        {"path": "other-record"},
        {"path": "records"},
    ],
)
def test_the_same_key_for_another_request_is_refused(
    app: Flask, api: FlaskClient, other: dict[str, object]
) -> None:
    rid, rid2 = new_record(api), new_record(api)
    assert api_post(api, f"/records/{rid}/cards", card_body(), key="k-1").status_code == 201
    before = counts(app)
    if other.get("path") == "other-record":
        r = api_post(api, f"/records/{rid2}/cards", card_body(), key="k-1")
    elif other.get("path") == "records":
        r = api_post(api, "/records", {"crm_ref": "C1234567"}, key="k-1")
    else:
        r = api_post(api, f"/records/{rid}/cards", other["body"], key="k-1")
    assert_problem(r, "idempotency-key-reused")
    assert counts(app) == before
    assert audit_rows(app)[-1].event == "api.idempotency_refused"


@pytest.mark.parametrize(
    ("key", "slug"),
    [
        (None, "idempotency-key-missing"),
        ("has space", "idempotency-key-invalid"),
        ("x" * 65, "idempotency-key-invalid"),
        ("é", "idempotency-key-invalid"),
    ],
)
def test_every_post_needs_a_well_formed_key(app: Flask, api: FlaskClient, key: str | None, slug: str) -> None:
    rid = new_record(api)
    before = counts(app)
    assert_problem(api_post(api, f"/records/{rid}/cards", card_body(), key=key), slug)
    assert_problem(api_post(api, "/records", {"crm_ref": "C1234567"}, key=key), slug)
    assert counts(app) == before


def test_a_refused_call_stores_no_key(app: Flask, api: FlaskClient) -> None:
    rid = new_record(api)
    bad = api_post(api, f"/records/{rid}/cards", card_body(pan="4111111111111112"), key="fix-me")
    assert_problem(bad, "card-number-invalid")
    # The client fixes the number and retries with the same key: it is a first call, not a replay.
    good = api_post(api, f"/records/{rid}/cards", card_body(), key="fix-me")
    assert good.status_code == 201
    assert "Idempotent-Replayed" not in good.headers


def test_keys_expire(app: Flask, api: FlaskClient, clock: FakeClock) -> None:
    rid = new_record(api)
    first = api_post(api, f"/records/{rid}/cards", card_body(), key="daily")
    clock.advance(TTL - timedelta(seconds=1))
    assert api_post(api, f"/records/{rid}/cards", card_body(), key="daily").json == first.json
    clock.advance(timedelta(seconds=2))
    later = api_post(api, f"/records/{rid}/cards", card_body(), key="daily")
    assert later.status_code == 201
    assert later.json != first.json
    assert counts(app)["cards"] == 2
    assert counts(app)["api_idempotency"] == 2  # the records' key and this one, reused in place


def test_keys_are_per_service_account(app: Flask, api: FlaskClient, ca: TestCA, tmp_path: Path) -> None:
    other = client_for(app, add_service(app, ca, tmp_path, "crm-eu").cert)
    a = api_post(api, "/records", {"crm_ref": "C1234567"}, key="same")
    b = api_post(other, "/records", {"crm_ref": "C1234567"}, key="same")
    assert a.status_code == b.status_code == 201
    assert a.json != b.json
    assert "Idempotent-Replayed" not in b.headers


def test_one_key_sent_twice_at_once_stores_one_card(
    app: Flask, make_app: Any, api: FlaskClient, crm: Service
) -> None:
    """Two workers (two app instances on one database) get the same call at the same moment: one
    card is stored; the other call is answered from the first (SQLite: it waits for the write lock)
    or refused with idempotency-key-in-use (MariaDB: its insert of the key fails at the first's
    commit), and then a retry is answered from the first."""
    from tests.webapp.test_concurrency import at_once

    rid = new_record(api)
    other = client_for(make_app(), crm.cert)
    answers: list[Any] = []

    def call(client: FlaskClient) -> Callable[[], None]:
        return lambda: answers.append(api_post(client, f"/records/{rid}/cards", card_body(), key="race"))

    at_once([call(api), call(other)])
    assert counts(app)["cards"] == 1
    statuses = sorted(a.status_code for a in answers)
    assert statuses in ([201, 201], [201, 409])
    created = next(a for a in answers if a.status_code == 201)
    retry = api_post(api, f"/records/{rid}/cards", card_body(), key="race")
    assert retry.json == created.json
    assert counts(app)["cards"] == 1
