"""gunicorn's own logs keep no card number a client sends: a real gunicorn in the demo's TLS mode
(webapp/gunicorn_conf.py, log level debug so that every line that can carry client text is written)
receives card numbers in every spelling and encoding, in the path, the query, headers and refused
requests; then its whole log (access and error lines) is read the ways a person could read it
(percent-encodings and repr escapes decoded, bytes read as UTF-8) and nothing the detector finds, nor
the card's digits in order, is in it. The access log still shows each request, its path masked."""

from __future__ import annotations

import re
import socket
import ssl
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from tests.webapp.pan_spellings import BRAND_NUMBERS, HOSTILE, PAN
from tests.webapp.tls_server import Server, serve
from webapp.gunicorn_logging import clean
from webapp.redact import find_pans

AMEX = BRAND_NUMBERS["amex-15"]
FULLWIDTH = HOSTILE["fullwidth digits"]


def _pct(text: str) -> str:
    return quote(text, safe="")


# How a card number is put into a URL path: (name, path segment as sent on the wire).
PATH_FORMS = {
    **{f"percent-encoded, {name}": _pct(v) for name, v in HOSTILE.items()},
    "plain": PAN,
    "dotted": HOSTILE["dots"],
    "dashed": HOSTILE["dashes"],
    "encoded twice": _pct(_pct(HOSTILE["dots"])),
    "encoded three times": _pct(_pct(_pct(PAN))),
    "each digit encoded": "".join(f"%{ord(d):02X}" for d in PAN),
    "half the digits encoded": "".join(f"%{ord(d):02X}" if i % 2 else d for i, d in enumerate(PAN)),
    "encoded, lowercase hex": "".join(f"%{ord(d):02x}" for d in PAN),
    "padded into a hex token": "a" * 16 + PAN,
    "between letters": f"ref{HOSTILE['dots']}end",
    "amex": AMEX,
}


@dataclass(frozen=True)
class Logged:
    text: str
    marks: dict[str, str]  # case name -> its unique path marker


def _send(server: Server, raw: bytes) -> bytes:
    ctx = server.context(server.alice)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=3) as tcp,
        ctx.wrap_socket(tcp, server_hostname="localhost") as tls,
    ):
        tls.sendall(raw)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except (ssl.SSLError, ConnectionResetError, TimeoutError):
            pass  # a request cut off on purpose gets no answer: closing is what it tests
    return answer


def _get(server: Server, target: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return _send(server, ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))


# Requests gunicorn refuses before the app sees them: their error-log lines quote what was sent.
REFUSED = {
    "request line too long": f"GET /{PAN}/{'x' * 9000} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
    "request line too long, encoded": (
        f"GET /{_pct(HOSTILE['dots'])}/{'x' * 9000} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    ),
    "invalid request line": f"GET /{PAN} HTTP/1.1 extra\r\nHost: localhost\r\n\r\n".encode(),
    "invalid method": f"G{PAN} / HTTP/1.1\r\nHost: localhost\r\n\r\n".encode(),
    "invalid version": f"GET / HTTP/{PAN}\r\nHost: localhost\r\n\r\n".encode(),
    "invalid header name": f"GET / HTTP/1.1\r\nHost: localhost\r\nX({PAN}): 1\r\n\r\n".encode(),
    "header name with fullwidth digits": (
        f"GET / HTTP/1.1\r\nHost: localhost\r\nX{FULLWIDTH}: 1\r\n\r\n".encode()
    ),
    "header without colon": f"GET / HTTP/1.1\r\nHost: localhost\r\n{HOSTILE['dots']}\r\n\r\n".encode(),
    "header with a control character": (
        f"GET / HTTP/1.1\r\nHost: localhost\r\nX-Card: {PAN}\x01\r\n\r\n".encode()
    ),
    "obsolete folding": f"GET / HTTP/1.1\r\nHost: localhost\r\nX-A: 1\r\n {PAN}\r\n\r\n".encode(),
    "header too long": f"GET / HTTP/1.1\r\nHost: localhost\r\nX-Card: {PAN}{'x' * 9000}\r\n\r\n".encode(),
    "bad chunk size": (
        f"POST /login HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{PAN}\r\n".encode()
    ),
    "cut off in the headers": f"GET /{PAN} HTTP/1.1\r\nHost: localhost\r\nX-Card: {PAN}".encode(),
    "raw UTF-8 fullwidth digits in the path": f"GET /records/{FULLWIDTH} HTTP/1.1\r\n\r\n".encode(),
    "raw non-UTF-8 around fullwidth digits": b"GET /\xff" + FULLWIDTH.encode() + b"\xfe HTTP/1.1\r\n\r\n",
}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Logged:
    d = tmp_path_factory.mktemp("gunicorn-logs")
    marks: dict[str, str] = {}
    with serve(d, {"GUNICORN_CMD_ARGS": "--log-level debug"}) as server:
        for n, (name, segment) in enumerate(PATH_FORMS.items()):
            # Letters only: a digit in the marker would join the card number (a leading 0 keeps Luhn).
            marks[name] = f"case-{chr(97 + n // 26)}{chr(97 + n % 26)}"
            _get(server, f"/records/{marks[name]}/{segment}")
        marks["query"] = "case-query"
        _get(server, f"/records/case-query?q={PAN}&r={_pct(FULLWIDTH)}&s={_pct(HOSTILE['nbsp'])}")
        marks["headers"] = "case-headers"
        _get(
            server,
            "/records/case-headers",
            {
                "User-Agent": f"agent {HOSTILE['dots']}",
                "Referer": f"https://localhost/records/{PAN}",
                "X-Card": _pct(FULLWIDTH),
                "Authorization": "Basic " + __import__("base64").b64encode(f"{PAN}:x".encode()).decode(),
            },
        )
        for raw in REFUSED.values():
            _send(server, raw)
    return Logged((d / "gunicorn.log").read_bytes().decode("utf-8", "replace"), marks)


def _readings(line: str) -> list[str]:
    """The ways a person could read a log line: as written, percent-decoded, repr escapes decoded,
    bytes written one per character read as UTF-8."""
    decoded = line
    for _ in range(4):
        decoded = unquote(decoded)
    unescaped = re.sub(
        rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), decoded.encode("utf-8")
    ).decode("utf-8", "ignore")
    rebytes = unescaped.encode("latin-1", "ignore").decode("utf-8", "ignore")
    return [line, decoded, unescaped, rebytes]


