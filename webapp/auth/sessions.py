"""Server-side sessions in the database: nothing lives in a worker's memory.

The cookie holds a random 256-bit id; the table holds only its SHA-256, so reading the table does not
yield live sessions. A session is bound at creation to the client IP (configurable off) and to the
certificate fingerprint, and is refused once idle too long, too old, ended by logout, by an admin,
by disabling the user or by revoking the certificate. Login rotates the id (`rotate()`), so an id
planted before login (fixation) is dead afterwards.

A request reads its session without a lock, so the session can end while the request runs (logout in
another tab, an admin, a revocation). The session touch at the end of the request is in its write
phase and carries the check (UPDATE ... WHERE ended_at IS NULL): when it finds the session ended, the
request's writes are rolled back and its page is replaced by the way to the login, so nothing a
request does commits after its session ended. Idle and absolute expiry, the IP and the certificate
are decided at load: a concurrent request can only make the session more recently used, and the
rest never changes for a session id.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask, Request, current_app, g, request, session, url_for
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict
from werkzeug.wrappers import Response

from webapp.clock import from_db, to_db
from webapp.db.tables import sessions
from webapp.events import Event
from webapp.request import origin, unit
from webapp.services import services

_SID = re.compile(r"^[A-Za-z0-9_-]{43}$")
# The JSON API (webapp/api/) has no sessions: its requests neither read nor make one, nor get a cookie
# (a request carrying the session cookie is refused there).
API_PREFIX = "/api/"


# Built once: a statement built per request costs more CPU than SQLite takes to run it.
_LIVE = sa.select(sessions).where(
    sessions.c.id_hash == sa.bindparam("sid_hash"), sessions.c.ended_at.is_(None)
)
_TOUCH = (
    sa.update(sessions)
    .where(sessions.c.id_hash == sa.bindparam("sid_hash"), sessions.c.ended_at.is_(None))
    .values(last_seen_at=sa.bindparam("seen"), data=sa.bindparam("new_data"))
)


def seconds_left() -> int:
    """Seconds until this request's session meets its absolute timeout, for the idle warning
    (base.html's data-session-left): counted from the login, which no activity moves; a session
    that is being made by this request has the whole of it."""
    total = int(current_app.config["SESSION_ABSOLUTE_TIMEOUT"])
    started: datetime | None = getattr(session, "created_at", None)
    if started is None:
        return total
    spent = (services(current_app).clock.now() - started).total_seconds()
    return max(0, math.ceil(total - spent))  # rounded up: the page never announces the end early


def sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


class ServerSession(CallbackDict[str, Any], SessionMixin):
    def __init__(
        self,
        initial: dict[str, Any] | None = None,
        *,
        sid: str | None = None,
        created_at: datetime | None = None,
    ) -> None:
        def on_update(_self: CallbackDict[str, Any]) -> None:
            self.modified = True

        super().__init__(initial or {}, on_update)
        self.sid = sid
        self.created_at = created_at  # when this (logged-in) session began; None for a new one
        self.new = sid is None
        self.modified = False
        self.rotate_requested = False
        self.keep_age = False
        self.end_reason: str | None = None

    def rotate(self, *, keep_age: bool = False) -> None:
        """Crossing an authentication boundary: the next save ends this id and issues a new one.

        `keep_age`: the new id inherits this session's start, so the absolute timeout still counts
        from the login (a password change rotates the id; it must not lengthen the session)."""
        self.rotate_requested = True
        self.keep_age = keep_age
        self.modified = True

    def end(self, reason: str) -> None:
        self.clear()
        self.end_reason = reason
        self.modified = True


class DbSessionInterface(SessionInterface):
    def open_session(self, app: Flask, request: Request) -> ServerSession:
        # Errors here would bypass the request's failure handling (Flask calls this before
        # dispatch): remember them and let the first before_request hook raise them.
        try:
            return self._open(app, request)
        except sa.exc.SQLAlchemyError as exc:
            g.startup_error = exc
            return ServerSession()

    def _open(self, app: Flask, request: Request) -> ServerSession:
        if request.path.startswith(API_PREFIX):
            return ServerSession()
        sid = request.cookies.get(app.config["SESSION_COOKIE_NAME"], "")
        if not _SID.match(sid):
            return ServerSession()
        uow = unit()
        row = uow.conn.execute(_LIVE, {"sid_hash": sid_hash(sid)}).first()
        if row is None:
            return ServerSession()
        now = services(app).clock.now()
        who = origin()
        reason, event = None, None
        if now - from_db(row.last_seen_at) > timedelta(seconds=app.config["SESSION_IDLE_TIMEOUT"]):
            reason, event = "idle", Event.SESSION_EXPIRED_IDLE
        elif now - from_db(row.created_at) > timedelta(seconds=app.config["SESSION_ABSOLUTE_TIMEOUT"]):
            reason, event = "absolute", Event.SESSION_EXPIRED_ABSOLUTE
        elif row.cert_fingerprint != who.fingerprint:
            reason, event = "cert_changed", Event.SESSION_CERT_CHANGED
        elif app.config["SESSION_BIND_IP"] and row.ip != who.ip:
            reason, event = "ip_changed", Event.SESSION_IP_CHANGED
        if reason is not None and event is not None:
            end_sessions(uow.conn, sessions.c.id_hash == row.id_hash, now=now, reason=reason)
            if row.user_id is not None:
                uow.record(event, ok=False, resource=f"user:{row.user_id}", detail=reason)
            return ServerSession()
        try:
            data = json.loads(row.data)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return ServerSession()
        g.session_mark = uow.mark()  # what is recorded after this is the request's own doing
        return ServerSession(data, sid=sid, created_at=from_db(row.created_at))

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)  # noqa: S101 - open_session only makes these
        if request.path.startswith(API_PREFIX):
            return  # no session, no cookie, ever
        if request.endpoint == "static" and not session.modified:
            return  # fetching a stylesheet is not activity: it must not extend the idle timeout
        name = app.config["SESSION_COOKIE_NAME"]
        now = services(app).clock.now()
        conn = unit().conn
        if session.sid is not None and (session.end_reason or session.rotate_requested):
            end_sessions(
                conn,
                sessions.c.id_hash == sid_hash(session.sid),
                now=now,
                reason=session.end_reason or "rotated",
            )
            if session.end_reason:
                response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")
                return
            session.sid = None
            if not session.keep_age:
                session.created_at = None
        if session.end_reason or (session.sid is None and not session):
            return  # nothing to keep: no row, no cookie
        data = json.dumps(dict(session), separators=(",", ":"), sort_keys=True)
        user_id = session.get("_user_id")
        if session.sid is None:
            session.sid = secrets.token_urlsafe(32)
            who = origin()
            conn.execute(
                sa.insert(sessions).values(
                    id_hash=sid_hash(session.sid),
                    user_id=int(user_id) if user_id is not None else None,
                    cert_fingerprint=who.fingerprint,
                    ip=who.ip,
                    created_at=to_db(session.created_at or now),
                    last_seen_at=to_db(now),
                    data=data,
                )
            )
        else:
            updated = conn.execute(
                _TOUCH, {"sid_hash": sid_hash(session.sid), "seen": to_db(now), "new_data": data}
            ).rowcount
            if updated != 1:
                # Ended meanwhile (admin kill, revocation): do not resurrect it, and keep nothing the
                # request did as this session's user.
                _ended_meanwhile(response)
                response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")
                return
        response.set_cookie(name, session.sid, path="/", secure=True, httponly=True, samesite="Strict")


def _ended_meanwhile(response: Response) -> None:
    uow = unit()
    uow.discard_writes(keep=g.get("session_mark", 0))
    uow.record(
        Event.ACCESS_DENIED, ok=False, resource=request.path[:200], detail="session_ended_during_request"
    )
    response.status_code = 302
    response.set_data(b"")
    response.headers["Location"] = url_for("auth.login")


def end_other_sessions(
    conn: sa.Connection, user_id: int, keep_sid: str | None, *, now: datetime, reason: str
) -> int:
    """End every live session of this user but the one whose id is `keep_sid` (the caller's own)."""
    where = sessions.c.user_id == user_id
    if keep_sid is not None:
        where = sa.and_(where, sessions.c.id_hash != sid_hash(keep_sid))
    return end_sessions(conn, where, now=now, reason=reason)


def end_sessions(conn: sa.Connection, where: Any, *, now: datetime, reason: str) -> int:
    return conn.execute(
        sa.update(sessions)
        .where(where, sessions.c.ended_at.is_(None))
        .values(ended_at=to_db(now), end_reason=reason[:32])
    ).rowcount
