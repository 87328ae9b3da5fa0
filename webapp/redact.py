"""Masking PAN-shaped strings in text that is stored or sent (outbox rows, and the audit log once it
calls this): a card number typed into a URL, a search box or a password field must not land there.

A Luhn-valid run of 13-19 digits, with single spaces or dashes between digits, keeps its last four
digits and loses the rest ("************1111"). Runs that fail Luhn are left alone (timestamps,
counters), and so are digit runs inside a hex token of 32+ characters (a hash, not a card): the
same rules as the no-PAN scan in tests/webapp/test_no_pan_leak.py.
"""

from __future__ import annotations

import re

_CANDIDATE = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")
_HEX = frozenset("0123456789abcdefABCDEF")
HEX_TOKEN = 32  # hashes, fingerprints, serials: random hex often holds long digit runs


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _inside_hex_token(text: str, start: int, end: int) -> bool:
    while start > 0 and text[start - 1] in _HEX:
        start -= 1
    while end < len(text) and text[end] in _HEX:
        end += 1
    return end - start >= HEX_TOKEN


def _mask(m: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", m.group(0))
    if not 13 <= len(digits) <= 19 or not _luhn(digits):
        return m.group(0)
    if digits == m.group(0) and _inside_hex_token(m.string, m.start(), m.end()):
        return m.group(0)
    return "*" * (len(digits) - 4) + digits[-4:]


def mask_pans(text: str) -> str:
    return _CANDIDATE.sub(_mask, text) if any(c.isdigit() for c in text) else text
