"""What the admin commands do. Each function works inside the caller's unit of work and records its
own audit entries; refusals raise `AdminError` with a one-line reason that never quotes a secret."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import argon2
import sqlalchemy as sa

from webapp.auth import passwords
from webapp.auth.certs import CertInfo
from webapp.auth.sessions import end_sessions
from webapp.clock import to_db
from webapp.db.tables import ROLES, cert_bindings, password_history, sessions, users
from webapp.events import Event
from webapp.redact import PAN_REFUSAL, contains_pan, mask_pans
from webapp.unit import UnitOfWork

USERNAME_MAX = 64


class AdminError(Exception):
    """A refused admin action; the message is safe to print."""


@dataclass(frozen=True)
class AdminContext:
    uow: UnitOfWork
    hasher: argon2.PasswordHasher
    now: datetime
    min_score: int = 3


def _user(ctx: AdminContext, username: str, *, lock: bool = False) -> sa.Row:
    q = sa.select(users).where(users.c.username == username)
    row = ctx.uow.conn.execute(q.with_for_update() if lock else q).first()
    if row is None:
        ctx.uow.record(
            Event.ADMIN_REFUSED, ok=False, resource=f"username:{username[:64]}", detail="unknown_user"
        )
        raise AdminError(f"no such user: {mask_pans(username)}")
    return row


def _valid_username(name: str) -> None:
    # A username is written in clear into every audit record its owner causes.
    if contains_pan(name):
        raise AdminError(f"username: {PAN_REFUSAL}")
    # The first character is a letter or digit, as the CA requires: a name starting with '-' would
    # read as an option on a command line, and every user must be able to get a certificate.
    if (
        not (1 <= len(name) <= USERNAME_MAX)
        or not (name[0].isascii() and name[0].isalnum())
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    ):
        raise AdminError(
            "usernames are 1-64 characters of a-z, A-Z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit"
        )


def _check_password(
    ctx: AdminContext, password: str, username: str, recent: list[str], resource: str
) -> None:
    result = passwords.check_policy(
        ctx.hasher, password, username=username, recent_hashes=recent, min_score=ctx.min_score
    )
    if not result.ok:
        ctx.uow.record(Event.PASSWORD_REFUSED, ok=False, resource=resource, detail="policy")
        raise AdminError("password refused: it " + "; it ".join(result.reasons))


def add_user(ctx: AdminContext, username: str, role: str, password: str) -> int:
    _valid_username(username)
    if role not in ROLES:
        raise AdminError(f"role must be one of: {', '.join(ROLES)}")
    conn = ctx.uow.conn
    if conn.execute(sa.select(users.c.id).where(users.c.username == username)).first() is not None:
        ctx.uow.record(Event.USER_ADDED, ok=False, resource=f"username:{username}", detail="exists")
        raise AdminError(f"user already exists: {username}")
    _check_password(ctx, password, username, [], f"username:{username}")
    hashed = ctx.hasher.hash(password)
    now = to_db(ctx.now)
    inserted = conn.execute(
        sa.insert(users).values(
            username=username,
            role=role,
            password_hash=hashed,
            active=True,
            failed_logins=0,
            locked_until=None,
            created_at=now,
            password_changed_at=now,
        )
    ).inserted_primary_key
    assert inserted is not None  # noqa: S101 - an INSERT always has one
    user_id = inserted[0]
    conn.execute(sa.insert(password_history).values(user_id=user_id, password_hash=hashed, created_at=now))
    ctx.uow.record(Event.USER_ADDED, ok=True, resource=f"user:{user_id}", detail=f"role={role}")
    return int(user_id)


def reset_password(ctx: AdminContext, username: str, password: str) -> None:
    user = _user(ctx, username, lock=True)
    conn = ctx.uow.conn
    recent = [
        r.password_hash
        for r in conn.execute(
            sa.select(password_history.c.password_hash)
            .where(password_history.c.user_id == user.id)
            .order_by(password_history.c.id.desc())
            .limit(passwords.HISTORY)
        )
    ]
    _check_password(ctx, password, username, recent, f"user:{user.id}")
    hashed = ctx.hasher.hash(password)
    now = to_db(ctx.now)
    conn.execute(
        sa.update(users)
        .where(users.c.id == user.id)
        .values(password_hash=hashed, password_changed_at=now, failed_logins=0, locked_until=None)
    )
    conn.execute(sa.insert(password_history).values(user_id=user.id, password_hash=hashed, created_at=now))
    ended = end_sessions(conn, sessions.c.user_id == user.id, now=ctx.now, reason="password_reset")
    ctx.uow.record(
        Event.PASSWORD_RESET, ok=True, resource=f"user:{user.id}", detail=f"sessions_ended={ended}"
    )


def set_pin(ctx: AdminContext, username: str, pin: str) -> None:
    """The second PIN for keypad-pin deployments. Setting it ends the user's sessions, like a
    password reset: whoever knew the old one is out."""
    user = _user(ctx, username, lock=True)
    result = passwords.check_pin(pin)
    if not result.ok:
        ctx.uow.record(Event.PIN_REFUSED, ok=False, resource=f"user:{user.id}", detail="policy")
        raise AdminError("PIN refused: it " + "; it ".join(result.reasons))
    conn = ctx.uow.conn
    conn.execute(sa.update(users).where(users.c.id == user.id).values(pin_hash=ctx.hasher.hash(pin)))
    ended = end_sessions(conn, sessions.c.user_id == user.id, now=ctx.now, reason="pin_set")
    ctx.uow.record(Event.PIN_SET, ok=True, resource=f"user:{user.id}", detail=f"sessions_ended={ended}")


def set_active(ctx: AdminContext, username: str, *, active: bool) -> int:
    user = _user(ctx, username, lock=True)
    conn = ctx.uow.conn
    conn.execute(sa.update(users).where(users.c.id == user.id).values(active=active))
    ended = 0
    if not active:
        ended = end_sessions(conn, sessions.c.user_id == user.id, now=ctx.now, reason="user_disabled")
    event = Event.USER_ENABLED if active else Event.USER_DISABLED
    ctx.uow.record(event, ok=True, resource=f"user:{user.id}", detail=f"sessions_ended={ended}")
    return ended


def unlock(ctx: AdminContext, username: str) -> None:
    user = _user(ctx, username, lock=True)
    ctx.uow.conn.execute(
        sa.update(users).where(users.c.id == user.id).values(failed_logins=0, locked_until=None)
    )
    ctx.uow.record(Event.USER_UNLOCKED, ok=True, resource=f"user:{user.id}")


def kill_sessions(ctx: AdminContext, username: str) -> int:
    user = _user(ctx, username)
    ended = end_sessions(ctx.uow.conn, sessions.c.user_id == user.id, now=ctx.now, reason="killed")
    ctx.uow.record(
        Event.SESSIONS_KILLED, ok=True, resource=f"user:{user.id}", detail=f"sessions_ended={ended}"
    )
    return ended


def list_users(ctx: AdminContext) -> list[sa.Row]:
    rows = list(
        ctx.uow.conn.execute(
            sa.select(
                users.c.id,
                users.c.username,
                users.c.role,
                users.c.active,
                users.c.failed_logins,
                users.c.locked_until,
                users.c.password_changed_at,
            ).order_by(users.c.username)
        )
    )
    ctx.uow.record(Event.USERS_LISTED, ok=True, detail=f"count={len(rows)}")
    return rows


def bind_cert(ctx: AdminContext, username: str, cert: CertInfo) -> None:
    conn = ctx.uow.conn
    resource = f"cert:{cert.fingerprint}"
    user = conn.execute(sa.select(users).where(users.c.username == username).with_for_update()).first()
    if user is None:
        ctx.uow.record(Event.CERT_BIND_REFUSED, ok=False, resource=resource, detail="unknown_user")
        raise AdminError(f"no such user: {mask_pans(username)}")
    if conn.execute(
        sa.select(cert_bindings.c.id).where(cert_bindings.c.fingerprint == cert.fingerprint)
    ).first():
        ctx.uow.record(Event.CERT_BIND_REFUSED, ok=False, resource=resource, detail="already_bound")
        raise AdminError("certificate already bound (fingerprints are never reused)")
    if cert.not_after <= ctx.now:
        ctx.uow.record(Event.CERT_BIND_REFUSED, ok=False, resource=resource, detail="expired")
        raise AdminError("certificate has expired")
    now = to_db(ctx.now)
    # One active certificate per user: the previous one stops working, and so do its sessions.
    previous = conn.execute(
        sa.select(cert_bindings.c.fingerprint).where(
            cert_bindings.c.user_id == user.id, cert_bindings.c.status == "active"
        )
    ).all()
    for prev in previous:
        conn.execute(
            sa.update(cert_bindings)
            .where(cert_bindings.c.fingerprint == prev.fingerprint)
            .values(status="replaced", ended_at=now, end_reason="replaced by a new binding")
        )
        end_sessions(
            conn, sessions.c.cert_fingerprint == prev.fingerprint, now=ctx.now, reason="cert_replaced"
        )
    conn.execute(
        sa.insert(cert_bindings).values(
            user_id=user.id,
            fingerprint=cert.fingerprint,
            serial=cert.serial,
            subject=cert.subject,
            not_after=to_db(cert.not_after),
            status="active",
            bound_at=now,
        )
    )
    ctx.uow.record(
        Event.CERT_BOUND, ok=True, resource=resource, detail=f"user:{user.id} serial={cert.serial}"
    )


def unbind_cert(ctx: AdminContext, fingerprint: str, reason: str) -> int:
    conn = ctx.uow.conn
    fingerprint = fingerprint.strip().lower().replace(":", "")
    resource = f"cert:{fingerprint[:64]}"
    if contains_pan(reason):  # stored in clear with the binding
        ctx.uow.record(Event.CERT_UNBOUND, ok=False, resource=resource, detail="reason_holds_card_number")
        raise AdminError(f"reason: {PAN_REFUSAL}")
    row = conn.execute(
        sa.select(cert_bindings).where(cert_bindings.c.fingerprint == fingerprint).with_for_update()
    ).first()
    if row is None:
        ctx.uow.record(Event.CERT_UNBOUND, ok=False, resource=resource, detail="unknown_fingerprint")
        raise AdminError("no certificate with that fingerprint is bound")
    conn.execute(
        sa.update(cert_bindings)
        .where(cert_bindings.c.id == row.id)
        .values(status="revoked", ended_at=to_db(ctx.now), end_reason=reason[:200])
    )
    ended = end_sessions(conn, sessions.c.cert_fingerprint == fingerprint, now=ctx.now, reason="cert_revoked")
    ctx.uow.record(Event.CERT_UNBOUND, ok=True, resource=resource, detail=f"sessions_ended={ended}")
    return ended


def list_certs(ctx: AdminContext) -> list[sa.Row]:
    rows = list(
        ctx.uow.conn.execute(
            sa.select(
                users.c.username,
                cert_bindings.c.fingerprint,
                cert_bindings.c.serial,
                cert_bindings.c.subject,
                cert_bindings.c.not_after,
                cert_bindings.c.status,
            )
            .join(users, users.c.id == cert_bindings.c.user_id)
            .order_by(users.c.username, cert_bindings.c.id)
        )
    )
    ctx.uow.record(Event.CERTS_LISTED, ok=True, detail=f"count={len(rows)}")
    return rows
