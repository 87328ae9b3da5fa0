"""The card rules in webapp/records/cards.py: one row per brand prefix, one per hostile input."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from webapp.records.cards import Pan, check_expiry, check_name, luhn_ok, parse_pan
from webapp.records.errors import Refused

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if luhn_ok(body + d))


def pan(prefix: str, length: int) -> str:
    return with_check_digit(prefix + "0" * (length - len(prefix) - 1))


@pytest.mark.parametrize(
    ("number", "brand"),
    [
        (pan("4", 16), "visa"),
        (pan("4", 13), "visa"),
        (pan("4", 19), "visa"),
        (pan("51", 16), "mastercard"),
        (pan("55", 16), "mastercard"),
        (pan("2221", 16), "mastercard"),
        (pan("2720", 16), "mastercard"),
        (pan("34", 15), "amex"),
        (pan("37", 15), "amex"),
        (pan("6011", 16), "discover"),
        (pan("644", 16), "discover"),
        (pan("65", 19), "discover"),
        (pan("622126", 16), "discover"),
        (pan("3528", 16), "jcb"),
        (pan("3589", 19), "jcb"),
        (pan("300", 14), "diners"),
        (pan("3095", 14), "diners"),
        (pan("36", 14), "diners"),
        (pan("62", 16), "unionpay"),
        (pan("622927", 19), "unionpay"),
        (pan("6759", 13), "maestro"),
        (pan("5018", 19), "maestro"),
    ],
)
def test_known_brands(number: str, brand: str) -> None:
    parsed = parse_pan(f"{number[:4]} {number[4:8]}-{number[8:]}")
    assert parsed.brand == brand
    assert parsed.last4 == number[-4:]
    assert number not in repr(parsed)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "digits only"),
        ("4111 1111 1111 111a", "digits only"),
        ("４１１１１１１１１１１１１１１１", "digits only"),  # full-width digits are not ASCII
        (pan("4", 12), "13 to 19 digits"),
        (pan("4", 20), "13 to 19 digits"),
        ("4111111111111112", "Luhn"),
        (pan("2721", 16), "unknown card brand"),
        (pan("1", 16), "unknown card brand"),
        (pan("34", 16), "wrong length for amex"),
        (pan("51", 19), "wrong length for mastercard"),
    ],
)
def test_bad_pans(raw: str, reason: str) -> None:
    with pytest.raises(Refused) as caught:
        parse_pan(raw)
    assert reason in caught.value.reason
    # A typo: shown next to the card number field, not alerted (docs/alerts.md).
    assert (caught.value.field, caught.value.alert) == ("pan", False)


def test_expiry_uses_the_given_clock() -> None:
    assert check_expiry(11, 2026, now=NOW) == "11/2026"  # valid through the end of its month
    for month, year, reason, field in (
        (10, 2026, "expired", "exp_year"),
        (12, 2025, "expired", "exp_year"),
        (13, 2027, "month", "exp_month"),
        (1, 2047, "far", "exp_year"),
    ):
        with pytest.raises(Refused, match=reason) as caught:
            check_expiry(month, year, now=NOW)
        assert caught.value.field == field


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "A" * 27,
        "Ada\u200bLovelace",
        "Ada\u202eLovelace",
        "Ada\tLovelace",
        "Ada1",
        "Ada  Lovelace",
        "<b>",
    ],
)
def test_bad_names(raw: str) -> None:
    with pytest.raises(Refused) as caught:
        check_name(raw)
    assert (caught.value.field, caught.value.alert) == ("cardholder", False)


def test_good_names() -> None:
    assert check_name(" Zoë O'Brien-Smith Jr. ") == "Zoë O'Brien-Smith Jr."
    assert isinstance(parse_pan("4111111111111111"), Pan)
