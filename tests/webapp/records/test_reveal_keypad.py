# ruff: noqa: F811 - the shared fixtures are imported by name and then requested as arguments
"""Step-up in the keypad login modes: the reveal asks for the secret exactly as login does.

- keypad: the password is clicked on a fresh randomized keypad drawn with the reveal form; typing
  it is refused; the layout is single-use (the login page's layout, or a previous reveal's, spells
  nothing).
- keypad-pin: the password is typed and the PIN clicked on a fresh digit keypad; a wrong PIN is a
  failed step-up that counts toward the lockout.
"""

from __future__ import annotations

import html as h
import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.conftest import Person, client_for, csrf_token, get, post
from tests.webapp.helpers import audit_rows, user_row
from tests.webapp.records.support import (  # noqa: F401 - fixtures
    REASON,
    SUPERVISOR_PASSWORD,
    add_card,
    add_record,
    keyd_running,
    logged_in,
    staff,
    vault,
)

PIN = "482915"
_KEY = re.compile(r'data-token="([0-9a-f]{8})">([^<]+)</button>')
_STEPUP = re.compile(r'name="stepup"[^>]*value="([^"]+)"')


def _layout(page: str) -> dict[str, str]:
    return {h.unescape(char): token for token, char in _KEY.findall(page)}


def _spell(layout: dict[str, str], secret: str) -> str:
    return ".".join(layout[c] for c in secret)


def _login(app: Flask, person: Person, mode: str, pin: str = PIN) -> FlaskClient:
    client = client_for(app, person.cert)
    page = get(client, "/login").text
    data = {"csrf_token": csrf_token(page), "username": person.username}
    if mode == "keypad":
        data["keypad"] = _spell(_layout(page), person.password)
    else:
        data.update(password=person.password, keypad=_spell(_layout(page), pin))
    assert post(client, "/login", data=data).status_code == 302
    return client


def _form(client: FlaskClient, url: str) -> tuple[str, str, dict[str, str]]:
    page = get(client, url)
    assert page.status_code == 200
    assert "keypad.js" in page.text
    m = _STEPUP.search(page.text)
    assert m
    return csrf_token(page.text), m.group(1), _layout(page.text)


@pytest.fixture
def seeded(app: Flask, staff: dict[str, Person]) -> str:
    clerk = logged_in(app, staff["clerk"])
    record_id = add_record(clerk)
    return f"/records/{record_id}/reveal/card/{add_card(clerk, record_id)}/pan"


def test_keypad_step_up(make_app: Callable[..., Flask], staff: dict[str, Person], seeded: str) -> None:
    app = make_app(LOGIN_ENTRY="keypad")
    sup = _login(app, staff["supervisor"], "keypad")
    csrf, token, layout = _form(sup, seeded)
    assert 'type="password"' not in get(sup, seeded).text
    # Typed instead of clicked: refused (a keylogger-resistant deployment never accepts typing).
    typed = post(
        sup,
        seeded,
        data={"csrf_token": csrf, "stepup": token, "reason": REASON, "stepup_typed": SUPERVISOR_PASSWORD},
    )
    assert typed.status_code == 400
    assert "password: required" in typed.text
    # A layout from an earlier form spells nothing on a new one.
    csrf, token, _fresh = _form(sup, seeded)
    stale = post(
        sup,
        seeded,
        data={
            "csrf_token": csrf,
            "stepup": token,
            "reason": REASON,
            "keypad": _spell(layout, SUPERVISOR_PASSWORD),
        },
    )
    assert stale.status_code == 400
    csrf, token, layout = _form(sup, seeded)
    r = post(
        sup,
        seeded,
        data={
            "csrf_token": csrf,
            "stepup": token,
            "reason": REASON,
            "keypad": _spell(layout, SUPERVISOR_PASSWORD),
        },
    )
    assert r.status_code == 200, r.text
    assert "4111 1111 1111 1111" in r.text
    assert len(audit_rows(app, "reveal.done")) == 1


def test_keypad_pin_step_up(make_app: Callable[..., Flask], staff: dict[str, Person], seeded: str) -> None:
    app = make_app(LOGIN_ENTRY="keypad-pin")
    result = app.test_cli_runner().invoke(args=["users", "set-pin", "sam", "--pin-stdin"], input=PIN + "\n")
    assert result.exit_code == 0, result.output
    sup = _login(app, staff["supervisor"], "keypad-pin")
    csrf, token, layout = _form(sup, seeded)
    assert set(layout) == set("0123456789")
    wrong = post(
        sup,
        seeded,
        data={
            "csrf_token": csrf,
            "stepup": token,
            "reason": REASON,
            "stepup_typed": SUPERVISOR_PASSWORD,
            "keypad": _spell(layout, "193847"),
        },
    )
    assert wrong.status_code == 403
    assert audit_rows(app, "stepup.failure")[-1].detail == "wrong_pin"
    assert user_row(app, "sam").failed_logins == 1
    csrf, token, layout = _form(sup, seeded)
    r = post(
        sup,
        seeded,
        data={
            "csrf_token": csrf,
            "stepup": token,
            "reason": REASON,
            "stepup_typed": SUPERVISOR_PASSWORD,
            "keypad": _spell(layout, PIN),
        },
    )
    assert r.status_code == 200, r.text
    assert user_row(app, "sam").failed_logins == 0
