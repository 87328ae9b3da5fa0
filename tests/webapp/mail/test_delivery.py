"""The alert mailer against a real SMTP server (aiosmtpd on loopback), on SQLite and MariaDB."""

from __future__ import annotations

import re
import ssl
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.fixtures.pki import TestCA
from tests.support import free_port
from tests.webapp.conftest import Person, client_for, login
from tests.webapp.helpers import audit_rows
from tests.webapp.smtpsink import Sink, smtp_server
from webapp import outbox
from webapp.clock import FakeClock
from webapp.db.tables import outbox as outbox_table
from webapp.events import Event
from webapp.mail.delivery import Mailer
from webapp.mail.settings import MailSettings

ADMINS = "admin@example.com, security@example.com"
PAN = "4111 1111 1111 1111"
# What the outbox rows carry and a mail must never: actor names, IPs, resources, details.
PRIVATE = ["mallory", "10.9.8.7", "user:mallory", "crm:C-1234", PAN, "4111111111111111"]


def mail_config(port: int, **extra: object) -> dict[str, object]:
    return {"SMTP_PORT": port, "MAIL_FROM": "strongroom@vault.example", "ALERT_TO": ADMINS, **extra}


def plant(app: Flask, clock: FakeClock, event: str, n: int = 1) -> None:
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        for i in range(n):
            outbox.enqueue(
                conn,
                event,
                now=clock.now() + timedelta(minutes=i),
                actor="mallory",
                ip="10.9.8.7",
                resource="user:mallory",
                detail=f"crm:C-1234 pan={PAN}",
            )


def pending(app: Flask) -> list[sa.Row]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return outbox.pending(conn, limit=10_000)


def all_rows(app: Flask) -> list[sa.Row]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return list(conn.execute(sa.select(outbox_table).order_by(outbox_table.c.id)))


def send(app: Flask) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["mail", "send"])
    return result.exit_code, result.output


def count_in(body: str) -> int:
    m = re.search(r", (\d+) events since", body)
    return int(m.group(1)) if m else 1


def test_one_bare_mail_per_event_kind_to_every_admin(
    make_app: Callable[..., Flask], clock: FakeClock
) -> None:
    sink = Sink()
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port))
        plant(app, clock, str(Event.ACCOUNT_LOCKED))
        plant(app, clock, "ops.port_new")
        code, output = send(app)
    assert code == 0, output
    assert "sent 2 mail(s) for 2 event(s)" in output
    by_subject = {m.message["Subject"]: m for m in sink.messages}
    assert set(by_subject) == {"Strongroom: account locked after failed logins", "Strongroom: ops.port_new"}
    locked = by_subject["Strongroom: account locked after failed logins"]
    assert locked.rcpt_tos == ["admin@example.com", "security@example.com"]
    assert locked.mail_from == "strongroom@vault.example"
    assert locked.message["Auto-Submitted"] == "auto-generated"
    body = locked.message.get_content()
    assert body.startswith(
        "Strongroom: account locked after failed logins at 10:00 UTC, check the audit log on the server."
    )
    ops = by_subject["Strongroom: ops.port_new"].message.get_content()
    assert ops.startswith("Strongroom: ops.port_new at 10:00 UTC, check the server.")
    for m in sink.messages:
        raw = m.raw.decode()
        for secret in PRIVATE:
            assert secret not in raw
    assert pending(app) == []
    sent = audit_rows(app, Event.MAIL_SENT)
    assert len(sent) == 2
    assert all(r.actor == "mailer" and r.outcome == "success" for r in sent)


def test_a_burst_is_one_mail_with_the_count(make_app: Callable[..., Flask], clock: FakeClock) -> None:
    sink = Sink()
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port))
        clock.advance(timedelta(hours=-8, minutes=14))  # 02:14 UTC
        plant(app, clock, str(Event.LOGIN_OFF_HOURS), n=12)
        code, output = send(app)
    assert code == 0, output
    (mail,) = sink.messages
    assert mail.message["Subject"] == "Strongroom: off-hours login (12 events)"
    assert mail.message.get_content().startswith(
        "Strongroom: off-hours login, 12 events since 02:14 UTC, check the audit log on the server."
    )


