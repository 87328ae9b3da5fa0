"""What an alert mail says: one fixed phrase per event name, nothing from the event's row.

The outbox row also holds actor, IP, resource and detail; none of it ever goes into a mail (mail
leaves the machine, crosses other servers and sits in inboxes). The admin reads the rest on the
server, in the audit log or the watchdog's own log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from webapp.events import Event
from webapp.outbox import valid_event_name

AUDIT = "check the audit log on the server"
SERVER = "check the server"

PHRASES: dict[str, str] = {
    Event.LOGIN_OFF_HOURS: "off-hours login",
    Event.ACCOUNT_LOCKED: "account locked after failed logins",
    Event.CERT_REFUSED: "client certificate refused",
    Event.CERT_HEADER_UNTRUSTED: "untrusted certificate header",
    Event.SESSION_IP_CHANGED: "session used from another IP address",
    Event.SESSION_CERT_CHANGED: "session used with another certificate",
    Event.SESSIONS_KILLED: "sessions ended by an administrator",
    Event.INPUT_REFUSED: "malformed request refused",
    Event.CSRF_REFUSED: "form without a valid security token refused",
    Event.ERROR_UNEXPECTED: "unexpected error (safe mode)",
    Event.VAULT_SEALED: "vault sealed",
    Event.VAULT_UNAVAILABLE: "key daemon unreachable",
    Event.DB_UNAVAILABLE: "database unavailable",
    Event.DB_WRITE_REFUSED: "DATABASE REFUSES WRITES (disk full or read-only)",
    Event.USER_ADDED: "user added",
    Event.USER_DISABLED: "user disabled",
    Event.USER_ENABLED: "user enabled",
    Event.USER_UNLOCKED: "user unlocked",
    Event.PASSWORD_RESET: "password reset",
    Event.PIN_SET: "PIN set",
    Event.CERT_BOUND: "client certificate bound to a user",
    Event.CERT_UNBOUND: "client certificate binding revoked",
    Event.USER_ROLE_CHANGED: "user role changed",
    Event.BUDGET_LIFTED: "an employee's budgets lifted",
    Event.TEST_ALERT: "test alert (sent from the admin console)",
    Event.AUDIT_VERIFY_FAILED: "AUDIT CHAIN VERIFICATION FAILED",
    Event.RECORD_REFUSED: "customer record request refused",
    Event.CARD_REFUSED: "card input refused",
    Event.BUDGET_ALERT: "request budget threshold reached",
    Event.BUDGET_LIMIT_REACHED: "request budget exhausted, requests refused",
    Event.REWRAP_FAILED: "key rotation rewrap failed",
    Event.RETIRE_REFUSED: "retiring an old key version refused",
    Event.BACKUP_FAILED: "BACKUP FAILED",
    Event.BACKUP_VERIFY_FAILED: "BACKUP FAILED TO VERIFY",
    # webapp/records' reveal events, by name (a name without a phrase gets the generic text).
    "item.refused": "sensitive item input refused",
    "reveal.refused": "card number reveal refused",
    "reveal.budget_exceeded": "reveal budget exhausted",
    "reveal.integrity_failed": "STORED CIPHERTEXT FAILED TO VERIFY",
    "stepup.failure": "wrong password at a reveal",
}


@dataclass(frozen=True)
class Notification:
    subject: str
    body: str


def _hhmm(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%H:%M")


def notification(event: str, *, count: int, first: datetime, last: datetime) -> Notification:
    """The mail for `count` events named `event`, the oldest at `first` (aware UTC)."""
    if event in PHRASES:
        what, where = PHRASES[event], AUDIT
    elif event.startswith("ops.") and valid_event_name(event):
        what, where = event, SERVER  # the watchdog's own names (ops/alerts.py)
    elif valid_event_name(event):
        what, where = event, AUDIT  # a web app event without a phrase yet
    else:
        what, where = "an unrecognised event", SERVER
    if count == 1:
        line = f"Strongroom: {what} at {_hhmm(first)} UTC, {where}"
        subject = f"Strongroom: {what}"
    else:
        line = f"Strongroom: {what}, {count} events since {_hhmm(first)} UTC, {where}"
        subject = f"Strongroom: {what} ({count} events)"
    stamp = "%Y-%m-%d %H:%M UTC"
    span = f"First event {first.astimezone(UTC):{stamp}}, last {last.astimezone(UTC):{stamp}}"
    body = (
        f"{line}.\n\n{span}.\nThis notification carries no details by design; they are on the server only.\n"
    )
    return Notification(subject=subject, body=body)
