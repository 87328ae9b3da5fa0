"""Input rules for the other sensitive items: bank accounts (IBAN), identity documents, notes.

Pure functions, like cards.py. Every refusal is an `ItemRefused` whose reason names the rule, never
the value. Each rule returns (value to encrypt, masked hint to store in clear).
"""

from __future__ import annotations

import re
import unicodedata

from webapp.redact import PAN_REFUSAL, contains_pan

NOTE_MAX = 2000
DOC_TYPES = ("passport", "id_card", "driving_licence", "residence_permit")
DOC_MIN, DOC_MAX = 5, 20
# ISO 13616 IBAN lengths by country (the SEPA area and a few more); an unknown country is refused.
IBAN_LENGTHS = {
    "AD": 24, "AT": 20, "BE": 16, "BG": 22, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21, "HU": 28,
    "IE": 22, "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31,
    "NL": 18, "NO": 15, "PL": 28, "PT": 25, "RO": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27,
    "VA": 22,
}  # fmt: skip


class ItemRefused(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def clean_text(raw: str, what: str, *, max_len: int) -> str:
    """NFC, stripped, bounded, and free of control, format (invisible) and unassigned characters."""
    text = unicodedata.normalize("NFC", raw.strip())
    if not text:
        raise ItemRefused(f"{what}: required")
    if len(text) > max_len:
        raise ItemRefused(f"{what}: at most {max_len} characters")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise ItemRefused(f"{what}: control or invisible characters")
    return text


def iban(raw: str) -> tuple[str, str]:
    value = re.sub(r"[ ]", "", raw).upper()
    if not value.isascii() or not value.isalnum():
        raise ItemRefused("IBAN: letters and digits only (spaces allowed)")
    country = value[:2]
    if country not in IBAN_LENGTHS:
        raise ItemRefused("IBAN: unknown country code")
    if len(value) != IBAN_LENGTHS[country] or not value[2:4].isdigit():
        raise ItemRefused(f"IBAN: wrong length for {country}")
    # ISO 7064 mod 97-10: move the first four characters to the end, letters become 10..35.
    number = "".join(str(int(c, 36)) for c in value[4:] + value[:4])
    if int(number) % 97 != 1:
        raise ItemRefused("IBAN: check digits are wrong")
    return value, f"{country} •••• {value[-4:]}"


def identity(raw: str, doc_type: str) -> tuple[str, str]:
    if doc_type not in DOC_TYPES:
        raise ItemRefused("document type: unknown")
    value = re.sub(r"[ -]", "", raw).upper()
    if not value.isascii() or not value.isalnum():
        raise ItemRefused("document number: letters and digits only")
    if not DOC_MIN <= len(value) <= DOC_MAX:
        raise ItemRefused(f"document number: {DOC_MIN} to {DOC_MAX} characters")
    return value, f"{doc_type} •••• {value[-2:]}"


def note(raw: str) -> tuple[str, str]:
    # A card number pasted into a note would escape every card control: masking, reveal, budgets.
    # Checked first, so that one written with invisible separators gets this message, not a vaguer one.
    if contains_pan(raw):
        raise ItemRefused(f"note: {PAN_REFUSAL}")
    text = clean_text(raw, "note", max_len=NOTE_MAX)
    return text, f"note, {len(text)} characters"


def check(kind: str, raw: str, doc_type: str = "") -> tuple[str, str]:
    if kind == "bank":
        return iban(raw)
    if kind == "identity":
        return identity(raw, doc_type)
    if kind == "note":
        return note(raw)
    raise ItemRefused("item kind: unknown")
