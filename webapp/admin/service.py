"""What the admin commands and the admin console do. Each function works inside the caller's unit of
work and records its own audit entries; refusals raise `AdminError` with a one-line reason that never
quotes a secret.

The console passes `reason` (the confirmed reason, webapp/auth/confirm.py), recorded in the audit
detail of the change, and `actor` (the admin's own username), so that nobody disables, demotes or
resets themselves. Nothing may leave the system without an active admin (`_keep_an_admin`).

One-time passwords (`one_time_password`): an admin never chooses or learns a working password. The
console's add and reset, and the CLI's reset by default, store a generated password with
`must_change_password` set; the login spends it and allows nothing but choosing a new one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import argon2
import sqlalchemy as sa

from webapp.auth import passwords
from webapp.auth.certs import SERVICE, CertInfo
from webapp.auth.sessions import end_sessions, sid_hash
from webapp.clock import to_db
from webapp.db.tables import PERSON_ROLES, SERVICE_ROLES, cert_bindings, password_history, sessions, users
from webapp.events import Event
from webapp.redact import PAN_REFUSAL, contains_pan, mask_pans
from webapp.unit import UnitOfWork

USERNAME_MAX = 64
# One-time passwords: 4 groups of 5 from 54 characters without look-alikes (0/O/o, 1/l/I): ~115 bits.
OTP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789"
OTP_GROUPS, OTP_GROUP_LEN = 4, 5
HANDLE_LEN = 12  # a session's handle on the console: the first hex digits of its id's SHA-256


class AdminError(Exception):
    """A refused admin action; the message is safe to print."""


@dataclass(frozen=True)
class AdminContext:
    uow: UnitOfWork
    hasher: argon2.PasswordHasher
    now: datetime
    min_score: int = 3


def _detail(detail: str, reason: str | None) -> str:
    """An audit detail with the change's confirmed reason, if any (the console's changes have one)."""
    if reason is None:
        return detail
    return f"{detail} reason={reason}" if detail != "-" else f"reason={reason}"


def _refuse(ctx: AdminContext, resource: str, detail: str, message: str) -> AdminError:
    ctx.uow.record(Event.ADMIN_REFUSED, ok=False, resource=resource, detail=detail)
    return AdminError(message)


def _not_yourself(ctx: AdminContext, user: sa.Row, actor: str | None, what: str, instead: str) -> None:
    if actor is not None and user.username == actor:
        raise _refuse(ctx, f"user:{user.id}", f"self:{what}", f"you cannot {what} yourself: {instead}")


def _keep_an_admin(ctx: AdminContext, user: sa.Row, what: str) -> None:
    """Refuse a change that would leave no active admin. The other admins' rows are read FOR UPDATE:
    two admins disabling each other at once cannot both pass (the second waits, then sees the first)."""
    if user.role != "admin" or not user.active:
        return
    others = ctx.uow.conn.execute(
        sa.select(users.c.id)
        .where(users.c.role == "admin", users.c.active.is_(True), users.c.id != user.id)
        .with_for_update()
    ).all()
    if not others:
        raise _refuse(
            ctx,
            f"user:{user.id}",
            "last_active_admin",
            f"{user.username} is the last active admin: {what} would lock every admin out "
            "(add or enable another admin first)",
        )


def one_time_password(ctx: AdminContext, username: str, recent: list[str] | None = None) -> str:
    """A random password that passes the policy, to be stored with must_change_password set and shown
    once. It never enters an audit record, a log, a URL, a mail or a flash message."""
    rng = secrets.SystemRandom()
    for _ in range(20):
        candidate = "-".join(
            "".join(rng.choice(OTP_ALPHABET) for _ in range(OTP_GROUP_LEN)) for _ in range(OTP_GROUPS)
        )
        result = passwords.check_policy(
            ctx.hasher, candidate, username=username, recent_hashes=recent or [], min_score=ctx.min_score
        )
        if result.ok:
            return candidate
    raise AdminError("could not generate a one-time password that passes the policy; nothing was changed")


def _recent_hashes(ctx: AdminContext, user_id: int) -> list[str]:
    return [
        r.password_hash
        for r in ctx.uow.conn.execute(
            sa.select(password_history.c.password_hash)
            .where(password_history.c.user_id == user_id)
            .order_by(password_history.c.id.desc())
            .limit(passwords.HISTORY)
        )
    ]


def _user(ctx: AdminContext, username: str, *, lock: bool = False) -> sa.Row:
    q = sa.select(users).where(users.c.username == username)
    row = ctx.uow.conn.execute(q.with_for_update() if lock else q).first()
    if row is None:
        ctx.uow.record(
            Event.ADMIN_REFUSED, ok=False, resource=f"username:{username[:64]}", detail="unknown_user"
        )
        raise AdminError(f"no such user: {mask_pans(username)}")
    return row


def check_username(name: str) -> None:
    """AdminError unless `name` is a valid new username (the message says the rule)."""
    _valid_username(name)


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


def _must_be_new(ctx: AdminContext, username: str) -> None:
    """Refuse (audited) a name already taken, by a person or a service."""
    if ctx.uow.conn.execute(sa.select(users.c.id).where(users.c.username == username)).first() is not None:
        ctx.uow.record(Event.USER_ADDED, ok=False, resource=f"username:{username}", detail="exists")
        raise AdminError(f"user already exists: {username}")


def _insert_user(
    ctx: AdminContext, username: str, role: str, password_hash: str, *, must_change_password: bool
) -> int:
    """The users row of a new, active, unlocked account; its id."""
    now = to_db(ctx.now)
    inserted = ctx.uow.conn.execute(
        sa.insert(users).values(
            username=username,
            role=role,
            password_hash=password_hash,
            active=True,
            failed_logins=0,
            locked_until=None,
            created_at=now,
            password_changed_at=now,
            must_change_password=must_change_password,
        )
    ).inserted_primary_key
    assert inserted is not None  # noqa: S101 - an INSERT always has one
    return int(inserted[0])


def add_user(
    ctx: AdminContext,
    username: str,
    role: str,
    password: str,
    *,
    one_time: bool = False,
    reason: str | None = None,
) -> int:
    """Add a user. `one_time`: `password` is a one-time password (the next login must change it)."""
    _valid_username(username)
    if role not in PERSON_ROLES:  # a service account has no password: add_service
        raise AdminError(f"role must be one of: {', '.join(PERSON_ROLES)}")
    _must_be_new(ctx, username)
    _check_password(ctx, password, username, [], f"username:{username}")
    hashed = ctx.hasher.hash(password)
    user_id = _insert_user(ctx, username, role, hashed, must_change_password=one_time)
    ctx.uow.conn.execute(
        sa.insert(password_history).values(user_id=user_id, password_hash=hashed, created_at=to_db(ctx.now))
    )
    ctx.uow.record(
        Event.USER_ADDED,
        ok=True,
        resource=f"user:{user_id}",
        detail=_detail(f"role={role} one_time={'yes' if one_time else 'no'}", reason),
    )
    return user_id


def add_service(ctx: AdminContext, name: str, role: str, *, reason: str | None = None) -> int:
    """Add a service account (the CRM): no password at all (it never logs in; its service
    certificate is its only credential, on the JSON API alone, docs/crm-api.md)."""
    _valid_username(name)
    if role not in SERVICE_ROLES:
        raise AdminError(f"service role must be one of: {', '.join(SERVICE_ROLES)}")
    _must_be_new(ctx, name)
    user_id = _insert_user(ctx, name, role, SERVICE_HASH, must_change_password=False)
    ctx.uow.record(
        Event.USER_ADDED,
        ok=True,
        resource=f"user:{user_id}",
        detail=_detail(f"role={role} service=yes", reason),
    )
    return user_id


# A service account's password hash: passwords.verify is False for it, for any password.
SERVICE_HASH = passwords.UNUSABLE_PREFIX + "service-account-no-password"


def reset_password(
    ctx: AdminContext,
    username: str,
    password: str | None = None,
    *,
    reason: str | None = None,
    actor: str | None = None,
) -> str | None:
    """Give the user a new password, clear a lockout and end their sessions.

    `password` None (the console, and the CLI by default): a generated one-time password, stored with
    must_change_password set and returned to be shown once. A given password (the CLI's
    --password-stdin, for scripts) is stored as a normal one and None is returned."""
    user = _user(ctx, username, lock=True)
    _not_yourself(ctx, user, actor, "reset the password of", "change your own on the My password page")
    if user.role in SERVICE_ROLES:
        ctx.uow.record(Event.PASSWORD_RESET, ok=False, resource=f"user:{user.id}", detail="service_account")
        raise AdminError(f"{username} is a service account: it has no password")
    conn = ctx.uow.conn
    recent = _recent_hashes(ctx, user.id)
    one_time = password is None
    chosen = one_time_password(ctx, username, recent) if password is None else password
    _check_password(ctx, chosen, username, recent, f"user:{user.id}")
    hashed = ctx.hasher.hash(chosen)
    now = to_db(ctx.now)
    conn.execute(
        sa.update(users)
        .where(users.c.id == user.id)
        .values(
            password_hash=hashed,
            password_changed_at=now,
            failed_logins=0,
            locked_until=None,
            must_change_password=one_time,
        )
    )
    conn.execute(sa.insert(password_history).values(user_id=user.id, password_hash=hashed, created_at=now))
    ended = end_sessions(conn, sessions.c.user_id == user.id, now=ctx.now, reason="password_reset")
    ctx.uow.record(
        Event.PASSWORD_RESET,
        ok=True,
        resource=f"user:{user.id}",
        detail=_detail(f"one_time={'yes' if one_time else 'no'} sessions_ended={ended}", reason),
    )
    return chosen if one_time else None


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


def set_active(
    ctx: AdminContext, username: str, *, active: bool, reason: str | None = None, actor: str | None = None
) -> int:
    user = _user(ctx, username, lock=True)
    if not active:
        _not_yourself(ctx, user, actor, "disable", "another admin must do it")
        _keep_an_admin(ctx, user, "disabling them")
    conn = ctx.uow.conn
    conn.execute(sa.update(users).where(users.c.id == user.id).values(active=active))
    ended = 0
    if not active:
        ended = end_sessions(conn, sessions.c.user_id == user.id, now=ctx.now, reason="user_disabled")
    event = Event.USER_ENABLED if active else Event.USER_DISABLED
    ctx.uow.record(
        event, ok=True, resource=f"user:{user.id}", detail=_detail(f"sessions_ended={ended}", reason)
    )
    return ended


def unlock(ctx: AdminContext, username: str, *, reason: str | None = None) -> None:
    user = _user(ctx, username, lock=True)
    ctx.uow.conn.execute(
        sa.update(users).where(users.c.id == user.id).values(failed_logins=0, locked_until=None)
    )
    ctx.uow.record(Event.USER_UNLOCKED, ok=True, resource=f"user:{user.id}", detail=_detail("-", reason))


def kill_sessions(
    ctx: AdminContext, username: str, *, reason: str | None = None, keep_sid_hash: str | None = None
) -> int:
    """End every session of the user; `keep_sid_hash`: except that one (an admin ending their own
    other sessions keeps the one they are using: ending it would undo the request itself)."""
    user = _user(ctx, username)
    where = sessions.c.user_id == user.id
    if keep_sid_hash is not None:
        where = sa.and_(where, sessions.c.id_hash != keep_sid_hash)
    ended = end_sessions(ctx.uow.conn, where, now=ctx.now, reason="killed")
    ctx.uow.record(
        Event.SESSIONS_KILLED,
        ok=True,
        resource=f"user:{user.id}",
        detail=_detail(f"sessions_ended={ended}", reason),
    )
    return ended


def change_role(
    ctx: AdminContext, username: str, role: str, *, reason: str | None = None, actor: str | None = None
) -> int:
    """Give the user another role; their sessions end (they log in again under the new role)."""
    if role not in PERSON_ROLES:
        raise AdminError(f"role must be one of: {', '.join(PERSON_ROLES)}")
    user = _user(ctx, username, lock=True)
    resource = f"user:{user.id}"
    if user.role in SERVICE_ROLES:  # a person is never made of a service account, nor the reverse
        ctx.uow.record(Event.USER_ROLE_CHANGED, ok=False, resource=resource, detail="service_account")
        raise AdminError(f"{username} is a service account: its role does not change")
    _not_yourself(ctx, user, actor, "change the role of", "another admin must do it")
    if user.role == role:
        ctx.uow.record(Event.USER_ROLE_CHANGED, ok=False, resource=resource, detail=f"unchanged role={role}")
        raise AdminError(f"{username} already has the role {role}")
    if role != "admin":
        _keep_an_admin(ctx, user, "taking their admin role")
    conn = ctx.uow.conn
    conn.execute(sa.update(users).where(users.c.id == user.id).values(role=role))
    ended = end_sessions(conn, sessions.c.user_id == user.id, now=ctx.now, reason="role_changed")
    ctx.uow.record(
        Event.USER_ROLE_CHANGED,
        ok=True,
        resource=resource,
        detail=_detail(f"role={user.role}->{role} sessions_ended={ended}", reason),
    )
    return ended


def session_handle(id_hash: str) -> str:
    """A live session's name on the console: never its whole id hash."""
    return id_hash[:HANDLE_LEN]


