"""The one card-number detector (webapp/redact.py): what it finds, what it leaves alone, its bounds,
and the audit writer masking whatever it finds in every field before hashing."""

from __future__ import annotations

import time
import unicodedata
from dataclasses import fields

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.webapp.helpers import audit_rows
from tests.webapp.pan_spellings import BRAND_NUMBERS, HARMLESS, HOSTILE, PAN, joined, with_check_digit
from webapp.audit import service as audit
from webapp.audit.service import SUCCESS, AuditEntry
from webapp.events import Event
from webapp.records.cards import _BRANDS
from webapp.redact import (
    _DATE_TIME,
    MAX_TEXT,
    PAN_MAX,
    PAN_MIN,
    contains_pan,
    find_pans,
    luhn_ok,
    mask_pans,
)


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.digit(c)) for c in text if unicodedata.digit(c, None) is not None)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("/records/4111111111111111", "/records/************1111"),
        ("pan 4111 1111 1111 1111.", "pan ************1111."),
        ("4111-1111-1111-1111", "************1111"),
        ("4111.1111.1111.1111", "************1111"),
        ("amex 378282246310005", "amex ***********0005"),
        ("two 5555555555554444 and 4111111111111111", "two ************4444 and ************1111"),
        ("４１１１ １１１１ １１１１ １１１１", "************1111"),
        ("4111 1111 1111 1112", "4111 1111 1111 1112"),  # not Luhn-valid: not a PAN
        ("2026-11-28T10:00:00.000000Z", "2026-11-28T10:00:00.000000Z"),
        ("count=300 window=3600", "count=300 window=3600"),
        ("", ""),
        ("hash=" + "a" * 20 + "30218282104860" + "f" * 30, "hash=" + "a" * 20 + "30218282104860" + "f" * 30),
        ("card4111111111111111", "card************1111"),
        ("no digits at all", "no digits at all"),
    ],
)
def test_pans_keep_only_their_last_four_digits(text: str, masked: str) -> None:
    assert mask_pans(text) == masked


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_every_hostile_spelling_is_found_and_masked(name: str) -> None:
    text = HOSTILE[name]
    assert contains_pan(text)
    masked = mask_pans(text)
    assert not find_pans(masked)
    digits = _ascii_digits(masked)
    assert PAN[:12] not in digits
    assert BRAND_NUMBERS["amex-15"][:11] not in digits


@pytest.mark.parametrize("name", sorted(BRAND_NUMBERS))
@pytest.mark.parametrize("sep", ["", ".", "/", "_", ",", "\u00a0", "\u2009", "\u3000"])
def test_every_brand_and_length_is_found(name: str, sep: str) -> None:
    number = BRAND_NUMBERS[name]
    assert luhn_ok(number)
    assert contains_pan(f"x {joined(sep, number)} y")
    assert number[:-4] not in _ascii_digits(mask_pans(joined(sep, number)))


@pytest.mark.parametrize("name", sorted(HARMLESS))
def test_harmless_text_is_left_alone(name: str) -> None:
    assert not contains_pan(HARMLESS[name])
    assert mask_pans(HARMLESS[name]) == HARMLESS[name]


def test_the_length_table_covers_every_brand_the_card_form_accepts() -> None:
    lengths = set().union(*(lengths for _, lengths, _ in _BRANDS))
    assert lengths <= set(range(PAN_MIN, PAN_MAX + 1))
    assert not contains_pan(with_check_digit("42837105928"))  # 12 digits: no brand's length
    assert not contains_pan("4" + with_check_digit("28371059284617305") + "0")  # 20 digits


def test_hex_tokens_are_spared_by_masking_but_not_by_free_text() -> None:
    fingerprint = "a" * 20 + "30218282104860" + "f" * 30
    assert mask_pans(fingerprint) == fingerprint
    assert contains_pan(fingerprint)  # a note or a reason has no business holding a hash


