"""The admin console's fixtures: an admin (ada), a second admin (abe) where a test needs one, a
supervisor (sam), on top of the clerks and the auditor of tests/webapp/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.fixtures.pki import TestCA
from tests.webapp.conftest import Person, client_for, csrf_token, get, login, post

ADMIN_PASSWORDS = {
    "ada": "Saffron-Meadow-Lattice-7394",
    "abe": "Juniper-Canyon-Trellis-6158",
    "sam": "Marble-Kestrel-Violin-2846",
}
REASON = "ticket 4711: asked by the team lead"


def add_person(app: Flask, ca: TestCA, tmp_path: Path, name: str, role: str) -> Person:
    runner = app.test_cli_runner()
    password = ADMIN_PASSWORDS[name]
    result = runner.invoke(
        args=["users", "add", name, "--role", role, "--password-stdin"], input=password + "\n"
    )
    assert result.exit_code == 0, result.output
    issued = ca.issue(name)
    pem, _ = issued.write(tmp_path, name)
    result = runner.invoke(args=["certs", "bind", name, str(pem)])
    assert result.exit_code == 0, result.output
    return Person(name, password, issued)


@pytest.fixture
def admin(app: Flask, ca: TestCA, tmp_path: Path, people: dict[str, Person]) -> Person:
    """ada, an admin; `people` (alice, bob: clerks; audrey: auditor) exist too."""
    return add_person(app, ca, tmp_path, "ada", "admin")


@pytest.fixture
def supervisor(app: Flask, ca: TestCA, tmp_path: Path) -> Person:
    return add_person(app, ca, tmp_path, "sam", "supervisor")


def logged_in(app: Flask, person: Person, *, ip: str = "10.0.0.5") -> FlaskClient:
    client = client_for(app, person.cert, ip=ip)
    response = login(client, person.username, person.password)
    assert response.status_code == 302, response.status_code
    return client


@pytest.fixture
def ada(app: Flask, admin: Person) -> FlaskClient:
    """A logged-in admin's browser."""
    return logged_in(app, admin)


def confirm_post(
    client: FlaskClient,
    path: str,
    *,
    password: str | None = ADMIN_PASSWORDS["ada"],
    reason: str | None = REASON,
    **fields: Any,
) -> TestResponse:
    """GET the page that shows the form (its CSRF token and keypad layout), then POST it confirmed."""
    page = get(client, path)
    assert page.status_code == 200, (path, page.status_code)
    data: dict[str, Any] = {"csrf_token": csrf_token(page.text), **fields}
    if reason is not None:
        data["reason"] = reason
    if password is not None:
        data["confirm_typed"] = password
    return post(client, path, data=data)
