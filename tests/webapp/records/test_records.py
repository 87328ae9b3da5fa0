"""Customer records and cards, against a real keyd subprocess (unsealed through its drop file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from keyd.client import KeydClient
from keyd.errors import IntegrityFailure
from tests.fixtures.pki import TestCA
from tests.keyd.conftest import Keyd, unsealed_keyd
from tests.webapp.conftest import PASSWORDS, Person, client_for, csrf_token, get, login, post
from tests.webapp.helpers import audit_rows, events
from webapp.config import ConfigError
from webapp.records import service
from webapp.records.tables import cards, customer_records

VISA = "4111 1111 1111 1111"
CRM = "C1234567"


@pytest.fixture(scope="module")
def keyd_running() -> Iterator[tuple[Keyd, bytes]]:
    with unsealed_keyd() as running:
        yield running.keyd, running.key


@pytest.fixture
def vault(keyd_running: tuple[Keyd, bytes]) -> Iterator[KeydClient]:  # the real client, not FakeVault
    client = KeydClient(keyd_running[0].socket, timeout=5.0)
    yield client
    client.close()


def _logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def _add_record(client: FlaskClient, crm: str = CRM) -> int:
    page = get(client, "/records/")
    r = post(client, "/records/", data={"csrf_token": csrf_token(page.text), "crm_ref": crm})
    assert r.status_code == 302, r.text
    return int(r.headers["Location"].rsplit("/", 1)[1])


def _card_form(client: FlaskClient, record_id: int, **fields: str) -> dict[str, str]:
    page = get(client, f"/records/{record_id}")
    assert page.status_code == 200
    data = {"pan": VISA, "cardholder": "Ada Lovelace", "exp_month": "12", "exp_year": "2028"}
    data.update(fields)
    return {"csrf_token": csrf_token(page.text), **{k: v for k, v in data.items() if v is not None}}


def _rows(app: Flask, table: sa.Table) -> list[sa.Row]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return list(conn.execute(sa.select(table)))


def test_clerk_adds_finds_views_a_record_and_a_masked_card(app: Flask, people: dict[str, Person]) -> None:
    client = _logged_in(app, people["alice"])
    record_id = _add_record(client)
    found = get(client, f"/records/?crm_ref={CRM}")
    assert found.status_code == 200
    assert f"/records/{record_id}" in found.text
    r = post(client, f"/records/{record_id}/cards", data=_card_form(client, record_id))
    assert r.status_code == 302, r.text
    page = get(client, f"/records/{record_id}")
    assert "visa •••• 1111" in page.text
    assert "4111111111111111" not in page.text
    assert "Ada Lovelace" not in page.text
    (card,) = _rows(app, cards)
    assert (card.brand, card.last4, card.record_id) == ("visa", "1111", record_id)
    for blob in (card.pan_ct, card.name_ct, card.expiry_ct):
        assert b"4111" not in bytes(blob)
        assert b"Ada" not in bytes(blob)
    events = [r.event for r in audit_rows(app) if r.event.startswith(("records.", "card."))]
    assert events == ["records.added", "records.listed", "records.viewed", "card.added", "records.viewed"]
    # The service decrypts what it stored (the reveal slice will put checks around this).
    with app.extensions["strongroom"].engine.connect() as conn:
        pan = service.unchecked_decrypt(
            conn, app.extensions["strongroom"].vault, card.id, "pan", actor="alice", purpose="test"
        )
    assert pan == b"4111111111111111"


def test_a_ciphertext_copied_to_another_card_does_not_decrypt(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    client = _logged_in(app, people["alice"])
    record_id = _add_record(client)
    for pan in (VISA, "5555 5555 5555 4444"):
        assert (
            post(
                client, f"/records/{record_id}/cards", data=_card_form(client, record_id, pan=pan)
            ).status_code
            == 302
        )
    first, second = sorted(_rows(app, cards), key=lambda c: c.last4)
    with owner_engine.begin() as conn:
        conn.execute(sa.update(cards).where(cards.c.id == second.id).values(pan_ct=first.pan_ct))
    with app.extensions["strongroom"].engine.connect() as conn, pytest.raises(IntegrityFailure):
        service.unchecked_decrypt(
            conn, app.extensions["strongroom"].vault, second.id, "pan", actor="alice", purpose="test"
        )


def test_keyd_sealed_mid_request_leaves_no_card(
    app: Flask, people: dict[str, Person], keyd_running: tuple[Keyd, bytes]
) -> None:
    keyd, key = keyd_running
    client = _logged_in(app, people["alice"])
    record_id = _add_record(client)
    data = _card_form(client, record_id)
    keyd.stop()
    keyd.start()  # a restarted keyd holds no key: sealed until the operator drops it again
    try:
        r = post(client, f"/records/{record_id}/cards", data=data)
        assert r.status_code == 503
        assert "sealed" in r.text
        assert _rows(app, cards) == []
        assert audit_rows(app, "error.vault_sealed")
        assert not audit_rows(app, "card.added")
    finally:
        keyd.unseal(key)


# (fields, reason, audit event): a typo is shown next to its field and audited as a form error, not
# alerted; a security code sent is a policy breach, refused and alerted (docs/alerts.md).
BAD_CARDS = [
    ({"pan": "4111 1111 1111 111x"}, "digits only", "request.form_invalid"),
    ({"pan": "4111 1111 1111 1112"}, "Luhn", "request.form_invalid"),
    ({"pan": "9999 9999 9999 9995"}, "unknown card brand", "request.form_invalid"),
    ({"pan": "4111"}, "13 to 19 digits", "request.form_invalid"),
    ({"exp_month": "10", "exp_year": "2026"}, "the card has expired", "request.form_invalid"),
    ({"cvv": "123"}, "cvv_present", "card.refused"),
    ({"cvc2": ""}, "cvv_present", "card.refused"),
    ({"security_code": "1234"}, "cvv_present", "card.refused"),
    ({"cardholder": "A" * 27}, "at most 26 characters", "request.form_invalid"),
    ({"cardholder": "Ada\u200bLovelace"}, "control or invisible characters", "request.form_invalid"),
    ({"cardholder": "Ada <script>"}, "letters, spaces", "request.form_invalid"),
]


@pytest.mark.parametrize(("fields", "reason", "event"), BAD_CARDS)
def test_bad_card_input_is_refused_audited_and_changes_nothing(
    app: Flask, people: dict[str, Person], fields: dict[str, str], reason: str, event: str
) -> None:
    client = _logged_in(app, people["alice"])
    record_id = _add_record(client)
    r = post(client, f"/records/{record_id}/cards", data=_card_form(client, record_id, **fields))
    assert r.status_code == 400
    assert reason in r.text
    for name, value in fields.items():
        if len(value) > 3 and name not in ("exp_month", "exp_year"):  # the expiry is put back
            assert value not in r.text  # the refusal names the rule, never the value
    assert _rows(app, cards) == []
    (refusal,) = audit_rows(app, event)
    assert reason in refusal.detail
    assert refusal.outcome == "failure"
    assert (event in events(app)) == (event == "card.refused")  # only the policy breach is alerted


def test_control_characters_in_the_name_are_refused_before_the_view(
    app: Flask, people: dict[str, Person]
) -> None:
    client = _logged_in(app, people["alice"])
    record_id = _add_record(client)
    r = post(client, f"/records/{record_id}/cards", data=_card_form(client, record_id, cardholder="Ada\x07"))
    assert r.status_code == 400
    assert "control" in r.text
    assert _rows(app, cards) == []
    assert audit_rows(app, "request.input_refused")


@pytest.mark.parametrize("crm", ["1234567", "C12", "C12345678901", "c1234567", "C1234567 "])
def test_bad_crm_reference_is_refused(app: Flask, people: dict[str, Person], crm: str) -> None:
    client = _logged_in(app, people["alice"])
    page = get(client, "/records/")
    r = post(client, "/records/", data={"csrf_token": csrf_token(page.text), "crm_ref": crm})
    assert r.status_code == 400
    assert "CRM reference: wrong format" in r.text
    assert _rows(app, customer_records) == []
    assert audit_rows(app, "request.form_invalid")  # a typo: shown next to the field, not alerted
    assert not audit_rows(app, "records.refused")
    assert get(client, "/records/?crm_ref=X1").status_code == 400


def test_the_crm_pattern_is_configurable(make_app: Callable[..., Flask]) -> None:
    app = make_app(CRM_REF_PATTERN=r"^CRM-[0-9]{4}$")
    assert app.config["CRM_REF_PATTERN"] == r"^CRM-[0-9]{4}$"
    with pytest.raises(ConfigError):
        make_app(CRM_REF_PATTERN="C[0-9]+")  # not anchored
    with pytest.raises(ConfigError):
        make_app(CRM_REF_PATTERN="^C[$")


def test_a_retired_record_is_read_only(app: Flask, people: dict[str, Person]) -> None:
    client = _logged_in(app, people["alice"])
    record_id = _add_record(client)
    data = _card_form(client, record_id)
    page = get(client, f"/records/{record_id}")
    assert (
        post(client, f"/records/{record_id}/retire", data={"csrf_token": csrf_token(page.text)}).status_code
        == 302
    )
    r = post(client, f"/records/{record_id}/cards", data=data)
    assert r.status_code == 400
    assert "retired: it is read-only" in r.text
    again = post(client, f"/records/{record_id}/retire", data={"csrf_token": csrf_token(page.text)})
    assert again.status_code == 400
    assert _rows(app, cards) == []
    assert len(audit_rows(app, "records.retired")) == 1
    assert len(audit_rows(app, "card.refused")) == 1
    assert len(audit_rows(app, "records.refused")) == 1


def test_auditors_and_admins_get_403_on_every_records_route(
    app: Flask, people: dict[str, Person], ca: TestCA, tmp_path: Path
) -> None:
    record_id = _add_record(_logged_in(app, people["alice"]))
    runner = app.test_cli_runner()
    pw = PASSWORDS["bob"]
    added = runner.invoke(
        args=["users", "add", "adam", "--role", "admin", "--password-stdin"], input=pw + "\n"
    )
    assert added.exit_code == 0, added.output
    issued = ca.issue("adam")
    pem, _ = issued.write(tmp_path, "adam")
    assert runner.invoke(args=["certs", "bind", "adam", str(pem)]).exit_code == 0
    for person in (people["audrey"], Person("adam", pw, issued)):
        client = _logged_in(app, person)
        token = csrf_token(get(client, "/").text)
        before = len(audit_rows(app, "request.access_denied"))
        assert get(client, "/records/").status_code == 403
        assert get(client, f"/records/?crm_ref={CRM}").status_code == 403
        assert get(client, f"/records/{record_id}").status_code == 403
        posts = (
            ("/records/", {"crm_ref": CRM}),
            (f"/records/{record_id}/retire", {}),
            (f"/records/{record_id}/cards", {"pan": VISA}),
        )
        for path, data in posts:
            assert post(client, path, data={"csrf_token": token, **data}).status_code == 403
        assert len(audit_rows(app, "request.access_denied")) == before + 6
    assert len(_rows(app, customer_records)) == 1
    assert _rows(app, cards) == []


def test_keyd_down_mid_request_leaves_no_card(
    app: Flask, people: dict[str, Person], keyd_running: tuple[Keyd, bytes]
) -> None:
    keyd, key = keyd_running
    client = _logged_in(app, people["alice"])
    record_id = _add_record(client)
    data = _card_form(client, record_id)
    keyd.stop()
    try:
        r = post(client, f"/records/{record_id}/cards", data=data)
        assert r.status_code == 503
        assert "unavailable" in r.text
        assert _rows(app, cards) == []
        assert audit_rows(app, "error.vault_unavailable")
        assert not audit_rows(app, "card.added")
    finally:
        keyd.start()
        keyd.unseal(key)
