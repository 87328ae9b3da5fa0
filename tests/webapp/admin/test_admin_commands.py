"""The admin commands: users and certificate bindings (the CA tool's contract), each audited."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.fixtures.pki import TestCA
from tests.webapp.conftest import PASSWORDS, SECRET, MariaBackend, Person
from tests.webapp.helpers import audit_rows, events, user_row
from webapp.auth import passwords
from webapp.db.tables import cert_bindings
from webapp.events import Event
from webapp.retry import RETRYABLE
from webapp.services import services

ROOT = Path(__file__).resolve().parents[3]


def _run(app: Flask, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = app.test_cli_runner().invoke(args=list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def _bindings(app: Flask, username_id: int) -> list[sa.Row]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return list(conn.execute(sa.select(cert_bindings).where(cert_bindings.c.user_id == username_id)))


def test_bind_records_fingerprint_serial_subject_expiry(app: Flask, ca: TestCA, tmp_path: Path) -> None:
    assert (
        _run(app, "users", "add", "carol", "--role", "clerk", "--password-stdin", stdin=PASSWORDS["alice"])[0]
        == 0
    )
    cert = ca.issue("carol")
    pem, _ = cert.write(tmp_path, "carol")
    code, out, _ = _run(app, "certs", "bind", "carol", str(pem))
    assert code == 0
    [row] = _bindings(app, user_row(app, "carol").id)
    assert row.fingerprint == hashlib.sha256(cert.der).hexdigest()
    assert row.serial == format(cert.cert.serial_number, "x")
    assert row.subject == "CN=carol"
    assert row.status == "active"
    assert row.fingerprint in out
    assert Event.CERT_BOUND in events(app)


def test_a_new_binding_replaces_the_previous_one(
    app: Flask, people: dict[str, Person], ca: TestCA, tmp_path: Path
) -> None:
    second = ca.issue("alice")
    pem, _ = second.write(tmp_path, "alice2")
    assert _run(app, "certs", "bind", "alice", str(pem))[0] == 0
    rows = _bindings(app, user_row(app, "alice").id)
    assert sorted(r.status for r in rows) == ["active", "replaced"]
    code, out, _ = _run(app, "certs", "list")
    assert code == 0
    assert out.count("alice\t") == 2


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["certs", "bind", "nobody", "CERT"], "Error: no such user: nobody"),
        (["certs", "bind", "bob", "ALICE_CERT"], "Error: certificate already bound"),
        (["certs", "bind", "bob", "GARBAGE"], "Error: cannot read a PEM certificate"),
        (["certs", "bind", "bob", "MISSING"], "Error: cannot read a PEM certificate"),
        (
            ["certs", "unbind", "ab" * 32, "--reason", "x"],
            "Error: no certificate with that fingerprint is bound",
        ),
        (["users", "disable", "nobody"], "Error: no such user: nobody"),
        (["users", "add", "bob", "--role", "clerk", "--password-stdin"], "Error: user already exists: bob"),
        (["users", "add", "eve", "--role", "clerk", "--password-stdin"], "Error: password refused"),
        (["users", "add", "eve vil", "--role", "clerk", "--password-stdin"], "Error: usernames are"),
        # The CA refuses such names (and "-x" reads as an option): no user it could never certify.
        (["users", "add", "_eve", "--role", "clerk", "--password-stdin"], "Error: usernames are"),
        (["users", "add", ".eve", "--role", "clerk", "--password-stdin"], "Error: usernames are"),
        # A username is in clear in every audit record; a reason is stored with the binding.
        (
            ["users", "add", "4111.1111.1111.1111", "--role", "clerk", "--password-stdin"],
            "Error: username: contains what looks like a card number",
        ),
        (
            ["certs", "unbind", "ab" * 32, "--reason", "card 4111/1111/1111/1111"],
            "Error: reason: contains what looks like a card number",
        ),
    ],
)
def test_refusals_exit_1_with_one_line_and_are_audited(
    app: Flask, people: dict[str, Person], ca: TestCA, tmp_path: Path, args: list[str], reason: str
) -> None:
    fresh, _ = ca.issue("x").write(tmp_path, "fresh")
    alice_pem, _ = people["alice"].cert.write(tmp_path, "alice-again")
    (tmp_path / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    swap = {
        "CERT": str(fresh),
        "ALICE_CERT": str(alice_pem),
        "GARBAGE": str(tmp_path / "garbage.pem"),
        "MISSING": str(tmp_path / "missing.pem"),
    }
    before = len(audit_rows(app))
    code, _, err = _run(app, *[swap.get(a, a) for a in args], stdin="short\n")
    assert code == 1
    assert err.startswith(reason)
    assert err.count("\n") == 1
    assert "short" not in err
    assert "1111" not in err
    if "PEM" not in reason and "username" not in reason:
        assert len(audit_rows(app)) == before + 1
        assert audit_rows(app)[-1].outcome == "failure"


def test_reset_password_refuses_the_last_four(app: Flask, people: dict[str, Person]) -> None:
    history = [PASSWORDS["alice"]] + [f"Fresh-Meadow-Lantern-{n}{n}7{n}" for n in range(4)]
    for password in history[1:]:
        assert (
            _run(app, "users", "reset-password", "alice", "--password-stdin", stdin=password + "\n")[0] == 0
        )
    for recent in history[1:]:
        code, _, err = _run(app, "users", "reset-password", "alice", "--password-stdin", stdin=recent + "\n")
        assert code == 1
        assert "last 4 passwords" in err
    # The original is now five passwords back: allowed again.
    assert _run(app, "users", "reset-password", "alice", "--password-stdin", stdin=history[0] + "\n")[0] == 0


def test_reset_password_prints_a_one_time_password_by_default(
    app: Flask, people: dict[str, Person], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    code, out, err = _run(app, "users", "reset-password", "alice")
    assert code == 0, err
    found = re.search(r"one-time password \(.*\): (\S+)$", out, re.M)
    assert found
    otp = found.group(1)
    row = user_row(app, "alice")
    assert row.must_change_password
    assert passwords.verify(services(app).hasher, row.password_hash, otp)
    [reset] = audit_rows(app, Event.PASSWORD_RESET)
    assert "one_time=yes" in reset.detail
    assert all(otp not in " ".join(str(v) for v in r) for r in audit_rows(app))
    assert otp not in caplog.text


def test_reset_password_from_stdin_is_a_normal_password(app: Flask, people: dict[str, Person]) -> None:
    new = "Fresh-Meadow-Lantern-5757"
    code, out, _ = _run(app, "users", "reset-password", "alice", "--password-stdin", stdin=new + "\n")
    assert code == 0
    assert "one-time" not in out
    row = user_row(app, "alice")
    assert not row.must_change_password
    assert passwords.verify(services(app).hasher, row.password_hash, new)
    assert "one_time=no" in audit_rows(app, Event.PASSWORD_RESET)[-1].detail


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("Short-1a", "at least 15 characters"),
        ("no-digits-in-this-one-at-all", "a digit"),
        ("1234567890123456789", "a letter"),
        ("alice-Quartz-Lantern-4817", "the username"),
        ("password12345678", "too common or too easy to guess"),
        ("aaaaaaaaaaaaaaaa1", "too common or too easy to guess"),
        ("Quartz\x00Lantern-Mosaic-4817", "control characters"),
    ],
)
def test_password_policy(app: Flask, people: dict[str, Person], password: str, reason: str) -> None:
    code, _, err = _run(app, "users", "reset-password", "alice", "--password-stdin", stdin=password + "\n")
    assert code == 1
    assert reason in err
    assert password not in err


def test_users_list_and_enable(app: Flask, people: dict[str, Person]) -> None:
    assert _run(app, "users", "disable", "bob")[0] == 0
    code, out, _ = _run(app, "users", "list")
    assert code == 0
    assert "bob\tclerk\tdisabled" in out
    assert "audrey\tauditor\tactive" in out
    assert _run(app, "users", "enable", "bob")[0] == 0
    assert user_row(app, "bob").active


def test_the_ca_contract_as_a_subprocess(
    make_app: Callable[..., Flask], people: dict[str, Person], ca: TestCA, tmp_path: Path, db_url: str
) -> None:
    """What ca/ runs: `flask --app webapp certs ...` with only STRONGROOM_* in its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | {
        "STRONGROOM_SECRET_KEY": SECRET,
        "STRONGROOM_DATABASE_URL": db_url,
        "STRONGROOM_INSTANCE_PATH": str(tmp_path / "instance"),
    }
    flask = [sys.executable, "-m", "flask", "--app", "webapp"]
    cert = ca.issue("bob")
    pem, _ = cert.write(tmp_path, "bob-new")
    fp = hashlib.sha256(cert.der).hexdigest()
    ok = subprocess.run(
        [*flask, "certs", "bind", "bob", str(pem)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    again = subprocess.run(
        [*flask, "certs", "bind", "bob", str(pem)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "Error: certificate already bound (fingerprints are never reused)"
    ]
    gone = subprocess.run(
        [*flask, "certs", "unbind", fp, "--reason", "left the company"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert gone.returncode == 0, gone.stderr
    listing = subprocess.run(
        [*flask, "certs", "list"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert f"bob\trevoked\t{fp}" in listing.stdout


def test_an_unknown_username_is_named_masked_when_it_is_a_card_number(app: Flask) -> None:
    code, _, err = _run(app, "users", "disable", "4111.1111.1111.1111")
    assert code == 1
    assert err == "Error: no such user: ************1111\n"
    assert "4111" not in audit_rows(app)[-1].resource


# --- a database error: what the one line says ---------------------------------------------------------

AGAIN = "nothing was changed — run the command again"
HEALTH = (
    "nothing was changed — check it with `flask --app webapp health`; "
    "a missing or old schema needs `flask --app webapp db upgrade`"
)
# (the error the server sends, the command, the one line): 1213 and 1047 are rolled back whole by
# MariaDB itself, so running the command again is the next step; any other error keeps `health`.
DATABASE_ERRORS = [
    pytest.param(
        1213,
        ["users", "disable", "alice"],
        f"Error: the database rolled the change back (MariaDB error 1213: {RETRYABLE[1213]}); {AGAIN}",
        id="deadlock or certification conflict",
    ),
    pytest.param(
        1047,
        ["users", "disable", "alice"],
        f"Error: the database rolled the change back (MariaDB error 1047: {RETRYABLE[1047]}); {AGAIN}",
        id="Galera node not ready",
    ),
    pytest.param(
        1213,
        ["users", "disable", "nobody"],
        f"Error: the database rolled the change back (MariaDB error 1213: {RETRYABLE[1213]}); {AGAIN}",
        id="while recording a refusal",
    ),
    pytest.param(
        1644,
        ["users", "disable", "alice"],
        f"Error: database error (OperationalError); {HEALTH}",
        id="a trigger's own refusal: as before",
    ),
    pytest.param(
        1644,
        ["users", "disable", "nobody"],
        "Error: the database refused the audit record; nothing was changed — run `flask --app webapp health`",
        id="a refusal's record refused: as before",
    ),
]


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
@pytest.mark.parametrize(("code", "args", "line"), DATABASE_ERRORS)
def test_a_database_error_says_nothing_changed_and_what_to_do_next(
    app: Flask, people: dict[str, Person], maria_backend: MariaBackend, code: int, args: list[str], line: str
) -> None:
    """The server itself sends the error, from a trigger on the audit log (as tests/webapp/test_retry.py
    does): every admin command's write ends with its audit record, so every one meets it."""
    root = maria_backend.server.root(maria_backend.database)
    sqlstate = "40001" if code == 1213 else "HY000"
    try:
        with root.cursor() as cur:
            cur.execute(
                "CREATE TRIGGER admin_command_fails BEFORE INSERT ON audit_log FOR EACH ROW "
                f"SIGNAL SQLSTATE '{sqlstate}' SET MYSQL_ERRNO = {code:d}, "
                "MESSAGE_TEXT = 'refused by the test'"
            )
        before = len(audit_rows(app))
        exit_code, out, err = _run(app, *args)
        assert (exit_code, out, err) == (1, "", line + "\n")
        assert "refused by the test" not in err  # the server's text is never shown
        assert user_row(app, "alice").active  # nothing was changed
        assert len(audit_rows(app)) == before
    finally:
        with root.cursor() as cur:
            cur.execute("DROP TRIGGER IF EXISTS admin_command_fails")
        root.close()
    # As the line says: the same command again, the database answering again, does what it says.
    exit_code, _, err = _run(app, *args)
    disabled = args[-1] == "alice"
    assert (exit_code, err) == ((0, "") if disabled else (1, "Error: no such user: nobody\n"))
    assert user_row(app, "alice").active is not disabled
    assert len(audit_rows(app)) == before + 1
