"""The durable event outbox: written with the action, kept until the mailer marks it sent, coalesced
per event name and 10-minute window, so that an outage or an attacker cannot grow it without bound."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.webapp.conftest import Person, client_for, get, login
from tests.webapp.helpers import refuse_audit_inserts
from webapp import outbox
from webapp.audit.service import AuditEntry
from webapp.clock import FakeClock
from webapp.db.tables import outbox as outbox_table
from webapp.events import ALERTS, Event


def test_alerts_wait_in_the_outbox_until_marked_sent(
    app: Flask, people: dict[str, Person], clock: FakeClock
) -> None:
    client = client_for(app, people["alice"].cert)
    for _ in range(10):
        login(client, "alice", "Wrong-Password-Attempt-99")
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        pending = outbox.pending(conn)
        locked = [r for r in pending if r.event == Event.ACCOUNT_LOCKED]
        assert len(locked) == 1
        assert (locked[0].actor, locked[0].ip) == ("alice", "10.0.0.5")
        assert locked[0].resource.startswith("user:")
        outbox.mark_failed(conn, [locked[0].id])  # mail server down: still pending
    with engine.begin() as conn:
        assert locked[0].id in [r.id for r in outbox.pending(conn)]
        assert outbox.mark_sent(conn, [locked[0].id], now=clock.now()) == 1
    with engine.begin() as conn:
        assert locked[0].id not in [r.id for r in outbox.pending(conn)]


def test_an_event_exists_only_if_its_action_committed(
    app: Flask, people: dict[str, Person], owner_engine: sa.Engine
) -> None:
    refuse_audit_inserts(owner_engine)
    assert app.test_cli_runner().invoke(args=["users", "disable", "alice"]).exit_code == 1
    with app.extensions["strongroom"].engine.begin() as conn:
        assert Event.USER_DISABLED not in [r.event for r in outbox.pending(conn)]


def test_page_views_are_audited_but_not_alerts() -> None:
    assert Event.PAGE_VIEW not in ALERTS
    assert {
        Event.LOGIN_OFF_HOURS,
        Event.ACCOUNT_LOCKED,
        Event.INPUT_REFUSED,
        Event.ERROR_UNEXPECTED,
    } <= ALERTS


def test_enqueue_queues_an_alert_for_the_mailer(app: Flask, clock: FakeClock) -> None:
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        outbox.enqueue(conn, "ops.port_new", now=clock.now(), actor="ops.watch", resource="tcp/2222")
    with engine.begin() as conn:
        rows = [r for r in outbox.pending(conn) if r.event == "ops.port_new"]
        assert [(r.actor, r.ip, r.resource, r.detail, r.attempts) for r in rows] == [
            ("ops.watch", "-", "tcp/2222", "-", 0)
        ]
        assert outbox.pending_kinds(conn) == ["ops.port_new"]


def test_enqueue_clips_long_fields_to_their_columns(app: Flask, clock: FakeClock) -> None:
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        outbox.enqueue(conn, "ops.log_gap", now=clock.now(), resource="r" * 500, detail="", actor="a" * 99)
    with engine.begin() as conn:
        (row,) = outbox.pending(conn)
        assert (len(row.resource), row.detail, len(row.actor)) == (200, "-", 64)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "ops",  # not dotted
        "OPS.port_new",  # upper case
        "ops.port_new\r\nBcc: x@example.com",  # header injection
        "ops.4111111111111111",  # digits could carry a card number into a mail
        "ops." + "a" * 70,  # too long
        "ops.port new",
        "ops..port",
        "a.b.c.d.e",  # too deep
    ],
)
def test_enqueue_refuses_malformed_event_names(app: Flask, clock: FakeClock, name: str) -> None:
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn, pytest.raises(outbox.BadEventName):
        outbox.enqueue(conn, name, now=clock.now())
    with engine.begin() as conn:
        assert outbox.pending(conn) == []


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("SMTPRecipientsRefused", "SMTPRecipientsRefused"),
        ("ConnectionRefusedError", "ConnectionRefusedError"),
        ("starttls_not_offered", "starttls_not_offered"),
        (None, "unknown"),
        ("", "unknown"),
        ("SMTPDataError:554", "unknown"),  # a code is not a class
        ("554 5.7.1 <mallory@example.com> rejected", "unknown"),  # a server's text
        ("Error\r\nBcc: x@example.com", "unknown"),
        ("card 4111111111111111", "unknown"),
        ("1Error", "unknown"),
        ("E" * 65, "unknown"),
    ],
)
def test_a_failed_attempt_keeps_only_a_class_name(
    app: Flask, clock: FakeClock, given: str | None, stored: str
) -> None:
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        outbox.enqueue(conn, "ops.port_new", now=clock.now())
        (row,) = outbox.pending(conn)
        outbox.mark_failed(conn, [row.id], error=given)
    with engine.begin() as conn:
        (row,) = outbox.pending(conn)
    assert (row.attempts, row.last_error) == (1, stored)


def test_every_event_name_is_a_valid_outbox_name() -> None:
    assert all(outbox.valid_event_name(str(e)) for e in Event)


def test_pan_shaped_strings_never_reach_the_outbox(app: Flask, clock: FakeClock) -> None:
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        outbox.enqueue(
            conn, "ops.log_new", now=clock.now(), resource="/x/4111111111111111", detail="4111 1111 1111 1111"
        )
    with engine.begin() as conn:
        (row,) = outbox.pending(conn)
        assert (row.resource, row.detail) == ("/x/************1111", "************1111")


def _rows(app: Flask) -> list[sa.Row]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return list(conn.execute(sa.select(outbox_table).order_by(outbox_table.c.id)))


def _raise(app: Flask, event: Event, when: datetime, resource: str = "-") -> None:
    """What a request's unit of work does with an alert: OutboxSink.write in its transaction."""
    sink = outbox.OutboxSink(logger=logging.getLogger("test"))
    entry = AuditEntry(event=event, outcome="failure", actor="alice", resource=resource)
    with app.extensions["strongroom"].engine.begin() as conn:
        sink.write(conn, [entry], now=when)


