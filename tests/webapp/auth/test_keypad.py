"""The keylogger-resistant entry mode: a randomized on-screen keypad, tokens instead of keys."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.conftest import Person, client_for, csrf_token, get, post
from tests.webapp.helpers import audit_rows, user_row
from webapp.auth import keypad
from webapp.events import Event

_KEY = re.compile(r'data-token="([0-9a-f]{8})">([^<]+)</button>')


def _layout(html: str) -> dict[str, str]:
    import html as h

    return {h.unescape(char): token for token, char in _KEY.findall(html)}


def _spell(layout: dict[str, str], password: str) -> str:
    return ".".join(layout[c] for c in password)


@pytest.fixture
def keypad_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(LOGIN_ENTRY="keypad")


def _page(client: FlaskClient) -> tuple[str, dict[str, str]]:
    page = get(client, "/login")
    assert page.status_code == 200
    assert "keypad.js" in page.text
    assert 'type="password"' not in page.text
    return page.text, _layout(page.text)


def test_keypad_login(keypad_app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(keypad_app, alice.cert)
    html, layout = _page(client)
    assert len(layout) == len(keypad.KEYS)
    r = post(
        client,
        "/login",
        data={"csrf_token": csrf_token(html), "username": "alice", "keypad": _spell(layout, alice.password)},
    )
    assert r.status_code == 302


def test_layout_changes_on_every_load(keypad_app: Flask, people: dict[str, Person]) -> None:
    client = client_for(keypad_app, people["alice"].cert)
    first_html, first = _page(client)
    second_html, second = _page(client)
    assert set(first.values()).isdisjoint(second.values())
    order = lambda html: [c for _, c in _KEY.findall(html)]  # noqa: E731
    assert order(first_html) != order(second_html)


def test_recorded_tokens_are_useless_later(keypad_app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(keypad_app, alice.cert)
    old_html, old = _page(client)
    recorded = _spell(old, alice.password)
    html, _ = _page(client)  # a later visit: new layout
    r = post(client, "/login", data={"csrf_token": csrf_token(html), "username": "alice", "keypad": recorded})
    assert r.status_code == 200
    assert "Login failed." in r.text
    del old_html


def test_typed_password_is_refused_in_keypad_mode(keypad_app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(keypad_app, alice.cert)
    html, _ = _page(client)
    r = post(
        client,
        "/login",
        data={"csrf_token": csrf_token(html), "username": "alice", "password": alice.password},
    )
    assert "Login failed." in r.text


def test_layout_is_single_use(keypad_app: Flask, people: dict[str, Person]) -> None:
    alice = people["alice"]
    client = client_for(keypad_app, alice.cert)
    html, layout = _page(client)
    data = {
        "csrf_token": csrf_token(html),
        "username": "alice",
        "keypad": _spell(layout, "Wrong-Password-1234"),
    }
    post(client, "/login", data=data)
    data["keypad"] = _spell(layout, alice.password)  # same layout, second try
    assert "Login failed." in post(client, "/login", data=data).text


def test_decode_refuses_foreign_tokens() -> None:
    _, layout = keypad.new_layout()
    assert keypad.decode("deadbeef.cafebabe", layout) is None
    assert keypad.decode("", layout) is None


PIN = "482915"


@pytest.fixture
def pin_app(make_app: Callable[..., Flask], people: dict[str, Person]) -> Flask:
    app = make_app(LOGIN_ENTRY="keypad-pin")
    result = app.test_cli_runner().invoke(args=["users", "set-pin", "alice", "--pin-stdin"], input=PIN + "\n")
    assert result.exit_code == 0, result.output
    return app


def _pin_login(app: Flask, person: Person, password: str, pin: str) -> str:
    client = client_for(app, person.cert)
    page = get(client, "/login")
    layout = _layout(page.text)
    assert sorted(layout) == list("0123456789")  # a digit keypad, shuffled
    assert 'type="password"' in page.text  # the password is typed; the PIN is clicked
    data = {"csrf_token": csrf_token(page.text), "username": person.username, "password": password}
    data["keypad"] = _spell(layout, pin)
    r = post(client, "/login", data=data)
    return "ok" if r.status_code == 302 else r.text


def test_keypad_pin_login(pin_app: Flask, people: dict[str, Person]) -> None:
    assert _pin_login(pin_app, people["alice"], people["alice"].password, PIN) == "ok"


@pytest.mark.parametrize(
    ("who", "password_ok", "pin", "detail"),
    [
        ("alice", True, "482916", "wrong_pin"),
        ("alice", False, PIN, "wrong_password"),
        ("bob", True, PIN, "no_pin_set"),  # no PIN set: cannot log in where one is required
    ],
)
def test_keypad_pin_failures(
    pin_app: Flask, people: dict[str, Person], who: str, password_ok: bool, pin: str, detail: str
) -> None:
    person = people[who]
    password = person.password if password_ok else "Wrong-Password-Attempt-99"
    assert "Login failed." in _pin_login(pin_app, person, password, pin)
    assert audit_rows(pin_app, Event.LOGIN_FAILURE)[-1].detail == detail
    assert user_row(pin_app, who).failed_logins == 1  # a wrong PIN counts toward the lockout


@pytest.mark.parametrize(
    ("pin", "reason"),
    [
        ("48291", "must be 6-12 digits"),
        ("4829150000000", "must be 6-12 digits"),
        ("48291a", "must be 6-12 digits"),
        ("４８２９１５", "must be 6-12 digits"),  # full-width digits are not ASCII digits
        ("111111", "at least 3 different digits"),
        ("121212", "at least 3 different digits"),
        ("123456", "consecutive digits"),
        ("890123", "consecutive digits"),
        ("654321", "consecutive digits"),
    ],
)
def test_pin_policy(app: Flask, people: dict[str, Person], pin: str, reason: str) -> None:
    result = app.test_cli_runner().invoke(args=["users", "set-pin", "alice", "--pin-stdin"], input=pin + "\n")
    assert result.exit_code == 1
    assert reason in result.stderr
    assert pin not in result.stderr
    assert user_row(app, "alice").pin_hash is None
