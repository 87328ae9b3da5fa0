# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""Retired means no longer readable: a retired card or item, and anything in a retired record, is
never revealed again (not even with a step-up token issued before the retirement), its masked form
is still listed, and `records purge-retired` deletes it once the retirement is older than the
retention. Real keyd; SQLite and MariaDB."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.support import without_hex_ids
from tests.webapp.conftest import ROOT, Person, get, post
from tests.webapp.helpers import audit_rows
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    SUPERVISOR_PASSWORD,
    add_card,
    add_item,
    add_record,
    keyd_running,
    logged_in,
    reveal,
    reveal_form,
    staff,
    token_of,
    vault,
)
from webapp.clock import FakeClock
from webapp.config import ConfigError
from webapp.records.tables import cards, items, stepup_tokens


def _retire(client: FlaskClient, path: str) -> None:
    r = post(client, path + "/retire", data={"csrf_token": token_of(client)})
    assert r.status_code == 302, r.text


# (what is retired, the kind revealed, the path whose retire route retires it)
RETIRED = [
    ("card", "card", lambda rec, obj: f"/records/{rec}/cards/{obj}"),
    ("record-of-a-card", "card", lambda rec, obj: f"/records/{rec}"),
    ("note", "note", lambda rec, obj: f"/records/{rec}/note/{obj}"),
    ("record-of-a-note", "note", lambda rec, obj: f"/records/{rec}"),
]


@pytest.mark.parametrize(("what", "kind", "path"), RETIRED, ids=[r[0] for r in RETIRED])
def test_nothing_retired_is_revealed_not_even_with_an_earlier_step_up(
    app: Flask, staff: dict[str, Person], what: str, kind: str, path: Callable[[int, str], str]
) -> None:
    clerk = logged_in(app, staff["clerk"])
    record_id = add_record(clerk)
    obj = (
        add_card(clerk, record_id) if kind == "card" else add_item(clerk, record_id, "note", "a private note")
    )
    field = "pan" if kind == "card" else "value"
    url = f"/records/{record_id}/reveal/{kind}/{obj}/{field}"
    sup = logged_in(app, staff["supervisor"])
    early = reveal_form(sup, url)  # a step-up token issued while it was still active

    _retire(clerk, path(record_id, obj))

    r = reveal(sup, url, SUPERVISOR_PASSWORD, tokens=early)
    assert r.status_code == 403
    assert "is retired" in r.text
    assert "can no longer be revealed" in r.text
    assert "4111" not in without_hex_ids(r.text)
    assert "a private note" not in r.text
    assert not audit_rows(app, "reveal.done")
    assert not audit_rows(app, "stepup.success")  # refused before the password was even looked at
    refused = audit_rows(app, "reveal.refused")[-1]
    assert refused.resource == f"{kind}:{obj}:{field}"
    assert "retired" in refused.detail
    # A fresh form is refused as well, and issues no token.
    with app.extensions["strongroom"].engine.connect() as conn:
        tokens_before = conn.execute(sa.select(sa.func.count()).select_from(stepup_tokens)).scalar_one()
    form = get(sup, url)
    assert form.status_code == 403
    assert 'name="stepup"' not in form.text
    with app.extensions["strongroom"].engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(stepup_tokens)).scalar_one() == tokens_before
        )
    # The masked form is still listed, marked retired, and no reveal is offered for it.
    page = get(sup, f"/records/{record_id}")
    assert page.status_code == 200
    assert ("•••• 1111" if kind == "card" else "note, 14 characters") in page.text
    assert "(retired)" in page.text or "Retired" in page.text
    assert f"/reveal/{kind}/{obj}/" not in page.text
    detail = f"/records/{record_id}/cards/{obj}" if kind == "card" else f"/records/{record_id}/note/{obj}"
    assert f"/reveal/{kind}/{obj}/" not in get(sup, detail).text


def test_the_active_card_next_to_a_retired_one_still_reveals(app: Flask, staff: dict[str, Person]) -> None:
    clerk = logged_in(app, staff["clerk"])
    record_id = add_record(clerk)
    retired = add_card(clerk, record_id)
    active = add_card(clerk, record_id, pan="5555 5555 5555 4444")
    _retire(clerk, f"/records/{record_id}/cards/{retired}")
    sup = logged_in(app, staff["supervisor"])
    r = reveal(sup, f"/records/{record_id}/reveal/card/{active}/pan", SUPERVISOR_PASSWORD)
    assert r.status_code == 200, r.text
    assert "5555 5555 5555 4444" in r.text


def _purge(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["records", "purge-retired", *args])
    return result.exit_code, result.output


def _ids(app: Flask, table: sa.Table, column: sa.Column[str] | None = None) -> set[str]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return set(conn.execute(sa.select(table.c.id if column is None else column)).scalars())


