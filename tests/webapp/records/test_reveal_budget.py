# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""keyd's decrypt budget applies to reveals: with `--budget employee.day=3` the third reveal works,
the fourth is refused at exactly the threshold with a clear 429 page, an audit record and an alert
event, and keyd raises its own budget_exceeded event. A fresh real keyd per test (budgets persist)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from flask import Flask

from keyd.client import KeydClient
from tests.keyd.conftest import GENEROUS, Keyd, make_keyd, raw_key, traversable_tmp
from tests.support import need_root, without_hex_ids
from tests.webapp.conftest import Person
from tests.webapp.fakes import FakeVault
from tests.webapp.helpers import audit_rows, events
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    REASON,
    SUPERVISOR_PASSWORD,
    add_card,
    add_record,
    logged_in,
    reveal,
    staff,
)
from webapp.records import stepup

LIMIT = 3


@pytest.fixture
def budget_keyd() -> Iterator[Keyd]:
    need_root()
    with traversable_tmp() as tmp:
        extra = [flag for flag in GENEROUS if "employee.day" not in flag] + [f"--budget=employee.day={LIMIT}"]
        k = make_keyd(tmp / "k", extra=extra)
        key = raw_key()
        k.init(key, "--key-kind", "raw")
        k.start()
        k.unseal(key)
        yield k
        if k.proc is not None:
            k.kill()


@pytest.fixture
def vault(budget_keyd: Keyd) -> Iterator[KeydClient]:
    client = KeydClient(budget_keyd.socket, timeout=5.0)
    yield client
    client.close()


def test_the_decrypt_budget_refuses_at_exactly_the_threshold(
    app: Flask, staff: dict[str, Person], budget_keyd: Keyd
) -> None:
    clerk = logged_in(app, staff["clerk"])
    record_id = add_record(clerk)
    card_id = add_card(clerk, record_id)
    sup = logged_in(app, staff["supervisor"])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    for _ in range(LIMIT):
        r = reveal(sup, url, SUPERVISOR_PASSWORD)
        assert r.status_code == 200, r.text
        assert "4111 1111 1111 1111" in r.text
    assert not audit_rows(app, "reveal.budget_exceeded")
    r = reveal(sup, url, SUPERVISOR_PASSWORD)
    assert r.status_code == 429
    assert "Reveal limit reached" in r.text
    assert "4111" not in without_hex_ids(r.text)
    assert r.headers["Cache-Control"] == "no-store"
    (refused,) = audit_rows(app, "reveal.budget_exceeded")
    assert (refused.actor, refused.outcome, refused.detail) == ("sam", "failure", "keyd:employee_day")
    assert "reveal.budget_exceeded" in events(app)
    assert len(audit_rows(app, "reveal.done")) == LIMIT
    assert "budget_exceeded" in budget_keyd.event_names()
    (kevent,) = [e for e in budget_keyd.events() if e["event"] == "budget_exceeded"]
    # The employee's reason reached keyd: its event names the same tag as the audit records.
    assert kevent["actor"] == "sam"
    assert kevent["purpose"] == stepup.purpose(REASON)
    assert f"tag={stepup.reason_tag(REASON)}" in audit_rows(app, "reveal.done")[0].detail


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_quota_exceeded_anywhere_else_is_the_same_clear_page(
    make_app: Callable[..., Flask], staff: dict[str, Person]
) -> None:
    """The net in webapp/failures.py for any other path that decrypts: 429, audited, an alert.
    The in-memory vault raises keyd's own exception (no route but reveal decrypts today)."""
    from keyd.errors import QuotaExceeded

    app = make_app()
    client = logged_in(app, staff["clerk"])
    spent = FakeVault()
    spent.error = QuotaExceeded("global_day")
    app.extensions["strongroom"].vault = spent
    r = client.get("/", base_url="https://vault.example")
    assert r.status_code == 429
    assert "Reveal limit reached" in r.text
    assert audit_rows(app, "reveal.budget_exceeded")
    assert "reveal.budget_exceeded" in events(app)