def end_session(
    ctx: AdminContext, handle: str, *, reason: str | None = None, current: str | None = None
) -> str:
    """End the one live session whose handle this is; the username it belonged to. `current`: the
    cookie id of the session doing this, which cannot end itself here (that is the Log out button)."""
    resource = f"session:{handle[:HANDLE_LEN]}"
    conn = ctx.uow.conn
    rows = conn.execute(
        sa.select(sessions.c.id_hash, sessions.c.user_id, users.c.username)
        .join(users, users.c.id == sessions.c.user_id)
        .where(sessions.c.id_hash.startswith(handle, autoescape=True), sessions.c.ended_at.is_(None))
        .with_for_update()
    ).all()
    if len(rows) != 1 or len(handle) != HANDLE_LEN:
        raise _refuse(ctx, resource, "unknown_session", "no such live session (it may have ended already)")
    row = rows[0]
    if current is not None and row.id_hash == sid_hash(current):
        raise _refuse(ctx, resource, "own_session", "that is the session you are using: log out instead")
    end_sessions(conn, sessions.c.id_hash == row.id_hash, now=ctx.now, reason="killed")
    ctx.uow.record(
        Event.SESSIONS_KILLED,
        ok=True,
        resource=f"user:{row.user_id}",
        detail=_detail(f"session={resource[8:]} sessions_ended=1", reason),
    )
    return str(row.username)


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
                users.c.must_change_password,
                users.c.last_login_at,
                users.c.last_login_ip,
            ).order_by(users.c.username)
        )
    )
    ctx.uow.record(Event.USERS_LISTED, ok=True, detail=f"count={len(rows)}")
    return rows


