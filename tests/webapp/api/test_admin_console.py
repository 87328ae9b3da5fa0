"""The admin console shows a service account as what it is: no password to reset, no role to change;
and refuses a password reset for one even when asked by hand."""

from __future__ import annotations

import re

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.admin.conftest import ada, admin, confirm_post  # noqa: F401 - fixtures
from tests.webapp.api.conftest import Service
from tests.webapp.conftest import get
from webapp.db.tables import users


def _crm_row(html: str) -> str:
    m = re.search(r'<th scope="row">crm</th>.*?</tr>', html, re.S)
    assert m, "the service account is not listed"
    return m.group(0)


def test_the_users_page_lists_the_service_without_password_actions(
    ada: FlaskClient,  # noqa: F811 - the imported fixture
    crm: Service,
) -> None:
    page = get(ada, "/admin/users")
    assert page.status_code == 200
    row = _crm_row(page.text)
    assert "service account" in row
    assert "Reset password" not in row
    assert "Change role" not in row
    assert "Disable" in row  # disabling it is how it is stopped


def test_a_hand_made_password_reset_of_a_service_is_refused(
    app: Flask,
    ada: FlaskClient,  # noqa: F811 - the imported fixture
    crm: Service,
) -> None:
    query = sa.select(users.c.id, users.c.password_hash).where(users.c.username == "crm")
    with app.extensions["strongroom"].engine.connect() as conn:
        row = conn.execute(query).one()
    r = confirm_post(ada, f"/admin/users/{row.id}/reset-password")
    assert r.status_code in (400, 403, 409)
    with app.extensions["strongroom"].engine.connect() as conn:
        after = conn.execute(sa.select(users.c.password_hash).where(users.c.id == row.id)).scalar_one()
    assert after == row.password_hash
    assert after.startswith("!")
