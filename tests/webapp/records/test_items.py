# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""Items (bank accounts, identity documents, notes), and editing and retiring cards and items:
validation tables, re-encryption through a real keyd, retired records read-only, ciphertexts bound
to their row and field, keyd sealed mid-edit leaving nothing half-written."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from keyd.errors import IntegrityFailure
from tests.keyd.conftest import Keyd
from tests.support import without_hex_ids
from tests.webapp.conftest import Person, get, post
from tests.webapp.helpers import audit_rows, events
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    IBAN,
    SUPERVISOR_PASSWORD,
    add_card,
    add_item,
    add_record,
    keyd_running,
    logged_in,
    reveal,
    rows,
    staff,
    token_of,
    vault,
)
from webapp.records import service
from webapp.records.errors import Refused
from webapp.records.items import contains_pan, iban
from webapp.records.tables import cards, items


def _decrypt(app: Flask, row_id: str, field: str) -> bytes:
    svc = app.extensions["strongroom"]
    with svc.engine.connect() as conn:
        return service.unchecked_decrypt(conn, svc.vault, row_id, field, actor="test", purpose="test")


def test_items_are_stored_encrypted_and_shown_masked(app: Flask, staff: dict[str, Person]) -> None:
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    bank = add_item(client, record_id, "bank", IBAN)
    doc = add_item(client, record_id, "identity", "c01x-00t47", "passport")
    note = add_item(client, record_id, "note", "Prefers calls after 17:00, speaks Dutch")
    page = get(client, f"/records/{record_id}").text
    for hint in ("DE •••• 3000", "passport •••• 47", "note, 39 characters"):
        assert hint in page
    for secret in ("DE8937040044", "C01X00T47", "Dutch"):
        assert secret not in page
    assert _decrypt(app, bank, "value") == b"DE89370400440532013000"
    assert _decrypt(app, doc, "value") == b"C01X00T47"
    assert _decrypt(app, note, "value") == b"Prefers calls after 17:00, speaks Dutch"
    for row in rows(app, items):
        assert b"DE89" not in bytes(row.value_ct)
        assert b"Dutch" not in bytes(row.value_ct)
    assert [r.event for r in audit_rows(app, "item.added")] == ["item.added"] * 3


# A typo in an item's value is shown next to the field, audited as a form error and not alerted; a
# card number in a note is a policy breach: shown next to the field too, but alerted (docs/alerts.md).
TYPO, BREACH = "request.form_invalid", "item.refused"
BAD_ITEMS = [
    ("bank", {"value": "DE89 3704 0044 0532 0130 01"}, "IBAN: check digits are wrong", TYPO),
    ("bank", {"value": "XX89 3704 0044 0532 0130 00"}, "IBAN: unknown country code", TYPO),
    ("bank", {"value": "DE89 3704 0044 0532 0130"}, "IBAN: wrong length for DE", TYPO),
    ("bank", {"value": "DE89-3704-0044-0532-0130-00"}, "IBAN: letters and digits only", TYPO),
    ("identity", {"value": "C01X00T47", "doc_type": "library_card"}, "document type: unknown", TYPO),
    ("identity", {"value": "C01X00T47"}, "document type: unknown", TYPO),
    ("identity", {"value": "AB12", "doc_type": "passport"}, "5 to 20 characters", TYPO),
    ("identity", {"value": "AB12/3456", "doc_type": "passport"}, "letters and digits only", TYPO),
    ("identity", {"value": "ÄB123456", "doc_type": "passport"}, "letters and digits only", TYPO),
    ("note", {"value": "x" * 2001}, "note: at most 2000 characters", TYPO),
    ("note", {"value": "call\u200bme"}, "note: control or invisible characters", TYPO),
    ("note", {"value": "call\u202eme"}, "note: control or invisible characters", TYPO),
    ("note", {"value": "card is 4111 1111 1111 1111 ok"}, "looks like a card number", BREACH),
    ("note", {"value": "card is 4111-1111-1111-1111"}, "looks like a card number", BREACH),
    ("note", {"value": "   "}, "note: required", TYPO),
]