def bind_cert(ctx: AdminContext, username: str, cert: CertInfo, *, reason: str | None = None) -> None:
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
    # A service certificate only to a service account, a person's only to a person (webapp/api/).
    if (cert.kind == SERVICE) != (user.role in SERVICE_ROLES):
        ctx.uow.record(Event.CERT_BIND_REFUSED, ok=False, resource=resource, detail=f"kind={cert.kind}")
        raise AdminError(
            "a service certificate (python -m ca service) binds only to a service account, "
            "a person's certificate only to a person"
        )
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
        Event.CERT_BOUND,
        ok=True,
        resource=resource,
        detail=_detail(f"user:{user.id} serial={cert.serial}", reason),
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
    ctx.uow.record(
        Event.CERT_UNBOUND,
        ok=True,
        resource=resource,
        detail=_detail(f"user:{row.user_id} sessions_ended={ended}", reason[:140]),
    )
    return ended


def list_certs(ctx: AdminContext) -> list[sa.Row]:
    rows = list(ctx.uow.conn.execute(_BINDINGS.order_by(users.c.username, cert_bindings.c.id)))
    ctx.uow.record(Event.CERTS_LISTED, ok=True, detail=f"count={len(rows)}")
    return rows


_BINDINGS = sa.select(
    users.c.username,
    cert_bindings.c.user_id,
    cert_bindings.c.fingerprint,
    cert_bindings.c.serial,
    cert_bindings.c.subject,
    cert_bindings.c.not_after,
    cert_bindings.c.status,
    cert_bindings.c.bound_at,
    cert_bindings.c.ended_at,
).join(users, users.c.id == cert_bindings.c.user_id)


