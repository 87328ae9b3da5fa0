# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""A damaged stored value, revealed through the web app and the real keyd: every kind of damage is
the one integrity failure (keyd's IntegrityFailure), refused with the integrity page, audited,
alerted, the employee's session kept, and nothing else affected (the next card still reveals).

The keyd of this module runs at key version 2 with version 1 retired, so a value relabelled with the
retired version is a real case, not a made-up number. SQLite and MariaDB (db_url's parameters).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from tests.keyd.conftest import Keyd, unsealed_keyd
from tests.keyd.test_damage import DAMAGE
from tests.support import without_hex_ids
from tests.webapp.conftest import Person, get
from tests.webapp.helpers import audit_rows, events, live_sessions
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    SUPERVISOR_PASSWORD,
    add_card,
    add_item,
    add_record,
    logged_in,
    reveal,
    staff,
    vault,
)
from webapp.records.tables import cards, items

# A MariaDB card column holds at most 255 bytes (TINYBLOB): a value past the frame limit cannot even be
# stored there. The oversized damage goes into a note's column (BLOB), which can hold it.
WEB_DAMAGE = [d for d in DAMAGE if d[0] != "oversized-past-a-frame"]


@pytest.fixture(scope="module")
def keyd_running() -> Iterator[tuple[Keyd, bytes]]:
    """Overrides the shared fixture: key version 2, version 1 retired."""
    with unsealed_keyd() as running:
        running.keyd.cli("rotate")
        running.keyd.cli("retire", "--min-version", "2")
        yield running.keyd, running.key


def _keyd_integrity_events(keyd: Keyd) -> list[dict[str, object]]:
    return [e for e in keyd.events() if e["event"] == "integrity_failure"]


@pytest.mark.parametrize(("name", "damage", "reason"), WEB_DAMAGE, ids=[d[0] for d in WEB_DAMAGE])
def test_every_damage_is_an_integrity_failure_and_the_session_is_kept(
    app: Flask,
    staff: dict[str, Person],
    owner_engine: sa.Engine,
    keyd_running: tuple[Keyd, bytes],
    name: str,
    damage: Callable[[bytes], bytes],
    reason: str,
) -> None:
    keyd = keyd_running[0]
    clerk = logged_in(app, staff["clerk"])
    record_id = add_record(clerk)
    damaged_card = add_card(clerk, record_id)
    other_card = add_card(clerk, record_id, pan="5555 5555 5555 4444")
    note = add_item(clerk, record_id, "note", "the note stays readable")
    if name == "oversized":
        table, column, row_id, kind, field = items, items.c.value_ct, note, "note", "value"
    else:
        table, column, row_id, kind, field = cards, cards.c.pan_ct, damaged_card, "card", "pan"
    with owner_engine.begin() as conn:
        if name == "swapped-with-another-card":
            stored = conn.execute(sa.select(cards.c.pan_ct).where(cards.c.id == other_card)).scalar_one()
        elif name == "swapped-with-another-field":
            stored = conn.execute(sa.select(cards.c.name_ct).where(cards.c.id == damaged_card)).scalar_one()
        else:
            original = conn.execute(sa.select(column).where(table.c.id == row_id)).scalar_one()
            stored = damage(bytes(original))
        conn.execute(sa.update(table).where(table.c.id == row_id).values({column.name: stored}))

    sup = logged_in(app, staff["supervisor"])
    sessions_before = len(live_sessions(app))
    before = len(_keyd_integrity_events(keyd))
    url = f"/records/{record_id}/reveal/{kind}/{row_id}/{field}"
    r = reveal(sup, url, SUPERVISOR_PASSWORD)

    # The integrity page, not the generic safe mode.
    assert r.status_code == 500
    assert "integrity check" in r.text
    assert "4111" not in without_hex_ids(r.text)
    (refused,) = audit_rows(app, "reveal.integrity_failed")
    assert refused.actor == "sam"
    assert refused.resource == f"{kind}:{row_id}:{field}"
    assert "reveal.integrity_failed" in events(app)
    assert not audit_rows(app, "error.unexpected")
    assert "error.unexpected" not in events(app)
    assert not audit_rows(app, "reveal.done")
    # keyd recorded the refusal itself, with what was wrong.
    (event,) = _keyd_integrity_events(keyd)[before:]
    assert event["reasons"] == reason
    assert event["actor"] == "sam"

    # The session is kept: sam is still logged in and still reveals the undamaged values.
    assert len(live_sessions(app)) == sessions_before
    assert get(sup, f"/records/{record_id}").status_code == 200
    ok = reveal(sup, f"/records/{record_id}/reveal/card/{other_card}/pan", SUPERVISOR_PASSWORD)
    assert ok.status_code == 200, ok.text
    assert "5555 5555 5555 4444" in ok.text
    if name != "oversized":
        ok = reveal(sup, f"/records/{record_id}/reveal/note/{note}/value", SUPERVISOR_PASSWORD)
        assert ok.status_code == 200, ok.text
        assert "the note stays readable" in ok.text
    assert not audit_rows(app, "auth.logout")