# An access line: client address, time, "request", then status, bytes and timing. The server's
# numbers are left out of the detector's view, as the logger leaves them out of its masking: joined
# to a masked path's last four digits they can make a Luhn-valid run by chance.
_ACCESS = re.compile(r'^\S+ \[[^]]*\] (".*") \d{3} \S+ \d+\.\d+s$')


def _client_text(line: str) -> str:
    access = _ACCESS.match(line)
    return access[1] if access else line


def _digits(text: str) -> str:
    return "".join(str(d) for d in (unicodedata.digit(ch, None) for ch in text) if d is not None)


def test_no_card_number_in_any_gunicorn_log_line(logged: Logged) -> None:
    assert "Booting worker" in logged.text  # the log was written at all
    leaks = []
    for line in logged.text.splitlines():
        for reading in _readings(line):
            if find_pans(_client_text(reading)) or PAN in _digits(reading) or AMEX in _digits(reading):
                leaks.append(clean(line))  # shown masked: a failing test must not print one either
                break
    assert not leaks, leaks


@pytest.mark.parametrize("case", [*PATH_FORMS, "query", "headers"])
def test_the_access_log_still_shows_the_request_with_its_path_masked(logged: Logged, case: str) -> None:
    mark = logged.marks[case]
    lines = [line for line in logged.text.splitlines() if f'"GET /records/{mark}' in line]
    assert len(lines) == 1, lines
    assert re.search(rf'"GET /records/{mark}[^"]* HTTP/1\.1" 404 ', lines[0]), clean(lines[0])
    if case in ("query", "headers"):
        return
    assert "*" * 8 in lines[0]  # the path kept its last four digits, the rest masked


@pytest.mark.parametrize("name", list(REFUSED))
def test_each_refused_request_left_no_card_number(logged: Logged, name: str) -> None:
    # The whole-log scan covers them; this says which kinds of refusal the log recorded at all.
    assert "Invalid request from ip=127.0.0.1" in logged.text or "Ignored premature" in logged.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"/records/{PAN}", f"/records/{'*' * 12}{PAN[-4:]}"),
        ("/records/" + "%2525253411", "/records/%**********"),
        ("GET /a%0d%0aforged 200", "GET /a\ufffd\ufffdforged 200"),
        ("/records/0123456789abcdef0123456789abcdef", "/records/0123456789abcdef0123456789abcdef"),
        ("status 200 bytes 4111", "status 200 bytes 4111"),
        ("x" * 70_000 + PAN, "x" * 70_000 + "*" * 16),
    ],
)
def test_clean(text: str, expected: str) -> None:
    assert clean(text) == expected


def test_both_modes_use_the_redacting_logger(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.webapp.tls_server import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env |= {"STRONGROOM_BIND": "unix:/run/x/gunicorn.sock", "STRONGROOM_BEHIND_PROXY": "true"}
    code = "import runpy; print(runpy.run_path('webapp/gunicorn_conf.py')['logger_class'])"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert r.stdout.strip() == "webapp.gunicorn_logging.RedactingLogger", r.stderr
