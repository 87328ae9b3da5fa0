"""The durable event outbox: written with the action, kept until the mailer marks it sent."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.webapp.conftest import Person, client_for, login
from tests.webapp.helpers import refuse_audit_inserts
from webapp import outbox
from webapp.clock import FakeClock
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
