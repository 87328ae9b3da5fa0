"""Alert names and fields as the outbox takes them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from ops.alerts import ACTOR, Alert, Finding, enqueue
from webapp.db.tables import outbox
from webapp.outbox import valid_event_name


@pytest.mark.parametrize("alert", list(Alert))
def test_every_alert_name_is_a_valid_outbox_event(alert: Alert) -> None:
    assert valid_event_name(str(alert))
    assert str(alert).startswith("ops.")


def test_fields_are_clipped_and_never_empty(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        enqueue(
            conn,
            [Finding(Alert.LOG_NEW, resource="r" * 500, detail=""), Finding(Alert.PORT_NEW)],
            now=datetime(2026, 11, 28, 12, 0, tzinfo=UTC),
        )
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox).order_by(outbox.c.id)).all()
    assert [(r.event, r.actor, len(r.resource), r.detail, r.sent_at) for r in rows] == [
        ("ops.log_new", ACTOR, 200, "-", None),
        ("ops.port_new", ACTOR, 1, "-", None),
    ]
