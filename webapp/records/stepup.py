"""Step-up for a single reveal: a one-time token issued with the reveal form, and the typed reason.

The token is random (256 bits), only its SHA-256 is stored, it names the user and the exact field it
was issued for, it expires after `STEPUP_TTL` seconds, and it is consumed by one conditional UPDATE
(`used_at IS NULL`): whichever request gets there first wins, a replay updates no row. It is
consumed before the password is checked, so each password attempt needs a fresh form (no reuse of a
previous step-up, no guessing loop on one token).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from datetime import datetime, timedelta

import sqlalchemy as sa

from webapp.auth import confirm
from webapp.clock import to_db
from webapp.records.errors import Refused
from webapp.records.tables import stepup_tokens

REASON_MIN, REASON_MAX = confirm.REASON_MIN, confirm.REASON_MAX
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def issue(conn: sa.Connection, *, user_id: int, target: str, now: datetime, ttl: int) -> str:
    token = secrets.token_urlsafe(32)
    conn.execute(
        sa.insert(stepup_tokens).values(
            id_hash=_hash(token),
            user_id=user_id,
            target=target,
            created_at=to_db(now),
            expires_at=to_db(now + timedelta(seconds=ttl)),
        )
    )
    return token


def consume(conn: sa.Connection, token: str, *, user_id: int, target: str, now: datetime) -> None:
    """Spend the token or raise Refused (unknown, another user's or field's, used, expired)."""
    if not _TOKEN.match(token):
        raise Refused("step-up token: malformed")
    spent = conn.execute(
        sa.update(stepup_tokens)
        .where(
            stepup_tokens.c.id_hash == _hash(token),
            stepup_tokens.c.user_id == user_id,
            stepup_tokens.c.target == target,
            stepup_tokens.c.used_at.is_(None),
            stepup_tokens.c.expires_at > to_db(now),
        )
        .values(used_at=to_db(now))
    ).rowcount
    if spent != 1:
        raise Refused("step-up token: already used, expired or not issued for this field")


def check_reason(raw: str) -> str:
    """The reveal's reason: the same rules as every confirmed change's (auth/confirm.py)."""
    try:
        return confirm.check_reason(raw)
    except confirm.BadReason as exc:
        raise Refused(f"reason: {exc}") from None


def purpose(reason: str) -> str:
    """keyd's `purpose` (ASCII `[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}`): `reveal:<tag>:<words>`.

    The tag (12 hex of SHA-256 of the full reason) is also in the audit record, so keyd's event and
    the audit record of one reveal can be matched even where the reason had to be shortened.
    """
    ascii_text = unicodedata.normalize("NFKD", reason).encode("ascii", "ignore").decode("ascii")
    words = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    head = f"reveal:{reason_tag(reason)}"
    return (f"{head}:{words}"[:64]).rstrip("-:") if words else head


def reason_tag(reason: str) -> str:
    return hashlib.sha256(reason.encode("utf-8")).hexdigest()[:12]