def test_events_raised_by_the_app_are_mailed_without_who_or_where(
    make_app: Callable[..., Flask], people: dict[str, Person], app: Flask
) -> None:
    sink = Sink()
    with smtp_server(sink) as port:
        mailer_app = make_app(**mail_config(port))
        client = client_for(app, people["alice"].cert, ip="10.0.0.77")
        for _ in range(10):
            login(client, "alice", "Wrong-Password-Attempt-99")
        code, output = send(mailer_app)
    assert code == 0, output
    raws = [m.raw.decode() for m in sink.messages]
    assert any("account locked" in r for r in raws)
    assert not any("alice" in r or "10.0.0.77" in r or "Wrong-Password" in r for r in raws)


def test_mail_server_down_keeps_events_pending_then_delivers_exactly_once(
    make_app: Callable[..., Flask], clock: FakeClock
) -> None:
    port = free_port()  # nothing listens yet
    app = make_app(**mail_config(port))
    plant(app, clock, str(Event.VAULT_SEALED), n=3)
    code, output = send(app)
    assert code == 1
    assert "failed" in output
    assert "kept pending" in output
    rows = pending(app)
    assert sum(r.n_events for r in rows) == 3  # coalesced into one row of the 10-minute window
    assert {r.attempts for r in rows} == {1}
    (failed,) = audit_rows(app, Event.MAIL_FAILED)
    assert failed.outcome == "failure"
    assert "ConnectionRefusedError" in failed.detail
    assert send(app)[0] == 1  # still down
    assert {r.attempts for r in pending(app)} == {2}
    sink = Sink()
    with smtp_server(sink, port=port):
        assert send(app)[0] == 0
        assert send(app)[0] == 0  # nothing left: nothing sent twice
    (mail,) = sink.messages
    assert count_in(mail.message.get_content()) == 3
    assert pending(app) == []
    assert {r.attempts for r in all_rows(app)} == {2}


def test_a_refused_message_stays_pending(make_app: Callable[..., Flask], clock: FakeClock) -> None:
    sink = Sink(refuse=True)
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port))
        plant(app, clock, str(Event.USER_ADDED))
        code, _ = send(app)
        assert code == 1
        (failed,) = audit_rows(app, Event.MAIL_FAILED)
        assert "SMTPDataError:554" in failed.detail
        sink.refuse = False
        assert send(app)[0] == 0
    assert len(sink.messages) == 1
    assert pending(app) == []


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@pytest.mark.parametrize(
    ("refuse", "expected"),
    [(True, "SMTPDataError"), (False, "ConnectionRefusedError")],
    ids=["554-to-data", "nothing-listening"],
)
def test_a_failed_delivery_records_its_class_never_its_text(
    make_app: Callable[..., Flask], clock: FakeClock, refuse: bool, expected: str
) -> None:
    """The row keeps the failure's class name alone: a server's reply ("554 5.6.0 refused by the
    test") may quote anything, so none of its words, nor its code, reach `last_error`. Delivered
    later, the row keeps the class of its last failure (what the admin console shows)."""
    sink = Sink(refuse=True)
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port if refuse else free_port()))
        plant(app, clock, str(Event.USER_ADDED))
        assert send(app)[0] == 1
        (row,) = pending(app)
        assert (row.attempts, row.last_error) == (1, expected)
        assert IDENTIFIER.fullmatch(row.last_error)
        assert "refused by the test" not in row.last_error
        assert "554" not in row.last_error
        if refuse:
            sink.refuse = False
            assert send(app)[0] == 0
    if refuse:
        (row,) = all_rows(app)
        assert row.sent_at is not None
        assert (row.attempts, row.last_error) == (1, expected)


