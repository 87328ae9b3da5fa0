"""Reading a page's keypad and spelling a password on it, as the browser's keypad script does."""

from __future__ import annotations

import html
import re

_KEY = re.compile(r'data-token="([0-9a-f]{8})"[^>]*>([^<]+)</button>')


def layout(page: str) -> dict[str, str]:
    """character -> token, for the page's keypad layout (every pad of a page shares it)."""
    return {html.unescape(char): token for token, char in _KEY.findall(page)}


def spell(keys: dict[str, str], password: str) -> str:
    """What the keypad puts in its hidden field for this password."""
    return ".".join(keys[c] for c in password)
