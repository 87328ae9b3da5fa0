"""Login and step-up: the certificate names the user, the password must be that user's.

`authenticate` is the one password check, for the login and for every reveal's step-up alike: the
password (and PIN) read as the deployment's entry mode requires, verified under the same lockout.

After a successful login, `after_login` writes the last login and its origin and, when an admin's
reset left a one-time password (`must_change_password`), spends it at once: the stored hash becomes
unusable, so the password works exactly once, whatever happens next. `set_password` is the one way
an employee's own new password is stored (self-service and the forced change alike).

Lockout (PCI DSS 8.3.4): `LOCKOUT_THRESHOLD` consecutive failures lock the account for
`LOCKOUT_MINUTES`; attempts during the lock fail whatever the password. Counters live in the users
row, updated under its row lock, so every worker sees the same count.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta

import argon2
import sqlalchemy as sa
from flask_login import UserMixin

from webapp.auth import keypad, passwords
from webapp.clock import from_db, to_db
from webapp.config import LOGIN_ENTRIES
from webapp.db.tables import cert_bindings, password_history, users
from webapp.events import Event
from webapp.unit import UnitOfWork


@dataclass(frozen=True)
class User(UserMixin):
    id: int
    username: str
    role: str

    def get_id(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class Binding:
    binding_id: int
    user_id: int
    username: str
    role: str
    fingerprint: str


# Built once with a bound parameter: run on every request, building the statement cost more than running it.
_ACTIVE_BINDING = (
    sa.select(
        cert_bindings.c.id,
        cert_bindings.c.user_id,
        cert_bindings.c.not_after,
        users.c.username,
        users.c.role,
    )
    .join(users, users.c.id == cert_bindings.c.user_id)
    .where(
        cert_bindings.c.fingerprint == sa.bindparam("fingerprint"),
        cert_bindings.c.status == "active",
        users.c.active.is_(True),
    )
)


def active_binding(conn: sa.Connection, fingerprint: str | None, *, now: datetime) -> Binding | None:
    """The active binding of an active user for this exact certificate, or None."""
    if not fingerprint:
        return None
    row = conn.execute(_ACTIVE_BINDING, {"fingerprint": fingerprint}).first()
    if row is None or from_db(row.not_after) <= now:
        return None
    return Binding(row.id, row.user_id, row.username, row.role, fingerprint)


def load_user(conn: sa.Connection, user_id: str, fingerprint: str | None, *, now: datetime) -> User | None:
    """Flask-Login's user loader: the session's user, still active, still holding this certificate."""
    binding = active_binding(conn, fingerprint, now=now)
    if binding is None or str(binding.user_id) != user_id:
        return None
    return User(binding.user_id, binding.username, binding.role)


@dataclass(frozen=True)
class LoginPolicy:
    threshold: int
    lock_for: timedelta


KEYBOARD, KEYPAD, KEYPAD_PIN = LOGIN_ENTRIES


def keypad_for(mode: str) -> tuple[list[tuple[str, str]], dict[str, str] | None]:
    """The keypad a password page of this entry mode draws, as (token, character) pairs, and the
    layout to keep in the session until the answer comes back; none for the keyboard."""
    if mode == KEYBOARD:
        return [], None
    return keypad.new_layout(keypad.DIGITS if mode == KEYPAD_PIN else keypad.KEYS)


@dataclass(frozen=True)
class Entry:
    """What a password form sent, to be read as the deployment's entry mode (LOGIN_ENTRY) requires:
    "keyboard" (password typed), "keypad" (password clicked on the keypad) or "keypad-pin" (password
    typed, PIN clicked on a digit keypad)."""

    mode: str
    typed: str | None
    clicked: str
    layout: dict[str, str] | None  # the page's keypad layout, already taken out of the session

    def secrets(self) -> tuple[str | None, str | None]:
        """(password, PIN), None where it did not arrive as the mode requires.

        A secret sent the wrong way (typed where the keypad is required, or the reverse) counts as
        missing: a keylogger-resistant deployment must not quietly accept typed passwords.
        """
        if self.mode == KEYBOARD:
            return (self.typed, None) if not self.clicked else (None, None)
        decoded = keypad.decode(self.clicked, self.layout) if self.layout is not None else None
        if self.mode == KEYPAD:
            return (decoded, None) if self.typed is None else (None, None)
        return self.typed, decoded  # keypad-pin: password typed, PIN clicked

    @property
    def complete(self) -> bool:
        password, pin = self.secrets()
        return password is not None and (pin is not None or self.mode != KEYPAD_PIN)


@dataclass(frozen=True)
class Checked:
    user: User | None  # who passed; None: refused
    incomplete: bool = False  # the secrets did not arrive as the entry mode requires: nothing checked
    locked: bool = False  # the account is locked now (a step-up that locks it ends the session)


def authenticate(
    uow: UnitOfWork,
    hasher: argon2.PasswordHasher,
    *,
    binding: Binding,
    username: str,
    entry: Entry,
    now: datetime,
    policy: LoginPolicy,
    # A reveal's step-up records its own event names (same lockout counter), so the audit log does
    # not show a reveal as a login.
    success_event: Event = Event.LOGIN_SUCCESS,
    failure_event: Event = Event.LOGIN_FAILURE,
) -> Checked:
    """Check the password (and, in keypad-pin mode, the PIN) the employee entered, under the lockout.

    An incomplete entry is not an attempt: nothing is checked, counted or recorded (the caller says
    why it refused)."""
    password, pin = entry.secrets()
    if password is None or not entry.complete:
        return Checked(None, incomplete=True)
    user = _attempt(
        uow,
        hasher,
        binding=binding,
        username=username,
        password=password,
        now=now,
        policy=policy,
        pin=pin,
        require_pin=entry.mode == KEYPAD_PIN,
        success_event=success_event,
        failure_event=failure_event,
    )
    if user is not None:
        return Checked(user)
    locked_until = uow.conn.execute(
        sa.select(users.c.locked_until).where(users.c.id == binding.user_id)
    ).scalar()
    return Checked(None, locked=locked_until is not None and from_db(locked_until) > now)


def _attempt(
    uow: UnitOfWork,
    hasher: argon2.PasswordHasher,
    *,
    binding: Binding,
    username: str,
    password: str,
    now: datetime,
    policy: LoginPolicy,
    pin: str | None,
    require_pin: bool,
    success_event: Event,
    failure_event: Event,
) -> User | None:
    conn = uow.conn
    resource = f"user:{binding.user_id}"
    row = conn.execute(
        sa.select(
            users.c.username,
            users.c.password_hash,
            users.c.pin_hash,
            users.c.failed_logins,
            users.c.locked_until,
        )
        .where(users.c.id == binding.user_id)
        .with_for_update()
    ).one()
    # Verify even when the typed username is wrong, so the two failures cost the same time.
    password_ok = passwords.verify(hasher, row.password_hash, password)
    name_ok = hmac.compare_digest(username.encode("utf-8"), row.username.encode("utf-8"))
    pin_ok = True
    if require_pin:
        # A user without a PIN cannot log in where the deployment asks for one (fail closed).
        pin_ok = bool(row.pin_hash and pin and passwords.verify(hasher, row.pin_hash, pin))
    failed = row.failed_logins
    if row.locked_until is not None:
        if now < from_db(row.locked_until):
            uow.record(failure_event, ok=False, resource=resource, detail="locked", actor=binding.username)
            return None
        failed = 0  # the lock has run out: start counting afresh
    if not (password_ok and name_ok and pin_ok):
        failed += 1
        values: dict[str, object] = {"failed_logins": failed, "locked_until": None}
        if failed >= policy.threshold:
            values = {"failed_logins": 0, "locked_until": to_db(now + policy.lock_for)}
            uow.record(Event.ACCOUNT_LOCKED, ok=False, resource=resource, actor=binding.username)
        conn.execute(sa.update(users).where(users.c.id == binding.user_id).values(**values))
        if not name_ok:
            detail = "username_does_not_match_certificate"
        elif not password_ok:
            detail = "wrong_password"
        else:
            detail = "wrong_pin" if row.pin_hash else "no_pin_set"
        uow.record(failure_event, ok=False, resource=resource, detail=detail, actor=binding.username)
        return None
    values = {"failed_logins": 0, "locked_until": None}
    if hasher.check_needs_rehash(row.password_hash):
        # Parameters were raised since this hash was made: upgrade it while we hold the password.
        values["password_hash"] = hasher.hash(password)
    if require_pin and pin and hasher.check_needs_rehash(row.pin_hash):
        values["pin_hash"] = hasher.hash(pin)
    conn.execute(sa.update(users).where(users.c.id == binding.user_id).values(**values))
    uow.record(success_event, ok=True, resource=resource, actor=binding.username)
    return User(binding.user_id, binding.username, binding.role)


# What a spent one-time password's hash becomes: passwords.verify is False for it, for any password.
SPENT_HASH = passwords.UNUSABLE_PREFIX + "one-time-password-spent"


@dataclass(frozen=True)
class LoggedIn:
    must_change: bool  # the password just used was a one-time password (now spent)
    previous_at: datetime | None  # the login before this one, and where it came from
    previous_ip: str | None


def after_login(uow: UnitOfWork, user: User, *, now: datetime, ip: str) -> LoggedIn:
    """Record this login on the user's row (same transaction as the login's audit record) and spend a
    one-time password. Call it right after `authenticate` let the user in, before anything else."""
    conn = uow.conn
    row = conn.execute(
        sa.select(users.c.must_change_password, users.c.last_login_at, users.c.last_login_ip)
        .where(users.c.id == user.id)
        .with_for_update()
    ).one()
    values: dict[str, object] = {"last_login_at": to_db(now), "last_login_ip": ip[:45]}
    if row.must_change_password:
        values["password_hash"] = SPENT_HASH
        uow.record(Event.ONE_TIME_PASSWORD_SPENT, ok=True, resource=f"user:{user.id}", actor=user.username)
    conn.execute(sa.update(users).where(users.c.id == user.id).values(**values))
    previous = from_db(row.last_login_at) if row.last_login_at is not None else None
    return LoggedIn(bool(row.must_change_password), previous, row.last_login_ip)


def recent_hashes(conn: sa.Connection, user_id: int) -> list[str]:
    """The hashes a new password must not match: the current one and the last `HISTORY` stored."""
    current = conn.execute(sa.select(users.c.password_hash).where(users.c.id == user_id)).scalar_one()
    history = conn.execute(
        sa.select(password_history.c.password_hash)
        .where(password_history.c.user_id == user_id)
        .order_by(password_history.c.id.desc())
        .limit(passwords.HISTORY)
    ).scalars()
    return [current, *history]


def set_password(
    uow: UnitOfWork, hasher: argon2.PasswordHasher, user_id: int, password: str, *, now: datetime
) -> None:
    """Store an employee's own new password (already checked against the policy), with its history
    entry; a pending forced change is done with."""
    hashed = hasher.hash(password)
    uow.conn.execute(
        sa.update(users)
        .where(users.c.id == user_id)
        .values(password_hash=hashed, password_changed_at=to_db(now), must_change_password=False)
    )
    uow.conn.execute(
        sa.insert(password_history).values(user_id=user_id, password_hash=hashed, created_at=to_db(now))
    )