@pytest.mark.parametrize(("kind", "fields", "reason", "event"), BAD_ITEMS)
def test_bad_items_are_refused_audited_and_change_nothing(
    app: Flask, staff: dict[str, Person], kind: str, fields: dict[str, str], reason: str, event: str
) -> None:
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    r = post(client, f"/records/{record_id}/{kind}", data={"csrf_token": token_of(client), **fields})
    assert r.status_code == 400
    assert reason in r.text
    if len(fields["value"].strip()) > 8:
        assert fields["value"] not in r.text  # the refusal names the rule, never the value
    assert rows(app, items) == []
    (refusal,) = audit_rows(app, event)
    assert reason in refusal.detail
    assert "4111" not in refusal.detail
    assert (event in events(app)) == (event == BREACH)


@pytest.mark.parametrize("value", ["line\x07bell", "two\nlines", "nul\x00"])
def test_control_characters_are_refused_before_the_view(
    app: Flask, staff: dict[str, Person], value: str
) -> None:
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    r = post(client, f"/records/{record_id}/note", data={"csrf_token": token_of(client), "value": value})
    assert r.status_code == 400
    assert "control" in r.text
    assert rows(app, items) == []
    assert audit_rows(app, "request.input_refused")


def test_the_rules_on_their_own() -> None:
    assert iban("gb82 west 1234 5698 7654 32") == ("GB82WEST12345698765432", "GB •••• 5432")
    assert contains_pan("x 5555555555554444 y")
    assert not contains_pan("order 1234567890123 ref")  # 13 digits, not Luhn-valid in any window
    assert not contains_pan("call 0171 555 12")


# IBANs of countries outside SEPA, from the registry's own examples: every registered country is known.
GOOD_IBANS = [
    ("BR1800360305000010009795493C1", "BR •••• 93C1"),
    ("sa03 8000 0000 6080 1016 7519", "SA •••• 7519"),
    (" TR33 0006 1005 1978 6457 8413 26 ", "TR •••• 1326"),
    ("KZ86125KZT5004100100", "KZ •••• 0100"),
    ("AE07 0331 2345 6789 0123 456", "AE •••• 3456"),
    ("QA58DOHB00001234567890ABCDEFG", "QA •••• DEFG"),
    ("UA213223130000026007233566001", "UA •••• 6001"),
    ("EG380019000500000000263180002", "EG •••• 0002"),
    ("MU17BOMM0101101030300200000MUR", "MU •••• 0MUR"),
    # A bank code Belgium's bank directory (in python-stdnum) does not list: ISO 13616 valid, accepted.
    ("BE68 5390 0754 7034", "BE •••• 7034"),
]


@pytest.mark.parametrize(("raw", "hint"), GOOD_IBANS)
def test_ibans_of_every_registered_country_are_accepted(raw: str, hint: str) -> None:
    assert iban(raw) == (raw.replace(" ", "").upper(), hint)


BAD_IBANS = [
    ("BR1800360305000010009795493C2", "IBAN: check digits are wrong"),
    ("SA9380000000608010167519", "IBAN: check digits are wrong"),
    ("TR33000610051978645784132", "IBAN: wrong length for TR"),
    ("KZ86125KZT50041001000", "IBAN: wrong length for KZ"),
    ("DE89" + "0" * 5000, "IBAN: wrong length for DE"),
    ("DEAB370400440532013000", "IBAN: wrong length for DE"),  # check digits must be digits
    ("DE0537040044053201300A", "IBAN: the account part does not have DE's format"),  # mod 97 holds
    ("BR450036030500001000979549311", "IBAN: the account part does not have BR's format"),
    ("XX89370400440532013000", "IBAN: unknown country code"),
    ("US42123456789012345678", "IBAN: unknown country code"),  # no IBAN in the registry
    ("1289370400440532013000", "IBAN: unknown country code"),
    ("D", "IBAN: unknown country code"),
    ("", "IBAN: letters and digits only (spaces allowed)"),
    ("KZ86-125K-ZT50-0410-0100", "IBAN: letters and digits only (spaces allowed)"),
    ("KZ86\t125KZT5004100100", "IBAN: letters and digits only (spaces allowed)"),
    ("KZ86\u00a0125KZT5004100100", "IBAN: letters and digits only (spaces allowed)"),
    ("KZ86125KZT500410010\uff10", "IBAN: letters and digits only (spaces allowed)"),  # fullwidth 0
    ("\uff2bZ86125KZT5004100100", "IBAN: letters and digits only (spaces allowed)"),  # fullwidth K
    ("KZ86125KZT5004100100\u200b", "IBAN: letters and digits only (spaces allowed)"),
]


