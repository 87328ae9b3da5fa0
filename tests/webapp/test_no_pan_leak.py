"""No PAN anywhere: a full scenario through the real app with a real keyd, then a scan of everything
it left behind for card numbers as the one detector finds them (webapp.redact: digit groups with any
separator or none, any Unicode digits, Luhn-valid, 13-19 digits): every log line captured from the
app's loggers (the audit and event syslog copies, the error log), keyd's log file, every row of every
table (audit log, outbox, sessions, cards, ...), every mail delivered to a real SMTP server, every
response body. The one place a full PAN may appear is the body of a successful reveal, which the
scenario checks it does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from keyd.client import KeydClient
from tests.keyd.conftest import Keyd
from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    SUPERVISOR_PASSWORD,
    add_card,
    add_record,
    keyd_running,
    logged_in,
    records_grants,
    reveal,
    staff,
    token_of,
    vault,
)
from tests.webapp.smtpsink import Sink, smtp_server
from webapp import create_app
from webapp.db.tables import metadata
from webapp.redact import MAX_TEXT, find_pans

# Test cards from the brands' published test ranges.
VISA, MASTERCARD, AMEX = "4111111111111111", "5555555555554444", "378282246310005"
# A 64-hex hash holding a Luhn-valid 14-digit run (the shape that made this scan flaky once).
HASH_WITH_DIGITS = "a" * 20 + "30218282104860" + "f" * 30
# The detector scans at most MAX_TEXT characters at a time: longer texts (keyd's log, a long page)
# are scanned in windows overlapping by _OVERLAP. A find near a cut (within _EDGE characters) is
# left to the neighbouring window, which sees it whole and in its context (a number cut in two, a
# hash cut shorter than a hex token): a card number spelled over up to _OVERLAP - 2 * _EDGE
# characters, separators included, is found.
_OVERLAP = 4096
_EDGE = 256


def pan_like(text: str) -> list[str]:
    """Every card number in `text`, as `webapp.redact.find_pans` finds it, overlapping finds joined.
    Digits inside hex tokens of 32+ characters (hashes, serials) are left out, as the audit writer's
    masking leaves them: random hex holds such runs by chance, and no leak takes that form."""
    spans: set[tuple[int, int]] = set()
    step = MAX_TEXT - _OVERLAP
    for offset in range(0, max(len(text) - _OVERLAP, 1), step):
        window = text[offset : offset + MAX_TEXT]
        cut_before, cut_after = offset > 0, offset + len(window) < len(text)
        for found in find_pans(window, skip_hex_tokens=True):
            if (cut_before and found.start < _EDGE) or (cut_after and found.end > len(window) - _EDGE):
                continue
            spans.add((offset + found.start, offset + found.end))
    joined: list[list[int]] = []
    for start, end in sorted(spans):
        if joined and start < joined[-1][1]:
            joined[-1][1] = max(joined[-1][1], end)
        else:
            joined.append([start, end])
    return [text[start:end] for start, end in joined]


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        (f"pan={VISA};", [VISA]),
        ("card 4111 1111 1111 1111 ok", ["4111 1111 1111 1111"]),
        ("card 4111-1111-1111-1111 ok", ["4111-1111-1111-1111"]),
        (f"<td>{AMEX}</td>", [AMEX]),
        ("3782 822463 10005", ["3782 822463 10005"]),
        (f"x{MASTERCARD}y", [MASTERCARD]),
        (f"card{VISA}", [VISA]),
        (f"hash={HASH_WITH_DIGITS} ok", []),
        (f"short=ab{VISA}cd", [VISA]),  # a hex-ish token, but too short to be a hash
        ("4111 1111 1111 1112", []),  # Luhn fails
        ("411111111111", []),  # 12 digits
        ("2026-11-28T10:00:00.000000Z seq=1234", []),
        ("a3f9c2e1b4d5", []),
        # Every spelling the detector knows, not only spaces and dashes.
        ("4111.1111.1111.1111", ["4111.1111.1111.1111"]),
        ("4111/1111/1111/1111", ["4111/1111/1111/1111"]),
        ("4111_1111_1111_1111", ["4111_1111_1111_1111"]),
        ("4111,1111,1111,1111", ["4111,1111,1111,1111"]),
        ("4111\u00a01111\u00a01111\u00a01111", ["4111\u00a01111\u00a01111\u00a01111"]),
        ("pan: 4111 - 1111 -- 1111 / 1111.", ["4111 - 1111 -- 1111 / 1111"]),
        ("4111\n1111\n1111\n1111", ["4111\n1111\n1111\n1111"]),
        ("\uff14" + "\uff11" * 15, ["\uff14" + "\uff11" * 15]),  # fullwidth digits
        (
            "\u0664\u0661\u0661\u0661 1111 1111 1111",
            ["\u0664\u0661\u0661\u0661 1111 1111 1111"],
        ),  # Arabic-Indic
        ("6011000990139424", ["6011000990139424"]),
        ("4000000000000000006", ["4000000000000000006"]),  # 19 digits
        ("41111111111111111111", []),  # 20 digits: no card number
        ("28.11.2026 10:00:00", []),
    ],
)
def test_the_scanner_finds_planted_pans_and_only_those(text: str, hits: list[str]) -> None:
    assert pan_like(text) == hits


# Texts longer than the detector's MAX_TEXT: a card number or a hash wherever the windows are cut.
LONG = [
    ("far into a long text", 3 * MAX_TEXT, "4111.1111.1111.1111", 1),
    *[
        (f"across a cut, at {at}", at, "4111 1111 1111 1111", 1)
        for at in (MAX_TEXT - 10, MAX_TEXT - _OVERLAP + 2)
    ],
    ("spelled over many characters", MAX_TEXT - 200, "4111" + " -" * 300 + "1111 1111 1111", 1),
    *[(f"a hash across a cut, at {at}", at, HASH_WITH_DIGITS, 0) for at in (MAX_TEXT - 40, MAX_TEXT - 30)],
]


@pytest.mark.parametrize(("why", "at", "planted", "count"), LONG, ids=[case[0] for case in LONG])
def test_the_scanner_sees_all_of_a_long_text(why: str, at: int, planted: str, count: int) -> None:
    text = "x" * at + planted + " y" * MAX_TEXT
    assert pan_like(text) == [planted] * count, why


class Recorder:
    """WSGI middleware keeping every response body (error pages included) with its request."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.bodies: list[tuple[str, str, int, str]] = []

    def __call__(self, environ: dict[str, object], start_response: Callable[..., object]) -> Iterator[bytes]:
        status: list[int] = []

        def start(s: str, headers: list[tuple[str, str]], exc_info: object = None) -> object:
            status.append(int(s.split()[0]))
            return start_response(s, headers, exc_info) if exc_info else start_response(s, headers)

        chunks = list(self.app(environ, start))
        body = b"".join(chunks).decode("utf-8", errors="replace")
        self.bodies.append((str(environ["REQUEST_METHOD"]), str(environ["PATH_INFO"]), status[0], body))
        yield from chunks


