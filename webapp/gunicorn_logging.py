"""gunicorn's logs without card numbers: the `logger_class` of webapp/gunicorn_conf.py.

Whatever a client sends (request line, headers) can reach gunicorn's logs: the access log's path and
header atoms, and the error log's lines about requests it refused ("Invalid request from ip=...:
Invalid HTTP request line: '...'", "Error handling request <uri>", a traceback). Each such text is
first read the way a person reading the log could read it, then masked with the project's one
detector (webapp.redact.mask_pans):

- percent-encodings (`%34%31`), also nested (`%2534`), and the `\\xNN`, `\\uNNNN` escapes of Python's
  repr (gunicorn quotes refused lines with %r) are decoded;
- text that gunicorn decoded byte-wise (WSGI strings: each byte one character) is read as UTF-8 where
  it is valid, so fullwidth or Arabic-Indic digits are digits again.

Decoding stops after `_ROUNDS` rounds; text still changing then, or longer than the detector scans,
has every digit masked (fail closed). Control characters are replaced (U+FFFD), so a decoded
newline cannot forge a log line.

Access log: only the atoms a client can influence are cleaned, one by one (not the whole line: the
status, size and timings are numbers the detector must not join to the path). Error log: the whole
message and any traceback, through a filter on gunicorn's error logger, whichever handler writes it
(stderr, a file, syslog): its lines carry no numbers worth keeping whole.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms  # type: ignore[import-untyped]

from webapp.redact import MAX_TEXT, find_pans

# Atoms gunicorn computes itself (client address from the socket, time, status, sizes, timings,
# pid). Every other atom (request line, method, path, query, protocol, user, referer, user agent,
# request and response headers, environ) carries client text.
_SERVER_ATOMS = frozenset("hltsbBTDMLp")
_ROUNDS = 4

_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"\\x([0-9A-Fa-f]{2})|\\u([0-9A-Fa-f]{4})|\\U([0-9A-Fa-f]{8})")
_HIGH_BYTES = re.compile(r"[\x80-\xff]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _unescape(m: re.Match[str]) -> str:
    code = int(next(g for g in m.groups() if g is not None), 16)
    return chr(code) if code <= 0x10FFFF else "\ufffd"


def _as_utf8(m: re.Match[str]) -> str:
    # Characters 0x80-0xff are what gunicorn (WSGI) or a decoded %XX makes of raw bytes: read them
    # as UTF-8 where valid; invalid bytes stay as they were (superscript digits are digits too).
    text = m[0].encode("latin-1").decode("utf-8", "surrogateescape")
    return re.sub(r"[\udc80-\udcff]", lambda s: chr(ord(s[0]) - 0xDC00), text)


def _decode_once(text: str) -> str:
    text = _ESCAPE.sub(_unescape, _PERCENT.sub(lambda m: chr(int(m[1], 16)), text))
    return _HIGH_BYTES.sub(_as_utf8, text)


def _mask_every_digit(text: str) -> str:
    return "".join("*" if ch.isdigit() else ch for ch in text)


def _decoded(text: str) -> str | None:
    """`text` as a reader would read it, or None when it is still decoding after `_ROUNDS`."""
    for _ in range(_ROUNDS):
        decoded = _decode_once(text)
        if decoded == text:
            return text
        text = decoded
    return None


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """`text` decoded as a reader would read it, control characters replaced, card numbers masked.

    Controls become U+FFFD before masking: the detector reads both as separators, so the masking
    is the same, and a decoded newline cannot forge a log line. `keep_newlines` keeps the lines
    of a message that had several (a traceback): each line is decoded on its own."""
    lines = text.split("\n") if keep_newlines else [text]
    readable = [_decoded(line) if len(text) <= MAX_TEXT else None for line in lines]
    if any(line is None for line in readable):
        # Too long to scan, or encodings nested on purpose: nothing in it is worth a card number.
        return _CONTROL.sub("\ufffd", _mask_every_digit(text))
    return _mask("\n".join(_CONTROL.sub("\ufffd", line or "") for line in readable))


def _mask(text: str) -> str:
    # As redact.mask_pans (overlapping finds masked as one, last four kept), but without its
    # exemption of 32+ hex tokens: a client can pad a card number with hex letters into one. A
    # random id masked in a log costs nothing.
    merged: list[list[int]] = []
    for start, end in sorted((f.start, f.end) for f in find_pans(text)):
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        digits = [str(d) for d in (unicodedata.digit(ch, None) for ch in text[start:end]) if d is not None]
        out += [text[pos:start], "*" * (len(digits) - 4), *digits[-4:]]
        pos = end
    return "".join(out) + text[pos:]


class _CleanAtoms(SafeAtoms):
    """SafeAtoms that cleans a client atom when the format uses it (not the dozens it does not)."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        dict.__init__(self, atoms)  # SafeAtoms escapes quotes here: done after decoding instead

    def __getitem__(self, k: str) -> Any:
        value = super().__getitem__(k)
        if k in _SERVER_ATOMS or not isinstance(value, str):
            return value
        return clean(value).replace('"', '\\"')


class _CleanRecord(logging.Filter):
    """Rewrites every error-log record: message and traceback cleaned, arguments merged in."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed format must not bypass the cleaning
            message = f"{record.msg!s} {record.args!s}"
        record.msg, record.args = clean(message, keep_newlines=True), None
        if record.exc_info:
            record.exc_text = clean(logging.Formatter().formatException(record.exc_info), keep_newlines=True)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = clean(record.stack_info, keep_newlines=True)
        return True


class RedactingLogger(Logger):
    atoms_wrapper_class = _CleanAtoms

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        # setup() runs again on a configuration reload (HUP): one filter, not one per reload.
        if not any(isinstance(f, _CleanRecord) for f in self.error_log.filters):
            self.error_log.addFilter(_CleanRecord())
