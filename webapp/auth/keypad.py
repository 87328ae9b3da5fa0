"""The keylogger-resistant entry mode: the password is clicked on an on-screen keypad.

Each page load draws a fresh layout: the keys are shuffled and every key gets a fresh random token.
The browser submits tokens, not characters; the server maps them back with the layout it kept in the
(server-side) session and then forgets the layout. Recorded keystrokes, click positions or submitted
tokens are therefore worthless for any later login.
"""

from __future__ import annotations

import secrets
import string

KEYS = string.ascii_letters + string.digits + string.punctuation
TOKEN_HEX = 8


DIGITS = string.digits


def new_layout(alphabet: str = KEYS) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Shuffled (token, character) pairs to draw, and the token -> character map to keep."""
    keys = list(alphabet)
    secrets.SystemRandom().shuffle(keys)
    tokens: set[str] = set()
    while len(tokens) < len(keys):
        tokens.add(secrets.token_hex(TOKEN_HEX // 2))
    pairs = list(zip(sorted(tokens, key=lambda _: secrets.randbits(32)), keys, strict=True))
    return pairs, dict(pairs)


def decode(submitted: str, layout: dict[str, str]) -> str | None:
    """The password the tokens spell, or None if any token is not from this layout."""
    if not submitted:
        return None
    out = []
    for token in submitted.split("."):
        char = layout.get(token)
        if char is None:
            return None
        out.append(char)
    return "".join(out)
