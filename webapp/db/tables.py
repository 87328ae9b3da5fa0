"""The schema, in SQLAlchemy Core. Alembic migrations (db/migrations/) create exactly these tables.

Times are naive UTC datetimes with microseconds (DATETIME(6) on MariaDB), except in the audit log,
where the timestamp is the fixed-format UTC text that the hash chain covers: the hashed form and the
stored form are then the same bytes on every backend.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

# DATETIME without a precision truncates to seconds on MariaDB: idle timeouts would drift.
UtcDateTime = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

# People log in with a certificate and a password. A service account (role in SERVICE_ROLES: the CRM)
# has no password at all: only its service certificate, on the JSON API alone (webapp/api/, migration
# 0010); no person's role is ever a service role, and no service account ever gets a browser session.
PERSON_ROLES = ("admin", "auditor", "clerk", "supervisor")
SERVICE_ROLES = ("crm",)
ROLES = PERSON_ROLES + SERVICE_ROLES

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("username", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("password_hash", sa.String(255), nullable=False),
    # argon2id of the second PIN, for deployments with LOGIN_ENTRY = "keypad-pin".
    sa.Column("pin_hash", sa.String(255), nullable=True),
    sa.Column("active", sa.Boolean, nullable=False, default=True),
    # Lockout lives here, not in worker memory: every gunicorn worker sees the same count.
    sa.Column("failed_logins", sa.Integer, nullable=False, default=0),
    sa.Column("locked_until", UtcDateTime, nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("password_changed_at", UtcDateTime, nullable=False),
    # Set by an admin's reset (a one-time password): the next login spends the password and allows
    # nothing but choosing a new one (migration 0009).
    sa.Column("must_change_password", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
    sa.Column("last_login_at", UtcDateTime, nullable=True),
    sa.Column("last_login_ip", sa.String(45), nullable=True),
    sa.CheckConstraint("role IN ('admin', 'auditor', 'clerk', 'supervisor', 'crm')", name="role"),
)

# Previous password hashes (PCI DSS 8.3.7: no reuse of the last four).
password_history = sa.Table(
    "password_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

cert_bindings = sa.Table(
    "cert_bindings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
    # SHA-256 of the certificate's DER, lowercase hex: the only thing login matches on.
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("serial", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(512), nullable=False),
    sa.Column("not_after", UtcDateTime, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # active | replaced | revoked
    sa.Column("bound_at", UtcDateTime, nullable=False),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    sa.Column("end_reason", sa.String(200), nullable=True),
    sa.CheckConstraint("status IN ('active', 'replaced', 'revoked')", name="status"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    # SHA-256 of the cookie's 256-bit id: a read of this table does not hand out live sessions.
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=True, index=True),
    sa.Column("cert_fingerprint", sa.String(64), nullable=True, index=True),
    sa.Column("ip", sa.String(45), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("last_seen_at", UtcDateTime, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("ended_at", UtcDateTime, nullable=True),
    sa.Column("end_reason", sa.String(32), nullable=True),
)

# One row (id = 1): the head of the audit hash chain. Every audit insert locks it first
# (SELECT ... FOR UPDATE on MariaDB, BEGIN IMMEDIATE on SQLite), which serializes the chain.
audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Insert and select only: the production grants (db/grants.sql) refuse UPDATE and DELETE.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(27), nullable=False, index=True),  # 2026-11-28T11:20:00.000000Z
    sa.Column("actor", sa.String(64), nullable=False, index=True),
    sa.Column("event", sa.String(64), nullable=False, index=True),
    sa.Column("outcome", sa.String(8), nullable=False),  # success | failure
    sa.Column("ip", sa.String(45), nullable=False),
    sa.Column("cert_serial", sa.String(64), nullable=False),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("detail", sa.String(200), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Durable events for the alerting mailer (webapp/mail/, docs/alerts.md): written in the same
# transaction as the action that raised them, so an event exists exactly when its action happened.
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", UtcDateTime, nullable=False, index=True),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("ip", sa.String(45), nullable=False),
    sa.Column("resource", sa.String(200), nullable=False),
    sa.Column("detail", sa.String(200), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("sent_at", UtcDateTime, nullable=True, index=True),
    # Coalescing (webapp/outbox.py, migration 0008): events in this row, and the last one's time.
    sa.Column("n_events", sa.Integer, nullable=False, default=1, server_default="1"),
    sa.Column("last_at", UtcDateTime, nullable=True),
    # The class of the last delivery failure (e.g. "SMTPRecipientsRefused"), never its text.
    sa.Column("last_error", sa.String(64), nullable=True),
)
