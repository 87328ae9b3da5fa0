"""The keylogger-resistant entry mode: a randomized on-screen keypad, tokens instead of keys."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.conftest import Person, client_for, csrf_token, get, post
from webapp.auth import keypad

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
