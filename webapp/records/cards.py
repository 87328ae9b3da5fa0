"""Card input rules: PAN (length, Luhn, brand by IIN), expiry, cardholder name. Pure functions.

Every refusal is a `Refused` (webapp/records/errors.py) whose reason names the rule, never the value.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from webapp.records.errors import Refused
from webapp.redact import luhn_ok  # the one Luhn check (the free-text detector's)

# Field names that would carry a card security code. PCI DSS 3.3.1.2: never stored after
# authorization, and this vault never authorizes, so a form carrying one is refused outright.
CVV_FIELDS = ("cvv", "cvc", "cvv2", "cvc2", "csc", "security_code", "cid")
NAME_MAX = 26  # ISO/IEC 7813 track 1 name field
NAME_PUNCTUATION = frozenset(" .'-")
MAX_YEARS_AHEAD = 20


def _in(prefix: str, lo: int, hi: int) -> bool:
    return lo <= int(prefix) <= hi


# (brand, allowed lengths, IIN test on the PAN). Order matters: Discover's 622126-622925 before
# UnionPay's 62.
_BRANDS: tuple[tuple[str, frozenset[int], object], ...] = (
    ("amex", frozenset({15}), lambda p: p[:2] in ("34", "37")),
    ("visa", frozenset({13, 16, 19}), lambda p: p[0] == "4"),
    ("mastercard", frozenset({16}), lambda p: _in(p[:2], 51, 55) or _in(p[:4], 2221, 2720)),
    (
        "discover",
        frozenset(range(16, 20)),
        lambda p: p[:4] == "6011" or _in(p[:3], 644, 649) or p[:2] == "65" or _in(p[:6], 622126, 622925),
    ),
    ("jcb", frozenset(range(16, 20)), lambda p: _in(p[:4], 3528, 3589)),
    (
        "diners",
        frozenset(range(14, 20)),
        lambda p: _in(p[:3], 300, 305) or p[:4] == "3095" or p[:2] in ("36", "38", "39"),
    ),
    ("unionpay", frozenset(range(16, 20)), lambda p: p[:2] == "62"),
    (
        "maestro",
        frozenset(range(13, 20)),
        lambda p: p[:4] in ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763"),
    ),
)
BRANDS = tuple(b[0] for b in _BRANDS)


@dataclass(frozen=True)
class Pan:
    digits: str
    brand: str

    @property
    def last4(self) -> str:
        return self.digits[-4:]

    def __repr__(self) -> str:  # never let a PAN reach a log or a traceback through repr
        return f"Pan(brand={self.brand!r}, last4={self.last4!r})"


def parse_pan(raw: str) -> Pan:
    digits = re.sub(r"[ -]", "", raw)
    if not digits.isascii() or not digits.isdigit():
        raise Refused("card number: digits only (spaces and dashes allowed)", field="pan")
    if not 13 <= len(digits) <= 19:
        raise Refused("card number: must have 13 to 19 digits", field="pan")
    if not luhn_ok(digits):
        raise Refused("card number: check digit is wrong (Luhn)", field="pan")
    for brand, lengths, test in _BRANDS:
        if test(digits):  # type: ignore[operator]
            if len(digits) not in lengths:
                raise Refused(f"card number: wrong length for {brand}", field="pan")
            return Pan(digits, brand)
    raise Refused("card number: unknown card brand", field="pan")


def check_expiry(month: int, year: int, *, now: datetime) -> str:
    if not 1 <= month <= 12:
        raise Refused("expiry: month must be 1 to 12", field="exp_month")
    if (year, month) < (now.year, now.month):
        raise Refused("expiry: the card has expired", field="exp_year")
    if year > now.year + MAX_YEARS_AHEAD:
        raise Refused("expiry: year is too far ahead", field="exp_year")
    return f"{month:02d}/{year:04d}"


def check_name(raw: str) -> str:
    name = unicodedata.normalize("NFC", raw.strip())
    if not name:
        raise Refused("cardholder name: required", field="cardholder")
    if len(name) > NAME_MAX:
        raise Refused(f"cardholder name: at most {NAME_MAX} characters", field="cardholder")
    for ch in name:
        if unicodedata.category(ch).startswith("C"):
            raise Refused("cardholder name: control or invisible characters", field="cardholder")
        if not (unicodedata.category(ch).startswith("L") or ch in NAME_PUNCTUATION):
            raise Refused("cardholder name: letters, spaces and . ' - only", field="cardholder")
    if "  " in name:
        raise Refused("cardholder name: repeated spaces", field="cardholder")
    return name
