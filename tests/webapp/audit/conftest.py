"""The audit pages' readers: the people of tests/webapp/conftest.py plus a supervisor and an admin,
each with their own certificate, and a logged-in client per role."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures.pki import TestCA
from tests.webapp.conftest import Person, client_for, login

STAFF = {"sam": ("supervisor", "Harbor-Juniper-Kestrel-7314"), "ada": ("admin", "Maple-Quarry-Lattice-9052")}
# Who plays each role in these tests.
ROLE_OF = {"clerk": "alice", "auditor": "audrey", "supervisor": "sam", "admin": "ada"}


@pytest.fixture
def staff(app: Flask, ca: TestCA, tmp_path: Path, people: dict[str, Person]) -> dict[str, Person]:
    found = dict(people)
    runner = app.test_cli_runner()
    for name, (role, password) in STAFF.items():
        result = runner.invoke(
            args=["users", "add", name, "--role", role, "--password-stdin"], input=password + "\n"
        )
        assert result.exit_code == 0, result.output
        issued = ca.issue(name)
        pem, _ = issued.write(tmp_path, name)
        result = runner.invoke(args=["certs", "bind", name, str(pem)])
        assert result.exit_code == 0, result.output
        found[name] = Person(name, password, issued)
    return found


@pytest.fixture
def as_role(app: Flask, staff: dict[str, Person]) -> Callable[[str], FlaskClient]:
    """A client logged in as the test's person for that role."""

    def make(role: str) -> FlaskClient:
        person = staff[ROLE_OF[role]]
        client = client_for(app, person.cert)
        assert login(client, person.username, person.password).status_code == 302
        return client

    return make