def active_bindings(conn: sa.Connection) -> dict[int, list[sa.Row]]:
    """user id -> their active bindings (the users page shows them; the caller audits its page)."""
    found: dict[int, list[sa.Row]] = {}
    for row in conn.execute(_BINDINGS.where(cert_bindings.c.status == "active").order_by(cert_bindings.c.id)):
        found.setdefault(row.user_id, []).append(row)
    return found


def username_of(conn: sa.Connection, user_id: int) -> str | None:
    return conn.execute(sa.select(users.c.username).where(users.c.id == user_id)).scalar()


def user_id_of(conn: sa.Connection, username: str) -> int | None:
    return conn.execute(sa.select(users.c.id).where(users.c.username == username)).scalar()


def role_of(conn: sa.Connection, user_id: int) -> str | None:
    return conn.execute(sa.select(users.c.role).where(users.c.id == user_id)).scalar()


def active_users(conn: sa.Connection) -> list[sa.Row]:
    return list(
        conn.execute(
            sa.select(users.c.id, users.c.username).where(users.c.active.is_(True)).order_by(users.c.username)
        )
    )


def binding(conn: sa.Connection, fingerprint: str) -> sa.Row | None:
    return conn.execute(_BINDINGS.where(cert_bindings.c.fingerprint == fingerprint)).first()


def refused(ctx: AdminContext, resource: str, detail: str) -> None:
    """Record a refusal the caller decided (ADMIN_REFUSED)."""
    ctx.uow.record(Event.ADMIN_REFUSED, ok=False, resource=resource[:200], detail=detail[:200])


def live_sessions(conn: sa.Connection, *, idle_after: datetime, born_after: datetime) -> list[sa.Row]:
    """Sessions of logged-in users that are not ended, idle too long or too old."""
    return list(
        conn.execute(
            sa.select(
                sessions.c.id_hash,
                sessions.c.user_id,
                sessions.c.ip,
                sessions.c.created_at,
                sessions.c.last_seen_at,
                users.c.username,
                users.c.role,
            )
            .join(users, users.c.id == sessions.c.user_id)
            .where(
                sessions.c.ended_at.is_(None),
                sessions.c.last_seen_at > to_db(idle_after),
                sessions.c.created_at > to_db(born_after),
            )
            .order_by(users.c.username, sessions.c.created_at)
        )
    )
