"""Idempotency-Key: a retried POST gets the first call's response, and never stores a card twice.

Every POST of the API needs the header (1-64 characters of A-Z a-z 0-9 - _ . :). The first
successful call stores, in the same transaction as what it did, keyed hashes (HMAC-SHA256, a key
derived from SECRET_KEY) of "<service account id>:<key>" and of the request (route, path ids and the
canonical JSON body: a card number is never hashed unkeyed), and the response it got (status and
masked JSON). Then, for TTL (24 hours):
- the same key with the same request returns the stored response (header Idempotent-Replayed: true),
  does nothing else, and is audited as api.replayed;
- the same key with another request is refused (problem idempotency-key-reused), changing nothing;
- two calls with one key at once: the first to write wins; the other waits for it and is replayed
  (SQLite: the lookup takes the write lock) or is refused with idempotency-key-in-use (MariaDB:
  the second insert of the key fails at the first's commit), and its work is rolled back.
A refused call (any problem) stores nothing, its key included: a retry is checked again from scratch.
After TTL the key is free again (its row is reused in place).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import timedelta
from functools import wraps
from typing import Any

import sqlalchemy as sa
from flask import request
from flask.wrappers import Response

from webapp.api.body import body
from webapp.api.cursor import derived_key
from webapp.api.identity import service_identity
from webapp.api.problems import Problem
from webapp.api.tables import api_idempotency
from webapp.clock import from_db, to_db
from webapp.events import Event
from webapp.request import unit
from webapp.services import services

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
TTL_HOURS = 24
TTL = timedelta(hours=TTL_HOURS)
_KEY = re.compile(r"[A-Za-z0-9._:-]{1,64}")
JSON = "application/json"

Result = tuple[int, dict[str, Any]]


def _mac(purpose: str, text: str) -> str:
    return hmac.new(derived_key(purpose), text.encode("utf-8"), hashlib.sha256).hexdigest()


def _key() -> str:
    values = request.headers.getlist(HEADER)
    if not values:
        raise Problem("idempotency-key-missing", f"every POST needs an {HEADER} header")
    if len(values) > 1 or not _KEY.fullmatch(values[0]):
        raise Problem(
            "idempotency-key-invalid", f"{HEADER}: one value of 1-64 characters of A-Z a-z 0-9 - _ . :"
        )
    return values[0]


def json_response(status: int, text: str) -> Response:
    return Response(text, status=status, mimetype=JSON)


def idempotent(view: Callable[..., Result]) -> Callable[..., Response]:
    """For a POST view returning (status, JSON object): see the module's docstring."""

    @wraps(view)
    def run(*args: Any, **kwargs: Any) -> Response:
        key = _key()
        who = service_identity()
        key_hash = _mac("idempotency-key", f"{who.user_id}:{key}")
        canonical = json.dumps(
            [request.endpoint, request.view_args or {}, body()], sort_keys=True, separators=(",", ":")
        )
        request_hash = _mac("idempotency-request", canonical)
        uow = unit()
        conn, now = uow.conn, services().clock.now()
        # FOR UPDATE: on SQLite the write lock (a concurrent call with this key waits here, then
        # finds the first one's row); on MariaDB the row's lock when the row exists.
        row = conn.execute(
            sa.select(api_idempotency).where(api_idempotency.c.key_hash == key_hash).with_for_update()
        ).first()
        if row is not None and from_db(row.expires_at) > now:
            if row.user_id != who.user_id or not hmac.compare_digest(row.request_hash, request_hash):
                raise Problem(
                    "idempotency-key-reused",
                    f"this {HEADER} was used for another request in the last {TTL_HOURS} hours",
                    event=Event.API_IDEMPOTENCY_REFUSED,
                )
            uow.record(
                Event.API_REPLAYED, ok=True, resource=str(request.endpoint), detail=f"status={row.status}"
            )
            replay = json_response(row.status, row.response)
            replay.headers[REPLAYED] = "true"
            return replay
        status, payload = view(*args, **kwargs)
        text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        values = {
            "user_id": who.user_id,
            "request_hash": request_hash,
            "status": status,
            "response": text,
            "created_at": to_db(now),
            "expires_at": to_db(now + TTL),
        }
        try:
            if row is None:
                conn.execute(sa.insert(api_idempotency).values(key_hash=key_hash, **values))
            else:
                conn.execute(
                    sa.update(api_idempotency).where(api_idempotency.c.key_hash == key_hash).values(**values)
                )
        except sa.exc.IntegrityError:
            raise Problem(
                "idempotency-key-in-use",
                f"another request with this {HEADER} finished first: retry to get its response",
                event=Event.API_IDEMPOTENCY_REFUSED,
            ) from None
        return json_response(status, text)

    return run