@pytest.mark.parametrize(
    "text",
    [
        "1" * MAX_TEXT,  # one group far beyond any card
        "1." * (MAX_TEXT // 2),  # one long run of one-digit groups
        "12:" * (MAX_TEXT // 3),  # colons everywhere: the time pattern's lookarounds
        "2024-05-06 " * (MAX_TEXT // 11),
        ("a" * 31 + "1") * (MAX_TEXT // 32),  # hex tokens
        "\uff11\u3000" * (MAX_TEXT // 2),
    ],
)
def test_hostile_input_takes_linear_time(text: str) -> None:
    start = time.monotonic()
    contains_pan(text)
    mask_pans(text)
    assert time.monotonic() - start < 10.0  # about 1 s here; quadratic work would take minutes


def test_text_beyond_the_limit_fails_closed() -> None:
    long = "x" * MAX_TEXT + " order 12"
    assert contains_pan(long)
    assert mask_pans(long) == "x" * MAX_TEXT + " order **"
    with pytest.raises(ValueError, match="not scanned"):
        find_pans(long)


def test_what_is_found_never_shows_the_number_in_its_repr() -> None:
    (found,) = find_pans(f"card {PAN}")
    assert PAN not in repr(found)
    assert found.digits == PAN


# Separators a person could put between digit groups: the class the detector promises to see through.
SEPARATORS = st.text(
    alphabet=st.sampled_from(
        list(
            ".,/_-+*|:;#~=!?'\"()[]{} \t\n\u00a0\u2009\u202f\u2003\u3000\u200b\u00ad\u2013\u2014\uff0e\uff0f"
        )
    ),
    min_size=0,
    max_size=3,
)
ZEROS = ["0", "\uff10", "\u0660", "\u06f0", "\u0966", "\u09e6", "\u0e50"]  # scripts with decimal digits


@st.composite
def spelled_pans(draw: st.DrawFn) -> tuple[str, str]:
    length = draw(st.integers(min_value=PAN_MIN, max_value=PAN_MAX))
    body = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    number = with_check_digit(body)
    parts = []
    for i, digit in enumerate(number):
        if i:
            parts.append(draw(SEPARATORS))
        parts.append(chr(ord(draw(st.sampled_from(ZEROS))) + int(digit)))
    before = draw(st.sampled_from(["", "card ", "x", "ref: ", "(", "note\u3000"]))
    after = draw(st.sampled_from(["", " thanks", "y", ")", "."]))
    return number, before + "".join(parts) + after


@settings(max_examples=400, deadline=None)
@given(spelled_pans())
def test_any_luhn_valid_number_of_brand_length_in_any_spelling_is_found(case: tuple[str, str]) -> None:
    number, text = case
    ascii_text = "".join(
        str(unicodedata.digit(c)) if unicodedata.digit(c, None) is not None else c for c in text
    )
    if _DATE_TIME.search(ascii_text):
        return  # reads as a date or a time of day: the documented exemption (docs/webapp.md)
    assert contains_pan(text)
    masked = mask_pans(text)
    assert not find_pans(masked)
    assert number[:-4] not in _ascii_digits(masked)


# --- the audit writer -------------------------------------------------------------------------------

STRING_FIELDS = [f.name for f in fields(AuditEntry) if f.name not in ("event", "outcome")]


def test_every_string_field_of_an_audit_entry_is_masked() -> None:
    assert STRING_FIELDS == ["actor", "ip", "cert_serial", "resource", "detail"]
    assert set(STRING_FIELDS) <= set(audit._LIMITS)  # every one is masked and clipped


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_audit_writer_masks_every_hostile_spelling_in_every_field_and_the_chain_verifies(
    app: Flask, name: str
) -> None:
    text = HOSTILE[name]
    svc = app.extensions["strongroom"]
    entry = AuditEntry(event=Event.PAGE_VIEW, outcome=SUCCESS, **dict.fromkeys(STRING_FIELDS, text))
    with svc.engine.begin() as conn:
        audit.append(conn, [entry], now=svc.clock.now())
    row = audit_rows(app)[-1]
    for field in STRING_FIELDS:
        stored = getattr(row, field)
        assert not find_pans(stored), field
        assert PAN[:12] not in _ascii_digits(stored), field
    with svc.engine.connect() as conn:
        assert audit.verify(conn).ok


def test_the_writer_masks_even_an_entry_that_skipped_its_own_masking(app: Flask) -> None:
    # backup/ and ops/ build AuditEntry themselves; whatever slips past the entry, the writer catches.
    svc = app.extensions["strongroom"]
    entry = AuditEntry(event=Event.PAGE_VIEW, outcome=SUCCESS)
    for field in STRING_FIELDS:
        object.__setattr__(entry, field, HOSTILE["dots"])
    with svc.engine.begin() as conn:
        (appended,) = audit.append(conn, [entry], now=svc.clock.now())
    with svc.engine.connect() as conn:
        row = conn.execute(sa.select(audit.audit_log).where(audit.audit_log.c.seq == appended.seq)).one()
        assert audit.verify(conn).ok
    assert all(getattr(row, f) == "************" + PAN[-4:] for f in STRING_FIELDS)
