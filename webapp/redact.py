"""The one detector for "something that is a card number" in text, and masking with it.

Used by every free-text field (refused when `contains_pan`), by the audit writer and the outbox
(`mask_pans` on every string field before it is hashed or stored) and by the log lines that carry
request data. It imports nothing from the web app, so ops/ and backup/ use it too (keyd may not
import webapp/: a keyd copy would have to move this file to a package both may import).

What counts as a card number (docs/webapp.md, "Card numbers in free text"):

- Digits are every character with a decimal digit value (`unicodedata.digit`): ASCII, fullwidth,
  Arabic-Indic, Devanagari, superscript, circled... `４١1١` reads as 4111.
- Letters end a number; every other character (punctuation, symbols, any Unicode space, tabs and
  newlines, invisible format characters, combining marks), in any number, only separates digit
  groups. "4111.1111/1111_1111", "4111\u00a01111..." and "4111111111111111" are one number.
- A candidate is a run of whole digit groups (it starts where a group starts and ends where a group
  ends) holding 13 to 19 digits, the lengths payment brands issue (table below); it is a card
  number when its Luhn check digit is right. Digits glued to a card number without a separator
  make a longer number, which is not one: a reader cannot tell where a card number would start.
- No IIN (brand prefix) is required: an unknown or new range leaks as badly as a known one.

  length  issued by (ISO/IEC 7812 PANs; the card form's brand table is a subset)
  13      Visa (old), Maestro
  14      Diners Club International
  15      American Express, UATP
  16      Visa, Mastercard, Discover, JCB, UnionPay, Maestro, Diners (US/Canada), RuPay, Mir
  17-18   Discover, JCB, UnionPay, Maestro
  19      Visa, Discover, JCB, UnionPay, Maestro, Mir

Not card numbers (each in the tests' table of harmless text): numbers of fewer than 13 digits; a
Luhn-invalid run; a date (Y-M-D, D.M.Y, M/D/Y with a 19xx/20xx year), a time of day
(H:MM[:SS[.ffffff]]) or a Common Log Format time (YYYY:HH:MM:SS), whose digits are left out, so
lists of dates and timestamps are harmless; a CRM reference (`C` + digits: the letter ends it);
and, for masking only, digits inside a hex token of 32+ characters (hashes, fingerprints, serials,
record ids: random hex holds long digit runs by chance). A card number can be disguised as a date
and a time digit by digit on purpose, like one spelled in words: no detector of numbers finds
those, and none is claimed.

Hostile input: one pass over the text (the date and time patterns have bounded quantifiers and no
nesting, and at most seven groups start a window that fits in 19 digits), and text longer than
`MAX_TEXT` is not scanned at all: `contains_pan` says yes and `mask_pans` masks every digit (fail
closed).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

MAX_TEXT = 65_536
PAN_MIN, PAN_MAX = 13, 19
# The refusal of a free-text field that holds one: names the rule, never the value.
PAN_REFUSAL = "contains what looks like a card number; nothing was saved (cards go in the card form)"
HEX_TOKEN = 32  # hashes, fingerprints, serials, record ids: random hex often holds long digit runs

_YEAR = r"(?:19|20)\d\d"
_MONTH = r"(?:0?[1-9]|1[0-2])"
_DAY = r"(?:0?[1-9]|[12]\d|3[01])"
# A date or time must stand alone: not continued by a digit, nor by a separator and a digit, so a
# card written in pairs ("41:11:11:...") never loses an inner group that happens to read as a time.
_ALONE_BEFORE = r"(?<!\d)(?<!\d[-/.:,])"
_ALONE_AFTER = r"(?!\d)(?![-/.:,]\d)"
_DATE_TIME = re.compile(
    _ALONE_BEFORE
    + "(?:"
    + rf"{_YEAR}([-/.]){_MONTH}\1{_DAY}"
    + rf"|{_DAY}([-/.]){_MONTH}\2{_YEAR}"
    + rf"|{_MONTH}([-/.]){_DAY}\3{_YEAR}"
    # Common Log Format's "06/May/2024:10:30:00" after the month name (Apache, gunicorn access logs).
    + rf"|{_YEAR}:(?:[01]\d|2[0-3]):[0-5]\d:(?:[0-5]\d|60)"
    + ")"
    + _ALONE_AFTER
    # A time of day, at most 12 digits so that it never holds a whole card number. Only a colon, a
    # dot or a comma continues one ("08:30-12:00" is two times, "41:11:11:11..." is no time).
    + r"|(?<!\d)(?<!\d[:.,])"
    + r"(?:[01]?\d|2[0-3]):[0-5]\d(?::(?:[0-5]\d|60)(?:[.,]\d{1,6})?)?"
    + r"(?!\d)(?![:.,]\d)"
)
_LONG_HEX = re.compile(rf"[0-9a-fA-F]{{{HEX_TOKEN},}}")

_DIGIT, _LETTER, _SEPARATOR = 0, 1, 2
_ASCII_DIGITS = "0123456789"


def luhn_ok(digits: str) -> bool:
    """The ISO/IEC 7812 check digit, over ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _digit(ch: str) -> int | None:
    if "0" <= ch <= "9":
        return ord(ch) - 48
    if ch.isascii():
        return None
    return unicodedata.digit(ch, None)


