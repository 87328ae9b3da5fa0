"""Apache's and ModSecurity's logs pass through this filter before they reach the disk.

    ErrorLog "||/usr/bin/python3 -I /etc/apache2/strongroom/logfilter.py /var/log/apache2/error.log"

Apache and ModSecurity echo what the client sent into their messages: `AH01623 ... to /records/<path>`,
`AH10244: invalid URI path (<raw path>)`, ModSecurity's `[uri "..."]` and `[hostname "..."]`, a
parameter name in `ARGS:<name>`. None of that can be configured away, so every line is checked
here: a line whose client-controlled part holds a long number (13 or more digits, however written:
any punctuation or space between them, percent-encoded, `\\xNN`-escaped, HTML entities, fullwidth or
other Unicode digits) is written with its message withheld. Only the parts Apache and ModSecurity
generate themselves (time, module, pid, client address, the kind of message, the request's
unique id) are kept, so the watchdog's counts (`ModSecurity: Access denied`, any new line) still
work. No Luhn check: any run of 13+ digits in a request is withheld (a false positive costs a
readable line, a false negative a card number in a file nobody can recall).

Standard library only: it runs as root, as Apache's piped loggers do, before Apache drops its
privileges, and must not import the project. Reopens its file when logrotate moved it away.
"""

from __future__ import annotations

import html
import os
import re
import sys
import time
import unicodedata
from urllib.parse import unquote_to_bytes

MIN_DIGITS = 13  # the shortest card number (PCI: 13-19 digits)
MAX_GAP = 3  # separator characters allowed between two digits of one number
WITHHELD = b"[withheld: it held a long number]"
REOPEN_CHECK_SECONDS = 1.0

# The parts of a line that Apache or ModSecurity write themselves (never client text).
# The vhost's ErrorLogFormat: "[time] [module:level] [pid N:tid N] [client ADDR:PORT] message".
_ERROR_PREFIX = re.compile(
    rb"^\[[A-Za-z0-9 :.]{1,64}\] \[[a-z0-9_]{0,32}:[a-z0-9]{1,8}\] \[pid \d{1,10}(?::tid \d{1,20})?\] "
    rb"(?:\[client [0-9A-Fa-f.:\[\]]{1,64}\] )?"
)
# A message's kind, kept when the rest is withheld (ModSecurity adds its own "[client ADDR] ").
_LABEL = re.compile(
    rb"^(?:\[client [0-9A-Fa-f.:]{1,64}\] )?"
    rb"(?:(?:ModSecurity: |Message: )(?:Access denied with code \d{3} \(phase \d\)\.|Warning\.)"
    rb"|AH\d{5}:|Apache-Error:)"
)
_UNIQUE_ID = re.compile(rb'\[unique_id "[A-Za-z0-9@_-]{1,64}"\]')
# ModSecurity audit-log lines that are wholly its own: section boundaries, part A, the stopwatch.
_AUDIT_OWN = re.compile(
    rb"^(?:--[0-9a-f]{8}-[A-Z]--"
    rb"|\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d(?:\.\d{1,6})? [+-]\d{4}\] [A-Za-z0-9@_-]{1,64}"
    rb" [0-9A-Fa-f.:]{1,64} \d{1,5} [0-9A-Fa-f.:]{1,64} \d{1,5}"
    rb"|Stopwatch2?: [0-9a-z ;=,()-]{1,200})\r?\n?$"
)
_X_ESCAPE = re.compile(rb"\\x([0-9A-Fa-f]{2})")
_NUMBER = re.compile(rf"[0-9](?:[^0-9A-Za-z]{{0,{MAX_GAP}}}[0-9])*")


def normalise(raw: bytes) -> str:
    """The text a reader would see: escapes decoded, every Unicode digit as an ASCII digit."""
    data = _X_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), raw)
    for _ in range(3):  # double and triple percent-encoding
        if b"%" not in data:
            break
        data = unquote_to_bytes(data)
    text = unicodedata.normalize("NFKC", html.unescape(data.decode("utf-8", "replace")))
    return "".join(_ascii_digit(c) for c in text)


def _ascii_digit(c: str) -> str:
    if c.isascii():
        return c
    value = unicodedata.decimal(c, None)
    return c if value is None else str(value)


def holds_long_number(raw: bytes) -> bool:
    return any(sum(c.isdigit() for c in m[0]) >= MIN_DIGITS for m in _NUMBER.finditer(normalise(raw)))


def redact_line(line: bytes) -> bytes:
    """`line` unchanged, or with everything but its generated parts withheld. Never raises."""
    end = b"\n" if line.endswith(b"\n") else b""
    try:
        if _AUDIT_OWN.match(line):
            return line
        prefix = _ERROR_PREFIX.match(line)
        head = prefix[0] if prefix else b""
        body = line[len(head) :]
        if not holds_long_number(body):
            return line
        label = _LABEL.match(body)
        uid = _UNIQUE_ID.search(body)
        parts = [head + (label[0] + b" " if label else b"") + WITHHELD]
        if uid:
            parts.append(b" " + uid[0])
        return b"".join(parts) + end
    except Exception:  # noqa: BLE001 - fail closed: a line we cannot judge is not written
        return WITHHELD + end


class Appender:
    """Appends to `path`; reopens it when it was moved or removed (logrotate), creating its
    directory (root's, 0750) if needed."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.ident: tuple[int, int] | None = None
        self.checked = 0.0
        self._open()

    def _open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o750, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        st = os.fstat(self.fd)
        self.ident = (st.st_dev, st.st_ino)
        self.checked = time.monotonic()

    def _moved(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self.ident

    def write(self, data: bytes) -> None:
        now = time.monotonic()
        if now - self.checked >= REOPEN_CHECK_SECONDS:
            self.checked = now
            if self._moved():
                self._open()
        os.write(self.fd, data)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].startswith("/"):
        print("usage: logfilter.py /absolute/path/of/the/log", file=sys.stderr)
        return 2
    out = Appender(args[0])
    for line in sys.stdin.buffer:
        out.write(redact_line(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