def test_the_web_apps_alerts_are_coalesced_per_name_and_window(app: Flask, clock: FakeClock) -> None:
    start = clock.now()  # 10:00, a window boundary
    for minute, event, resource in [
        (0, Event.VAULT_UNAVAILABLE, "/records/1"),
        (1, Event.VAULT_UNAVAILABLE, "/records/2"),  # another path: the same row (the key is the name)
        (2, Event.CSRF_REFUSED, "/x"),
        (9, Event.VAULT_UNAVAILABLE, "/records/3"),
        (10, Event.VAULT_UNAVAILABLE, "/records/4"),  # 10:10: a new window, a new row
    ]:
        _raise(app, event, start + timedelta(minutes=minute), resource)
    rows = _rows(app)
    got = [(r.event, r.n_events, r.resource, r.created_at.minute, r.last_at.minute) for r in rows]
    assert got == [
        (Event.VAULT_UNAVAILABLE, 3, "/records/1", 0, 9),  # the first event's fields are kept
        (Event.CSRF_REFUSED, 1, "/x", 2, 2),
        (Event.VAULT_UNAVAILABLE, 1, "/records/4", 10, 10),
    ]


def test_enqueued_findings_keep_a_row_each(app: Flask, clock: FakeClock) -> None:
    """The watchdog's and backups' findings: scheduled, once per episode, and their row is the only
    record of their resource: not coalesced."""
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        outbox.enqueue(conn, "ops.port_new", now=clock.now(), resource="tcp/2222")
        outbox.enqueue(conn, "ops.port_new", now=clock.now(), resource="tcp/3333")
    assert [(r.resource, r.n_events) for r in _rows(app)] == [("tcp/2222", 1), ("tcp/3333", 1)]


def test_sent_rows_are_never_added_to(app: Flask, clock: FakeClock) -> None:
    _raise(app, Event.VAULT_UNAVAILABLE, clock.now())
    with app.extensions["strongroom"].engine.begin() as conn:
        (row,) = outbox.pending(conn)
        assert outbox.mark_mailed(conn, [row], now=clock.now()) == 1
    _raise(app, Event.VAULT_UNAVAILABLE, clock.now())
    assert [(r.n_events, r.sent_at is None) for r in _rows(app)] == [(1, False), (1, True)]


def test_events_added_while_a_mail_is_out_stay_pending(app: Flask, clock: FakeClock) -> None:
    """SQLite's mailer cannot lock rows during SMTP: what arrives between its read and its mark is
    kept pending for the next mail, not marked sent unmailed."""
    engine = app.extensions["strongroom"].engine
    for _ in range(3):
        _raise(app, Event.VAULT_UNAVAILABLE, clock.now())
    with engine.connect() as conn:
        read = outbox.pending(conn)  # what the mail says: 3 events
    for _ in range(2):
        _raise(app, Event.VAULT_UNAVAILABLE, clock.now())  # arriving during SMTP
    with engine.begin() as conn:
        assert outbox.mark_mailed(conn, read, now=clock.now()) == 3
        (left,) = outbox.pending(conn)
    assert left.n_events == 2


def test_a_keyd_outage_leaves_a_bounded_outbox(
    make_app: Callable[..., Flask], people: dict[str, Person], tmp_path: Path, clock: FakeClock
) -> None:
    """The issue's run: a keyd outage with thousands of failing requests wrote one row each. Through
    the real keyd client (nothing listening), every request fails with 503 and is audited; the
    outbox holds one row with the count."""
    from keyd.client import KeydClient

    app = make_app(INSTANCE_PATH=str(tmp_path / "i2"))
    app.extensions["strongroom"].vault = KeydClient(str(tmp_path / "nobody-listens.sock"), timeout=0.5)
    client = client_for(app, people["alice"].cert)
    assert login(client, "alice", people["alice"].password).status_code == 302
    failing = 1500
    for _ in range(failing):
        assert get(client, "/").status_code == 503
    rows = [r for r in _rows(app) if r.event == Event.VAULT_UNAVAILABLE]
    assert len(rows) == 1
    assert rows[0].n_events == failing
    names = [r.event for r in _rows(app)]
    assert len(names) == len(set(names))  # every name once (budget alerts, the setup's admin events)