@pytest.mark.parametrize(("raw", "reason"), BAD_IBANS)
def test_bad_ibans_are_refused_by_rule_without_the_value(raw: str, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        iban(raw)
    assert refused.value.reason == reason
    assert str(refused.value) == reason
    if len(raw) > 4:
        assert raw[4:] not in reason


def test_editing_re_encrypts_under_the_same_context(app: Flask, staff: dict[str, Person]) -> None:
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    item_id = add_item(client, record_id, "bank", IBAN)
    card_id = add_card(client, record_id)
    (old_item,) = rows(app, items)
    (old_card,) = rows(app, cards)
    r = post(
        client,
        f"/records/{record_id}/bank/{item_id}/edit",
        data={"csrf_token": token_of(client), "value": "GB82 WEST 1234 5698 7654 32"},
    )
    assert r.status_code == 302, r.text
    r = post(
        client,
        f"/records/{record_id}/cards/{card_id}/edit",
        data={"csrf_token": token_of(client), "cardholder": "Ada King", "exp_month": "3", "exp_year": "2031"},
    )
    assert r.status_code == 302, r.text
    (new_item,) = rows(app, items)
    (new_card,) = rows(app, cards)
    assert new_item.value_ct != old_item.value_ct
    assert (new_item.hint, new_item.updated_by) == ("GB •••• 5432", "alice")
    assert _decrypt(app, item_id, "value") == b"GB82WEST12345698765432"
    assert _decrypt(app, card_id, "cardholder") == b"Ada King"
    assert _decrypt(app, card_id, "expiry") == b"03/2031"
    assert new_card.pan_ct == old_card.pan_ct  # the number is never edited
    assert (new_card.brand, new_card.last4) == ("visa", "1111")
    assert audit_rows(app, "item.edited")
    assert audit_rows(app, "card.edited")


BAD_EDITS = [
    ({"cvv": "123"}, "cvv_present", "card.refused"),
    ({"exp_month": "1", "exp_year": "2020"}, "the card has expired", "request.form_invalid"),
    ({"cardholder": "A" * 27}, "at most 26 characters", "request.form_invalid"),
    ({"cardholder": "Ada\u200bKing"}, "control or invisible", "request.form_invalid"),
]


@pytest.mark.parametrize(("fields", "reason", "event"), BAD_EDITS)
def test_bad_card_edits_are_refused(
    app: Flask, staff: dict[str, Person], fields: dict[str, str], reason: str, event: str
) -> None:
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    card_id = add_card(client, record_id)
    before = rows(app, cards)
    data = {"cardholder": "Ada King", "exp_month": "3", "exp_year": "2031", **fields}
    r = post(
        client, f"/records/{record_id}/cards/{card_id}/edit", data={"csrf_token": token_of(client), **data}
    )
    assert r.status_code == 400
    assert reason in r.text
    assert rows(app, cards) == before
    assert audit_rows(app, event)
    assert (event in events(app)) == (event == "card.refused")


def test_retired_records_cards_and_items_are_read_only(app: Flask, staff: dict[str, Person]) -> None:
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    card_id = add_card(client, record_id)
    item_id = add_item(client, record_id, "note", "first note")
    other = add_item(client, record_id, "note", "second note")
    t = token_of(client)
    assert (
        post(client, f"/records/{record_id}/note/{other}/retire", data={"csrf_token": t}).status_code == 302
    )
    r = post(client, f"/records/{record_id}/note/{other}/edit", data={"csrf_token": t, "value": "changed"})
    assert r.status_code == 400
    assert "note is retired: it is read-only" in r.text
    assert post(client, f"/records/{record_id}/retire", data={"csrf_token": t}).status_code == 302
    before = (rows(app, cards), rows(app, items))
    attempts = [
        (
            f"/records/{record_id}/cards/{card_id}/edit",
            {"cardholder": "Ada King", "exp_month": "3", "exp_year": "2031"},
        ),
        (f"/records/{record_id}/cards/{card_id}/retire", {}),
        (f"/records/{record_id}/note/{item_id}/edit", {"value": "changed"}),
        (f"/records/{record_id}/note/{item_id}/retire", {}),
        (f"/records/{record_id}/note", {"value": "new"}),
    ]
    for path, data in attempts:
        r = post(client, path, data={"csrf_token": t, **data})
        assert r.status_code == 400, path
        assert "record is retired: it is read-only" in r.text
    assert (rows(app, cards), rows(app, items)) == before
    assert len(audit_rows(app, "card.refused")) == 2
    assert len(audit_rows(app, "item.refused")) == 4
    # Read-only is still readable: the masked views keep working.
    assert get(client, f"/records/{record_id}/note/{item_id}").status_code == 200


def test_an_item_of_another_record_or_kind_is_not_found(app: Flask, staff: dict[str, Person]) -> None:
    client = logged_in(app, staff["clerk"])
    first = add_record(client)
    second = add_record(client, "C7654321")
    item_id = add_item(client, first, "note", "first note")
    assert get(client, f"/records/{second}/note/{item_id}").status_code == 404
    assert get(client, f"/records/{first}/bank/{item_id}").status_code == 404
    assert get(client, f"/records/{first}/note/not-an-id").status_code == 404


def test_a_ciphertext_moved_to_another_row_or_field_does_not_decrypt(
    app: Flask, staff: dict[str, Person], owner_engine: sa.Engine
) -> None:
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    first = add_item(client, record_id, "note", "first note")
    second = add_item(client, record_id, "note", "second note")
    card_id = add_card(client, record_id)
    with owner_engine.begin() as conn:
        ct = conn.execute(sa.select(items.c.value_ct).where(items.c.id == first)).scalar_one()
        name_ct = conn.execute(sa.select(cards.c.name_ct).where(cards.c.id == card_id)).scalar_one()
        conn.execute(sa.update(items).where(items.c.id == second).values(value_ct=ct))
        conn.execute(sa.update(cards).where(cards.c.id == card_id).values(pan_ct=name_ct))  # field swap
    with pytest.raises(IntegrityFailure):
        _decrypt(app, second, "value")
    with pytest.raises(IntegrityFailure):
        _decrypt(app, card_id, "pan")
    # Through the reveal route: refused, audited, alerted, nothing shown.
    sup = logged_in(app, staff["supervisor"])
    r = reveal(sup, f"/records/{record_id}/reveal/note/{second}/value", SUPERVISOR_PASSWORD)
    assert r.status_code == 500
    assert "integrity check" in r.text
    assert "first note" not in r.text
    assert audit_rows(app, "reveal.integrity_failed")
    assert "reveal.integrity_failed" in events(app)
    assert not audit_rows(app, "reveal.done")


def test_keyd_sealed_mid_session_changes_nothing(
    app: Flask, staff: dict[str, Person], keyd_running: tuple[Keyd, bytes]
) -> None:
    keyd, key = keyd_running
    client = logged_in(app, staff["clerk"])
    record_id = add_record(client)
    item_id = add_item(client, record_id, "bank", IBAN)
    card_id = add_card(client, record_id)
    sup = logged_in(app, staff["supervisor"])
    reveal_url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    page = get(sup, reveal_url)
    assert page.status_code == 200
    before = (rows(app, cards), rows(app, items))
    t = token_of(client)  # the home page itself needs an open vault
    keyd.stop()
    keyd.start()  # a restarted keyd holds no key: sealed until the operator drops it again
    try:
        attempts = [
            (client, f"/records/{record_id}/bank/{item_id}/edit", {"value": "GB82 WEST 1234 5698 7654 32"}),
            (client, f"/records/{record_id}/note", {"value": "a new note"}),
            (
                client,
                f"/records/{record_id}/cards/{card_id}/edit",
                {"cardholder": "Ada King", "exp_month": "3", "exp_year": "2031"},
            ),
        ]
        for who, path, data in attempts:
            r = post(who, path, data={"csrf_token": t, **data})
            assert r.status_code == 503, path
            assert "sealed" in r.text
        r = reveal(sup, reveal_url, SUPERVISOR_PASSWORD)
        assert r.status_code == 503
        assert "4111" not in without_hex_ids(r.text)
        assert (rows(app, cards), rows(app, items)) == before
        assert len(audit_rows(app, "error.vault_sealed")) == 4
        assert len(audit_rows(app, "item.added")) == 1  # the one before keyd was sealed
        for event in ("item.edited", "card.edited", "reveal.done"):
            assert not audit_rows(app, event)
    finally:
        keyd.unseal(key)