# The purge user's grants, exactly as the install applies them (docs/webapp.md, "Retirement").
GRANTS_PURGE = ROOT / "webapp" / "db" / "grants-purge.sql"
PURGE_USER = "strongroom_purge"


@pytest.fixture
def purge_app(make_app: Callable[..., Flask], db_url: str, request: pytest.FixtureRequest) -> Flask:
    """The app; on MariaDB with the purge user of db/grants-purge.sql (the app's own user has no DELETE
    there), set up through the real client."""
    if db_url.startswith("sqlite"):
        return make_app(RETIRED_RETENTION_DAYS=30)
    backend = request.getfixturevalue("maria_backend")
    password = secrets.token_urlsafe(18)
    conn = backend.server.root(backend.database)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP USER IF EXISTS '{PURGE_USER}'@'localhost'")
            cur.execute(f"CREATE USER '{PURGE_USER}'@'localhost' IDENTIFIED BY %s", (password,))
    finally:
        conn.close()
    backend.server.client(backend.database, GRANTS_PURGE.read_text())
    return make_app(
        RETIRED_RETENTION_DAYS=30,
        PURGE_DATABASE_URL=backend.server.url("strongroom_purge", password, backend.database),
    )


def test_purge_deletes_only_what_was_retired_longer_ago_than_the_retention(
    purge_app: Flask, make_app: Callable[..., Flask], clock: FakeClock, ca: object, tmp_path: object
) -> None:
    from tests.webapp.records.support import add_person

    app = purge_app
    clerk_person = add_person(app, ca, tmp_path, "carl", "clerk", "Juniper-Falcon-Meadow-3194")  # type: ignore[arg-type]
    clerk = logged_in(app, clerk_person)
    a = add_record(clerk)
    b = add_record(clerk, "C7654321")
    active = add_card(clerk, a)
    retired_card = add_card(clerk, a, pan="5555 5555 5555 4444")
    retired_note = add_item(clerk, a, "note", "gone after retention")
    kept_note = add_item(clerk, a, "note", "still here")
    in_retired_record = add_card(clerk, b, pan="3782 822463 10005")
    _retire(clerk, f"/records/{a}/cards/{retired_card}")
    _retire(clerk, f"/records/{a}/note/{retired_note}")
    _retire(clerk, f"/records/{b}")

    clock.advance(timedelta(days=29, hours=23))
    assert _purge(app) == (0, "purged: cards=0 items=0 retention_days=30\n")
    clock.advance(timedelta(hours=2))
    assert _purge(app, "--dry-run") == (0, "would purge: cards=2 items=1 retention_days=30\n")
    assert _ids(app, cards) == {active, retired_card, in_retired_record}
    assert _purge(app) == (0, "purged: cards=2 items=1 retention_days=30\n")
    assert _ids(app, cards) == {active}
    assert _ids(app, items) == {kept_note}
    assert _purge(app) == (0, "purged: cards=0 items=0 retention_days=30\n")
    done = [r for r in audit_rows(app, "records.purged") if r.outcome == "success"]
    assert [r.detail for r in done] == [
        "cards=0 items=0 retention_days=30",
        "cards=2 items=1 retention_days=30 dry_run",
        "cards=2 items=1 retention_days=30",
        "cards=0 items=0 retention_days=30",
    ]
    assert all(r.actor.startswith("cli:") for r in done)


# MariaDB only: SQLite has no users, so there is no grant to withhold (never a skip: CI skips nothing).
@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
def test_purge_without_the_right_fails_closed_and_is_audited(
    make_app: Callable[..., Flask], db_url: str, clock: FakeClock, ca: object, tmp_path: object
) -> None:
    """On MariaDB the app's own user may not DELETE cards: without the purge user, nothing goes."""
    from tests.webapp.records.support import add_person

    app = make_app(RETIRED_RETENTION_DAYS=1)
    clerk = logged_in(app, add_person(app, ca, tmp_path, "carl", "clerk", "Juniper-Falcon-Meadow-3194"))  # type: ignore[arg-type]
    record_id = add_record(clerk)
    card_id = add_card(clerk, record_id)
    _retire(clerk, f"/records/{record_id}/cards/{card_id}")
    clock.advance(timedelta(days=2))
    code, output = _purge(app)
    assert code == 1
    assert "nothing was purged" in output
    assert _ids(app, cards) == {card_id}
    (failed,) = audit_rows(app, "records.purged")
    assert failed.outcome == "failure"


@pytest.mark.parametrize("days", [0, -1, 3651, "x"])
def test_a_bad_retention_stops_the_app(make_app: Callable[..., Flask], days: object) -> None:
    with pytest.raises(ConfigError, match="RETIRED_RETENTION_DAYS"):
        make_app(RETIRED_RETENTION_DAYS=days)
