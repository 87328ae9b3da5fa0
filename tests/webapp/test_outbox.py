"""The durable event outbox: written with the action, kept until the mailer marks it sent."""

from __future__ import annotations

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
