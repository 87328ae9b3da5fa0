"""webapp/auth/service.py's password entry, shared by the login and every reveal's step-up: what
each entry mode accepts, one row per way of sending the secrets and what must come of it. The whole
flows are in test_login.py, test_keypad.py, test_reveal.py and test_reveal_keypad.py."""

from __future__ import annotations

import string

import pytest

from webapp.auth import keypad
from webapp.auth.service import Entry, keypad_for

PASSWORD, PIN = "Quartz-Lantern-4817", "2468"
_LAYOUT_PAIRS, LAYOUT = keypad.new_layout(keypad.KEYS)


def clicked(secret: str, layout: dict[str, str] = LAYOUT) -> str:
    token_of = {char: token for token, char in layout.items()}
    return ".".join(token_of[c] for c in secret)


# (mode, typed, clicked, layout, expected (password, PIN), complete)
ROWS = [
    ("keyboard", PASSWORD, "", None, (PASSWORD, None), True),
    ("keyboard", None, "", None, (None, None), False),
    # Clicked where the deployment asks for typing: missing, not quietly accepted.
    ("keyboard", PASSWORD, clicked(PASSWORD), LAYOUT, (None, None), False),
    ("keypad", None, clicked(PASSWORD), LAYOUT, (PASSWORD, None), True),
    # Typed where the keypad is required (a keylogger-resistant deployment): missing.
    ("keypad", PASSWORD, clicked(PASSWORD), LAYOUT, (None, None), False),
    ("keypad", None, clicked(PASSWORD), None, (None, None), False),  # no layout kept: page reused
    ("keypad", None, clicked(PASSWORD) + ".deadbeef", LAYOUT, (None, None), False),  # a foreign token
    ("keypad", None, "", LAYOUT, (None, None), False),
    ("keypad-pin", PASSWORD, clicked(PIN), LAYOUT, (PASSWORD, PIN), True),
    ("keypad-pin", PASSWORD, "", LAYOUT, (PASSWORD, None), False),  # the PIN is required
    ("keypad-pin", None, clicked(PIN), LAYOUT, (None, PIN), False),
]


@pytest.mark.parametrize(("mode", "typed", "sent", "layout", "expected", "complete"), ROWS)
def test_entry_reads_the_secrets_as_the_mode_requires(
    mode: str,
    typed: str | None,
    sent: str,
    layout: dict[str, str] | None,
    expected: tuple[str | None, str | None],
    complete: bool,
) -> None:
    entry = Entry(mode, typed=typed, clicked=sent, layout=layout)
    assert entry.secrets() == expected
    assert entry.complete is complete


def test_each_mode_draws_its_own_keypad() -> None:
    assert keypad_for("keyboard") == ([], None)
    pairs, layout = keypad_for("keypad")
    assert layout is not None
    assert sorted(layout.values()) == sorted(keypad.KEYS)
    assert dict(pairs) == layout
    _pairs, digits = keypad_for("keypad-pin")
    assert digits is not None
    assert sorted(digits.values()) == sorted(string.digits)