def _kind(ch: str) -> int:
    if _digit(ch) is not None:
        return _DIGIT
    if ch.isascii():
        return _LETTER if ch.isalpha() else _SEPARATOR
    # Letters, and numbers with no digit value (Roman numerals, fractions), end a number.
    return _LETTER if unicodedata.category(ch)[0] in "LN" else _SEPARATOR


@dataclass(frozen=True)
class Found:
    """Where a card number lies in the text: [start, end) and its digits (ASCII)."""

    start: int
    end: int
    digits: str

    def __repr__(self) -> str:  # never let a PAN reach a log or a traceback through repr
        return f"Found(start={self.start}, end={self.end}, length={len(self.digits)})"


def find_pans(text: str, *, skip_hex_tokens: bool = False) -> list[Found]:
    """Every card number in `text` (windows may overlap). ValueError beyond MAX_TEXT characters."""
    if len(text) > MAX_TEXT:
        raise ValueError(f"text longer than {MAX_TEXT} characters is not scanned")
    if text.isascii() and sum(map(text.count, _ASCII_DIGITS)) < PAN_MIN:
        # Most text checked is short ASCII (every audit field of every request): with fewer digits
        # than the shortest card number it cannot hold one. Other scripts' digits take the full scan.
        return []
    digits = [_digit(ch) for ch in text]
    if all(d is None for d in digits):
        return []
    ascii_text = "".join(ch if d is None else chr(48 + d) for ch, d in zip(text, digits, strict=True))
    ends_number = bytearray(len(text))  # 1 where a date, a time or a hex token stands
    for m in _DATE_TIME.finditer(ascii_text):
        ends_number[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    if skip_hex_tokens:
        for m in _LONG_HEX.finditer(ascii_text):  # ASCII only: fullwidth digits are no hash
            if text[m.start() : m.end()].isascii():
                ends_number[m.start() : m.end()] = b"\x01" * (m.end() - m.start())

    found: list[Found] = []
    run: list[tuple[int, int, str]] = []  # digit groups (start, end, digits) joined by separators
    i, n = 0, len(text)
    while i < n:
        kind = _LETTER if ends_number[i] else _kind(text[i])
        if kind == _DIGIT:
            j = i
            while j < n and not ends_number[j] and digits[j] is not None:
                j += 1
            run.append((i, j, ascii_text[i:j]))
            i = j
            continue
        if kind == _LETTER and run:
            _windows(run, found)
            run = []
        i += 1
    if run:
        _windows(run, found)
    return found


def _windows(run: list[tuple[int, int, str]], found: list[Found]) -> None:
    for a in range(len(run)):
        count = 0
        for b in range(a, len(run)):
            count += len(run[b][2])
            if count > PAN_MAX:
                break
            if count >= PAN_MIN:
                number = "".join(g[2] for g in run[a : b + 1])
                if luhn_ok(number):
                    found.append(Found(run[a][0], run[b][1], number))


def contains_pan(text: str) -> bool:
    """For free text that is refused when it holds a card number: no hex exemption (a note or a
    reason has no business holding a hash), and text too long to scan counts as holding one."""
    if len(text) > MAX_TEXT:
        return True
    return bool(find_pans(text))


def mask_pans(text: str) -> str:
    """Each card number keeps its last four digits (ASCII) and loses the rest, separators included:
    "pan 4111.1111.1111.1111" -> "pan ************1111". Overlapping numbers are masked as one."""
    if len(text) > MAX_TEXT:
        return "".join("*" if _digit(ch) is not None else ch for ch in text)
    spans = sorted((f.start, f.end) for f in find_pans(text, skip_hex_tokens=True))
    if not spans:
        return text
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        number = "".join(str(d) for d in (_digit(ch) for ch in text[start:end]) if d is not None)
        out += [text[pos:start], "*" * (len(number) - 4), number[-4:]]
        pos = end
    out.append(text[pos:])
    return "".join(out)