def test_two_mailers_at_once_send_each_event_once(make_app: Callable[..., Flask], clock: FakeClock) -> None:
    sink = Sink(delay=0.3)  # long enough that the two passes overlap
    kinds = [str(Event.ACCOUNT_LOCKED), str(Event.USER_ADDED), "ops.port_new", "ops.log_gap"]
    with smtp_server(sink) as port:
        first, second = make_app(**mail_config(port)), make_app(**mail_config(port))  # two processes' worth
        for kind in kinds:
            plant(first, clock, kind, n=5)
        mailers = [
            Mailer(
                engine=a.extensions["strongroom"].engine,
                clock=clock,
                settings=MailSettings.from_config(a.config),
                units=a.extensions["strongroom"].unit,
            )
            for a in (first, second)
        ]
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(mailer: Mailer) -> None:
            try:
                barrier.wait()
                mailer.deliver()
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(m,)) for m in mailers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert len(sink.messages) == len(kinds)
        assert sorted(m.message["Subject"] for m in sink.messages) == sorted(
            {
                "Strongroom: account locked after failed logins (5 events)",
                "Strongroom: user added (5 events)",
                "Strongroom: ops.port_new (5 events)",
                "Strongroom: ops.log_gap (5 events)",
            }
        )
        assert pending(first) == []
        assert send(first)[0] == 0
        assert len(sink.messages) == len(kinds)


def test_message_id_is_stable_for_the_same_rows(make_app: Callable[..., Flask], clock: FakeClock) -> None:
    """What limits a resend after a crash between SMTP accept and commit: the same Message-ID."""
    from webapp.mail.delivery import message_id

    assert message_id("ops.port_new", [1, 2], "x.example") == message_id("ops.port_new", [1, 2], "x.example")
    assert message_id("ops.port_new", [1, 2], "x.example") != message_id("ops.port_new", [1, 3], "x.example")


