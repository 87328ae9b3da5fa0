"""Pagination: a `limit` and an opaque cursor.

A cursor is the position after the last item of a page (its sort key), for one listing only, signed
with a key derived from SECRET_KEY: a client cannot forge one, nor carry one from a listing to
another. It carries no secret (ids and creation times the page showed anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

from flask import current_app

from webapp.api.problems import Problem

DEFAULT_LIMIT, MAX_LIMIT = 50, 100
MAX_CURSOR = 300
_MAC_LEN = 32  # hex digits of the HMAC kept (128 bits)


def derived_key(purpose: str) -> bytes:
    secret = str(current_app.config["SECRET_KEY"]).encode("utf-8")
    return hmac.new(secret, b"strongroom-api:" + purpose.encode("ascii"), hashlib.sha256).digest()


def _mac(payload: str) -> str:
    return hmac.new(derived_key("cursor"), payload.encode("utf-8"), hashlib.sha256).hexdigest()[:_MAC_LEN]


def encode(listing: str, position: list[Any]) -> str:
    payload = json.dumps([listing, *position], separators=(",", ":"))
    b64 = base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii").rstrip("=")
    return f"{b64}.{_mac(payload)}"


def decode(listing: str, cursor: str) -> list[Any]:
    """The position a cursor names, for this listing; Problem cursor-invalid otherwise."""
    invalid = Problem("cursor-invalid", "the cursor is not one this listing issued")
    if len(cursor) > MAX_CURSOR or cursor.count(".") != 1:
        raise invalid
    b64, mac = cursor.split(".")
    try:
        payload = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise invalid from None
    if not hmac.compare_digest(_mac(payload), mac):
        raise invalid
    data = json.loads(payload)
    if not isinstance(data, list) or not data or data[0] != listing:
        raise invalid
    return list(data[1:])


def limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if len(raw) > 3 or not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise Problem("input-refused", f"query: limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)
