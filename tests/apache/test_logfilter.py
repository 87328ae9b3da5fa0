"""apache/logfilter.py, the filter every Apache error-log and audit-log line passes through: lines
with a long number in any spelling lose their message, generated parts stay, rotation is followed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from apache import logfilter
from apache.logfilter import WITHHELD, redact_line

PREFIX = (
    b"[Sat Dec 05 23:19:31.127044 2026] [security2:error] [pid 30562:tid 140253205612224] "
    b"[client 127.0.0.1:42402] "
)
MODSEC_DENIED = (
    b"[client 127.0.0.1] ModSecurity: Access denied with code 403 (phase 2)."
    b" Operator GE matched 5 at TX:anomaly_score."
    b' [id "949110"] [hostname "localhost"] [uri "/records/%s"] [unique_id "axScA0rukrkfnfyxw457TQAAAAE"]'
)

KEPT = [
    b"[Sat Dec 05 23:19:30.886008 2026] [mpm_event:notice] [pid 30550:tid 30550] AH00489: configured\n",
    PREFIX + MODSEC_DENIED % b"abc" + b"\n",
    b"--5bc9a167-A--\n",
    b"[05/Dec/2026:23:19:31.127492 +0000] axScA0rukrkfnfyxw457TQAAAAE 127.0.0.1 42402 127.0.0.1 33915\n",
    b"Stopwatch: 1796512771126208 1287 (- - -)\n",
    b"Stopwatch2: 1796512771126208 1287; combined=1041, p1=360, p2=585, p3=0, p4=0, p5=95, sr=49, sw=1\n",
    b'Message: Warning. [id "941100"] [tag "capec/1000/152/242"] [data "value withheld, in ARGS:q"]\n',
    b"AH01623: client method denied by server configuration: 'PUT' to proxy:http://localhost/records/12345\n",
]

# The same Visa test number as a client can spell it, and as Apache or ModSecurity escape it.
SPELLINGS = [
    b"4111111111111111",
    b"4111-1111-1111-1111",
    b"4111.1111.1111.1111",
    b"4111 1111 1111 1111",
    b"4111/1111/1111/1111",
    b"4111_1111_1111_1111",
    b"4111,1111,1111,1111",
    b"4111\\xc2\\xa01111\\xc2\\xa01111\\xc2\\xa01111",
    b"%34%31%31%31%31%31%31%31%31%31%31%31%31%31%31%31",
    b"%2534%2531%2531%2531111111111111",
    b"\\xef\\xbc\\x94\\xef\\xbc\\x91" + b"11111111111111",
    "٤١١١١١١١١١١١١١١١".encode(),
    b"&#52;&#49;&#49;&#49;111111111111",
    b"4111%201111%201111%201111",
    b"44111111111111111111",  # a card number inside a longer run of digits
]


@pytest.mark.parametrize("line", KEPT)
def test_generated_lines_and_short_numbers_are_kept(line: bytes) -> None:
    assert redact_line(line) == line


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_long_number_in_any_spelling_withholds_the_message(spelling: bytes) -> None:
    line = PREFIX + MODSEC_DENIED % spelling + b"\n"
    got = redact_line(line)
    assert got == (
        PREFIX
        + b"[client 127.0.0.1] ModSecurity: Access denied with code 403 (phase 2). "
        + WITHHELD
        + b' [unique_id "axScA0rukrkfnfyxw457TQAAAAE"]\n'
    )
    assert b"1111" not in got


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        (b"AH10244: invalid URI path (/%s/../etc)", b"AH10244: "),
        (
            b'Apache-Error: [file "request.c"] [line 212] [level 3] AH10244: invalid URI path (/%s)',
            b"Apache-Error: ",
        ),
        (b'Message: Warning. Pattern match at ARGS:%s. [id "941100"]', b"Message: Warning. "),
        (b"anything else %s", b""),
        (b"[Sat Dec 05 23:19:31 2026] [core:error] %s", b""),  # not our prefix: the whole line is judged
    ],
)
def test_only_the_kind_of_message_is_kept(line: bytes, kept: bytes) -> None:
    assert redact_line(line % b"4111-1111-1111-1111") == kept + WITHHELD


def test_a_line_that_cannot_be_judged_is_withheld(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes) -> bool:
        raise ValueError("boom")

    monkeypatch.setattr(logfilter, "holds_long_number", broken)
    assert redact_line(b"hello\n") == WITHHELD + b"\n"


def test_the_filter_follows_a_rotated_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logfilter, "REOPEN_CHECK_SECONDS", 0.0)
    log = tmp_path / "sub" / "audit.log"
    out = logfilter.Appender(str(log))
    out.write(redact_line(b"first 4111111111111111\n"))
    log.rename(tmp_path / "audit.log.1")
    out.write(b"second\n")
    assert (tmp_path / "audit.log.1").read_bytes() == WITHHELD + b"\n"
    assert log.read_bytes() == b"second\n"
    assert os.stat(log.parent).st_mode & 0o777 == 0o750


def test_run_as_apache_runs_it(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    done = subprocess.run(
        [sys.executable, "-I", logfilter.__file__, str(log)],
        input=b"plain line\nAH01623: denied to /records/4111111111111111\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert log.read_bytes() == b"plain line\nAH01623: " + WITHHELD + b"\n"
    assert (
        subprocess.run(
            [sys.executable, "-I", logfilter.__file__], capture_output=True, check=False
        ).returncode
        == 2
    )