def _tls_server_context(ca: TestCA, tmp_path: Path) -> ssl.SSLContext:
    cert, key = ca.issue("localhost", server=True).write(tmp_path, "smtp-server")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_starttls_forced_on_loopback_delivers_over_verified_tls(
    make_app: Callable[..., Flask], clock: FakeClock, ca: TestCA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    sink = Sink()
    with smtp_server(sink, tls=_tls_server_context(ca, tmp_path)) as port:
        app = make_app(**mail_config(port, SMTP_STARTTLS="required", SMTP_CA_FILE=str(ca_file)))
        plant(app, clock, str(Event.CERT_REFUSED))
        code, output = send(app)
    assert code == 0, output
    (mail,) = sink.messages
    assert mail.tls


@pytest.mark.parametrize("server_tls", [False, True], ids=["no-starttls-offered", "untrusted-certificate"])
def test_starttls_failures_never_fall_back_to_clear_text(
    make_app: Callable[..., Flask], clock: FakeClock, ca: TestCA, tmp_path: Path, server_tls: bool
) -> None:
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(TestCA("Some Other CA").pem)
    sink = Sink()
    tls = _tls_server_context(ca, tmp_path) if server_tls else None
    with smtp_server(sink, tls=tls) as port:
        app = make_app(**mail_config(port, SMTP_STARTTLS="required", SMTP_CA_FILE=str(other_ca)))
        plant(app, clock, str(Event.CERT_REFUSED))
        code, _ = send(app)
    assert code == 1
    assert sink.messages == []
    assert len(pending(app)) == 1
    (failed,) = audit_rows(app, Event.MAIL_FAILED)
    expected = "SSLCertVerificationError" if server_tls else "starttls_not_offered"
    assert expected in failed.detail
    assert pending(app)[0].last_error == expected  # the class, or the mailer's own refusal name


def test_send_refuses_to_run_without_recipients(make_app: Callable[..., Flask]) -> None:
    app = make_app(SMTP_PORT=25, MAIL_FROM="strongroom@vault.example")
    code, output = send(app)
    assert code == 78  # EX_CONFIG: the unit does not restart, its OnFailure= mails root
    assert "STRONGROOM_ALERT_TO: is required: comma-separated admin addresses" in output


def test_mail_run_loops_and_stops_cleanly_on_sigterm(
    make_app: Callable[..., Flask], clock: FakeClock, db_url: str, tmp_path: Path
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.webapp.conftest import SECRET

    sink = Sink()
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port))
        plant(app, clock, str(Event.PIN_SET), n=2)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")},
            "STRONGROOM_SECRET_KEY": SECRET,
            "STRONGROOM_DATABASE_URL": db_url,
            "STRONGROOM_INSTANCE_PATH": str(tmp_path / "instance"),
            "STRONGROOM_SMTP_PORT": str(port),
            "STRONGROOM_MAIL_FROM": "strongroom@vault.example",
            "STRONGROOM_ALERT_TO": ADMINS,
        }
        flask = Path(sys.executable).with_name("flask")
        proc = subprocess.Popen(
            [str(flask), "--app", "webapp", "mail", "run", "--interval", "1"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while not sink.messages and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            plant(app, clock, str(Event.USER_UNLOCKED))  # picked up by a later pass
            while len(sink.messages) < 2 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "mailer stopped" in err
    assert sorted(m.message["Subject"] for m in sink.messages) == [
        "Strongroom: PIN set (2 events)",
        "Strongroom: user unlocked",
    ]
    assert pending(app) == []


@pytest.mark.parametrize(
    ("password", "delivered"), [("Smtp-Relay-Secret-42", True), ("wrong-password", False)]
)
def test_smtp_authentication_over_starttls(
    make_app: Callable[..., Flask],
    clock: FakeClock,
    ca: TestCA,
    tmp_path: Path,
    password: str,
    delivered: bool,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.pem)
    secret = tmp_path / "smtp-password"
    secret.write_text(password + "\n")
    sink = Sink()
    server = smtp_server(
        sink, tls=_tls_server_context(ca, tmp_path), login=("alerts", "Smtp-Relay-Secret-42")
    )
    with server as port:
        app = make_app(
            **mail_config(
                port,
                SMTP_STARTTLS="required",
                SMTP_CA_FILE=str(ca_file),
                SMTP_USER="alerts",
                SMTP_PASSWORD_FILE=str(secret),
            )
        )
        plant(app, clock, str(Event.USER_DISABLED))
        code, output = send(app)
    assert (code == 0) is delivered, output
    assert len(sink.messages) == (1 if delivered else 0)
    assert password not in output
    for row in audit_rows(app):
        assert password not in row.detail
    if not delivered:
        (failed,) = audit_rows(app, Event.MAIL_FAILED)
        # smtplib tries each mechanism; aiosmtpd may hang up after the refusals.
        assert re.search(r"error=(SMTPAuthenticationError:535|SMTPServerDisconnected)$", failed.detail)
        assert len(pending(app)) == 1


def test_a_commit_lost_after_smtp_accepted_resends_with_the_same_message_id(
    make_app: Callable[..., Flask], clock: FakeClock, owner_engine: sa.Engine
) -> None:
    """The documented window: the server accepted the mail, then our COMMIT failed (here the audit
    insert is refused by the database). The rows stay pending and are sent again, as the same mail."""
    from tests.webapp.helpers import refuse_audit_inserts

    sink = Sink()
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port))
        plant(app, clock, str(Event.SESSIONS_KILLED), n=2)
        refuse_audit_inserts(owner_engine)
        code, output = send(app)
        assert code == 1
        assert "database error" in output
        # Nothing marked: the mark and its audit record commit together.
        assert sum(r.n_events for r in pending(app)) == 2
        with owner_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER audit_refuses")
        assert send(app)[0] == 0
    first, second = sink.messages
    assert first.message["Message-ID"] == second.message["Message-ID"]
    assert pending(app) == []
    assert len(audit_rows(app, Event.MAIL_SENT)) == 1
