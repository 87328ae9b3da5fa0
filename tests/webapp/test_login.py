"""The role-free login matrix, and what a login does to the session."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.webapp.conftest import Person, client_for, get, login, post, csrf_token, session_cookie
from tests.fixtures.pki import TestCA


def test_right_everything_logs_in(app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(app, alice.cert)
    r = login(client, alice.username, alice.password)
    assert r.status_code == 302, r.text
    home = get(client, "/")
    assert home.status_code == 200
    assert "Welcome, alice" in home.text