def _dump_database(engine: sa.Engine) -> Iterator[tuple[str, str]]:
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        yield table.name, bytes(value).decode("latin-1")
                    elif value is not None:
                        yield table.name, str(value)


def test_a_full_run_leaves_no_pan_anywhere(
    make_app: Callable[..., Flask],
    app: Flask,
    staff: dict[str, Person],  # noqa: F811 - the shared fixture
    keyd_running: tuple[Keyd, bytes],  # noqa: F811 - the shared fixture
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    owner_engine: sa.Engine,
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = Sink()
    with smtp_server(sink) as port:
        mail = {"SMTP_PORT": port, "MAIL_FROM": "strongroom@vault.example", "ALERT_TO": "admin@example.com"}
        tight = [{"scope": "employee", "window": 3600, "alert": 2, "limit": 4}]
        main = make_app(**mail)
        main.wsgi_app = recorder = Recorder(main.wsgi_app)  # type: ignore[method-assign]
        budgeted = make_app(REQUEST_BUDGETS=tight)
        budgeted.wsgi_app = recorder_b = Recorder(budgeted.wsgi_app)  # type: ignore[method-assign]

        # A clerk stores cards (grouped three ways) and views them masked.
        clerk = logged_in(main, staff["clerk"])
        record_id = add_record(clerk)
        visa = add_card(clerk, record_id, pan="4111 1111 1111 1111")
        add_card(clerk, record_id, pan="5555-5555-5555-4444")
        add_card(clerk, record_id, pan=AMEX, cardholder="Grace Hopper")
        assert get(clerk, f"/records/{record_id}").status_code == 200
        assert get(clerk, f"/records/{record_id}/cards/{visa}").status_code == 200
        assert get(clerk, "/records/", query_string={"crm_ref": "C1234567"}).status_code == 200

        # Refusals that carry a PAN in: a CVV, an expired card, a PAN where a name goes, a PAN as
        # the CRM reference, a form without a CSRF token, a forged field.
        form = {"pan": VISA, "cardholder": "Ada Lovelace", "exp_month": "12", "exp_year": "2028"}
        for extra in (
            {"cvv": "123"},
            {"exp_year": "2020"},
            {"cardholder": VISA},
            {"pan": "4111 1111 1111 1112"},
            {"unexpected": VISA},
        ):
            r = post(
                clerk, f"/records/{record_id}/cards", data={"csrf_token": token_of(clerk), **form, **extra}
            )
            assert r.status_code in (400, 403), (extra, r.status_code)
        assert post(clerk, f"/records/{record_id}/cards", data=form).status_code == 400  # no CSRF token
        assert get(clerk, "/records/", query_string={"crm_ref": VISA}).status_code == 400
        assert get(clerk, "/records/", query_string={"crm_ref": "4111-1111-1111-1111"}).status_code == 400
        r = post(clerk, "/records/", data={"csrf_token": token_of(clerk), "crm_ref": MASTERCARD})
        assert r.status_code == 400
        # A clerk calling a reveal URL directly.
        url = f"/records/{record_id}/reveal/card/{visa}/pan"
        assert get(clerk, url).status_code == 403

        # A supervisor reveals once (the only place a PAN may show), and fails once.
        sup = logged_in(main, staff["supervisor"])
        shown = reveal(sup, url, SUPERVISOR_PASSWORD)
        assert shown.status_code == 200
        assert "4111 1111 1111 1111" in shown.text
        assert reveal(sup, url, "Wrong-Password-For-Reveal-1").status_code in (400, 403)

        # Failed logins up to a lockout, and an employee over a request budget (429 pages).
        stranger = client_for(main, staff["auditor"].cert)
        for _ in range(10):
            login(stranger, "audrey", VISA)  # a PAN typed as a password
        over = logged_in(budgeted, staff["admin"])  # no requests counted yet this hour
        statuses = [get(over, "/").status_code for _ in range(6)]
        assert statuses[-1] == 429

        # keyd unreachable mid-session: 503 pages while a card with a PAN is being stored.
        cut_off = create_app(
            dict(main.config),
            clock=main.extensions["strongroom"].clock,
            vault=KeydClient(tmp_path / "no-keyd.sock", timeout=1.0),
        )
        cut_off.wsgi_app = recorder_c = Recorder(cut_off.wsgi_app)  # type: ignore[method-assign]
        lost = logged_in(cut_off, staff["clerk"])
        token = csrf_token(get(lost, "/records/").text)  # the home page needs keyd; the list does not
        r = post(lost, f"/records/{record_id}/cards", data={"csrf_token": token, **form})
        assert r.status_code == 503
        assert get(lost, "/").status_code == 503
        cut_off.extensions["strongroom"].engine.dispose()

        # The mailer delivers whatever the outbox holds.
        result = main.test_cli_runner().invoke(args=["mail", "send"])
        assert result.exit_code == 0, result.output

    subjects = {str(m.message["Subject"]) for m in sink.messages}
    assert "Strongroom: request budget threshold reached" in subjects  # the budget alert went out too
    assert "Strongroom: account locked after failed logins" in subjects

    # The scan.
    leaks: list[str] = []

    def scan(where: str, text: str) -> None:
        leaks.extend(f"{where}: {hit}" for hit in pan_like(text))

    for method, path, status, body in recorder.bodies + recorder_b.bodies + recorder_c.bodies:
        if method == "POST" and "/reveal/" in path and status == 200:
            continue  # the reveal page itself: showing the PAN is its purpose
        scan(f"response {method} {path} {status}", body)
    for record in caplog.records:
        scan(f"log {record.name}", record.getMessage())
    scan("keyd log", keyd_running[0].log_text())
    for log_file in tmp_path.rglob("*.log"):
        scan(f"file {log_file.name}", log_file.read_text(errors="replace"))
    for table, text in _dump_database(owner_engine):  # as the owner: every table, every column
        scan(f"table {table}", text)
    for message in sink.messages:
        scan("mail", message.raw.decode(errors="replace"))
        scan("mail (decoded)", str(message.message.get_content()))  # quoted-printable splits lines
    scan("mailer output", result.output)
    assert leaks == [], "\n".join(leaks)


def test_a_pan_pasted_into_the_address_bar_leaves_no_trace(
    app: Flask, people: dict[str, Person], caplog: pytest.LogCaptureFixture, owner_engine: sa.Engine
) -> None:
    caplog.set_level(logging.DEBUG)
    client = logged_in(app, people["alice"])
    bodies = [
        get(client, path).text for path in (f"/records/{VISA}", f"/{VISA}", f"/records/?crm_ref={VISA}")
    ]
    leaks = [hit for body in bodies for hit in pan_like(body)]
    leaks += [hit for r in caplog.records for hit in pan_like(r.getMessage())]
    leaks += [hit for _, text in _dump_database(owner_engine) for hit in pan_like(text)]
    assert leaks == []
