"""Input rules for the other sensitive items: bank accounts (IBAN), identity documents, notes.

Pure functions, like cards.py. Every refusal is the package's one `Refused` whose reason names the rule, never
the value. Each rule returns (value to encrypt, masked hint to store in clear).
"""

from __future__ import annotations

import re
import unicodedata

from stdnum import iban as iso13616
from stdnum import numdb
from stdnum.exceptions import ValidationError
from stdnum.iso7064 import mod_97_10

from webapp.records.errors import Refused
from webapp.redact import PAN_REFUSAL, contains_pan

NOTE_MAX = 2000
DOC_TYPES = ("passport", "id_card", "driving_licence", "residence_permit")
DOC_MIN, DOC_MAX = 5, 20
# One field of a BBAN structure in SWIFT's IBAN registry: "8!n" is exactly 8 digits.
_BBAN_FIELD = re.compile(r"(\d+)!?[nac]")


def clean_text(raw: str, what: str, *, max_len: int, field: str = "value") -> str:
    """NFC, stripped, bounded, and free of control, format (invisible) and unassigned characters."""
    text = unicodedata.normalize("NFC", raw.strip())
    if not text:
        raise Refused(f"{what}: required", field=field)
    if len(text) > max_len:
        raise Refused(f"{what}: at most {max_len} characters", field=field)
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise Refused(f"{what}: control or invisible characters", field=field)
    return text


def _iban_length(country: str) -> int | None:
    """The IBAN length of a country in SWIFT's IBAN registry (as python-stdnum ships it), None if the
    registry does not know the country."""
    ((prefix, props), *_) = numdb.get("iban").info(country)
    if prefix != country or "bban" not in props:
        return None
    return 4 + sum(int(n) for n in _BBAN_FIELD.findall(props["bban"]))


def iban(raw: str) -> tuple[str, str]:
    """Every country of the IBAN registry (ISO 13616): the registry's length and BBAN structure, and the
    ISO 7064 mod 97-10 check digits. Not the national checks: some need a bank directory that goes
    stale (Belgium's refuses a bank code it does not list yet), and a customer's real account must not
    be refused for that. The checks run in a fixed order so that each refusal names one rule."""
    value = re.sub(r"[ ]", "", raw).upper()
    if not value.isascii() or not value.isalnum():
        raise Refused("IBAN: letters and digits only (spaces allowed)", field="value")
    country = value[:2]
    length = _iban_length(country) if country.isalpha() else None
    if length is None:
        raise Refused("IBAN: unknown country code", field="value")
    if len(value) != length or not value[2:4].isdigit():
        raise Refused(f"IBAN: wrong length for {country}", field="value")
    if not mod_97_10.is_valid(value[4:] + value[:4]):
        raise Refused("IBAN: check digits are wrong", field="value")
    try:
        iso13616.validate(value, check_country=False)
    except ValidationError:
        # stdnum's exceptions carry no value, but ours names the rule and stays the one refusal type.
        raise Refused(f"IBAN: the account part does not have {country}'s format", field="value") from None
    return value, f"{country} •••• {value[-4:]}"


def identity(raw: str, doc_type: str) -> tuple[str, str]:
    if doc_type not in DOC_TYPES:
        raise Refused("document type: unknown", field="doc_type")
    value = re.sub(r"[ -]", "", raw).upper()
    if not value.isascii() or not value.isalnum():
        raise Refused("document number: letters and digits only", field="value")
    if not DOC_MIN <= len(value) <= DOC_MAX:
        raise Refused(f"document number: {DOC_MIN} to {DOC_MAX} characters", field="value")
    return value, f"{doc_type} •••• {value[-2:]}"


def note(raw: str) -> tuple[str, str]:
    # A card number pasted into a note would escape every card control: masking, reveal, budgets.
    # Checked first, so that one written with invisible separators gets this message, not a vaguer one.
    if contains_pan(raw):
        raise Refused(f"note: {PAN_REFUSAL}", field="value", alert=True)
    text = clean_text(raw, "note", max_len=NOTE_MAX)
    return text, f"note, {len(text)} characters"


def check(kind: str, raw: str, doc_type: str = "") -> tuple[str, str]:
    if kind == "bank":
        return iban(raw)
    if kind == "identity":
        return identity(raw, doc_type)
    if kind == "note":
        return note(raw)
    raise Refused("item kind: unknown")
