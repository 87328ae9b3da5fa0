"""Every audit and alert event has a name from this one enum: no free strings.

`ALERTS` are the events that also go to the outbox, which the mailer (webapp/mail) sends to the admins.
"""

from __future__ import annotations

from enum import StrEnum


class Event(StrEnum):
    # Authentication
    LOGIN_PAGE = "auth.login_page"
    LOGIN_SUCCESS = "auth.login_success"
    LOGIN_FAILURE = "auth.login_failure"
    LOGIN_OFF_HOURS = "auth.login_off_hours"
    LOGOUT = "auth.logout"
    ACCOUNT_LOCKED = "auth.account_locked"
    CERT_REFUSED = "auth.cert_refused"
    CERT_HEADER_UNTRUSTED = "auth.cert_header_untrusted"
    # An employee's own password change (self-service, or forced after an admin's reset)
    PASSWORD_CHANGED = "auth.password_changed"  # noqa: S105 - an event name
    PASSWORD_CHANGE_REFUSED = "auth.password_change_refused"  # noqa: S105 - an event name
    # A login used an admin's one-time password: it is spent (unusable) from that moment on.
    ONE_TIME_PASSWORD_SPENT = "auth.one_time_password_spent"  # noqa: S105 - an event name
    # A session that must choose a new password asked for another page: sent to the change page.
    PASSWORD_CHANGE_REQUIRED = "auth.password_change_required"  # noqa: S105 - an event name
    # Sessions
    SESSION_EXPIRED_IDLE = "session.expired_idle"
    SESSION_EXPIRED_ABSOLUTE = "session.expired_absolute"
    SESSION_IP_CHANGED = "session.ip_changed"
    SESSION_CERT_CHANGED = "session.cert_changed"
    SESSIONS_KILLED = "session.killed"
    # Requests
    PAGE_VIEW = "request.page_view"
    ACCESS_DENIED = "request.access_denied"
    NOT_FOUND = "request.not_found"
    INPUT_REFUSED = "request.input_refused"
    CSRF_REFUSED = "request.csrf_refused"
    # A well-formed form whose values break a rule (a typo): shown next to the field, audited, not
    # alerted. Hostile shapes (unknown parameters, tampering, injection) stay INPUT_REFUSED.
    FORM_INVALID = "request.form_invalid"
    # Failures
    ERROR_UNEXPECTED = "error.unexpected"
    VAULT_SEALED = "error.vault_sealed"
    VAULT_UNAVAILABLE = "error.vault_unavailable"
    DB_UNAVAILABLE = "error.db_unavailable"
    DB_WRITE_REFUSED = "error.db_write_refused"  # the database refused a write: disk full or read-only
    # Administration (flask --app webapp ..., and the admin console)
    ADMIN_REFUSED = "admin.refused"
    USER_ADDED = "admin.user_added"
    USER_DISABLED = "admin.user_disabled"
    USER_ENABLED = "admin.user_enabled"
    USER_UNLOCKED = "admin.user_unlocked"
    PASSWORD_RESET = "admin.password_reset"  # noqa: S105 - an event name
    PASSWORD_REFUSED = "admin.password_refused"  # noqa: S105 - an event name
    PIN_SET = "admin.pin_set"
    PIN_REFUSED = "admin.pin_refused"
    USERS_LISTED = "admin.users_listed"
    CERT_BOUND = "admin.cert_bound"
    CERT_BIND_REFUSED = "admin.cert_bind_refused"
    CERT_UNBOUND = "admin.cert_unbound"
    CERTS_LISTED = "admin.certs_listed"
    USER_ROLE_CHANGED = "admin.user_role_changed"
    BUDGET_LIFTED = "admin.budget_lifted"  # an employee's spent request budget reset, with a reason
    TEST_ALERT = "admin.test_alert"  # an admin's "send a test alert": mailed like any alert
    CONFIRM_REFUSED = "admin.confirm_refused"  # a console change not confirmed (reason or password)
    AUDIT_VIEWED = "audit.viewed"
    AUDIT_VERIFIED = "audit.verified"
    AUDIT_VERIFY_FAILED = "audit.verify_failed"
    AUDIT_EXPORTED = "audit.exported"  # a bounded CSV export of the audit log
    # Customer records and cards (webapp/records)
    RECORDS_LISTED = "records.listed"
    RECORD_VIEWED = "records.viewed"
    RECORD_ADDED = "records.added"
    RECORD_RETIRED = "records.retired"
    # RECORD_/CARD_/ITEM_REFUSED: what is not a typo (docs/alerts.md): a card number where none may be,
    # a security code sent, a change to a retired record. A typo in a records form is FORM_INVALID.
    RECORD_REFUSED = "records.refused"
    RECORDS_PURGED = "records.purged"  # cards and items retired past the retention, deleted (CLI)
    # Bulk import (webapp/records/bulk.py): one record per committed batch with its counts, never a value.
    IMPORT_STARTED = "records.import_started"
    IMPORT_BATCH = "records.import_batch"
    IMPORT_FINISHED = "records.import_finished"
    IMPORT_REFUSED = "records.import_refused"  # the whole file refused (no header, a security-code column)
    IMPORT_FAILED = "records.import_failed"  # keyd or the database failed a batch: rolled back, resumable
    CARD_ADDED = "card.added"
    CARD_REFUSED = "card.refused"
    # Reveal, step-up, items, edits (webapp/records): add members here
    CARD_VIEWED = "card.viewed"  # one card, masked
    CARD_EDITED = "card.edited"
    CARD_RETIRED = "card.retired"
    ITEM_VIEWED = "item.viewed"  # one item, masked
    ITEM_ADDED = "item.added"
    ITEM_EDITED = "item.edited"
    ITEM_RETIRED = "item.retired"
    ITEM_REFUSED = "item.refused"
    REVEAL_FORM = "reveal.form"  # a reveal form (and its one-time step-up token) was issued
    REVEALED = "reveal.done"  # a secret field was shown; the detail carries the employee's reason
    REVEAL_REFUSED = "reveal.refused"  # bad reason, bad or replayed step-up token, wrong password
    REVEAL_BUDGET_EXCEEDED = "reveal.budget_exceeded"  # keyd refused: a decrypt budget is spent
    REVEAL_INTEGRITY_FAILED = "reveal.integrity_failed"  # the stored ciphertext did not verify
    STEPUP_SUCCESS = "stepup.success"
    STEPUP_FAILURE = "stepup.failure"  # a wrong password at a reveal: counts toward the lockout

    # The JSON API (webapp/api/): a retried POST answered from its Idempotency-Key, and a key refused
    # (reused for another request, or still in use). Not alerts: a client's retry logic at work.
    API_REPLAYED = "api.replayed"
    API_IDEMPOTENCY_REFUSED = "api.idempotency_refused"

    # Request budgets and mail delivery (webapp/budgets, webapp/mail): add members here
    BUDGET_ALERT = "budget.alert"  # a request counter reached its alert threshold in this window
    BUDGET_LIMIT_REACHED = "budget.limit_reached"  # the first request over a hard limit
    BUDGET_REFUSED = "budget.refused"  # every request refused with 429 (audited, not mailed)
    MAIL_SENT = "mail.sent"
    MAIL_FAILED = "mail.failed"  # not an alert: it could not be mailed anyway; the audit log has it
    OUTBOX_PRUNED = "mail.outbox_pruned"  # sent outbox rows past their retention deleted
    # Key rotation (flask --app webapp keys) and backups (python -m backup). A failed rewrap or a refused
    # retire is in ALERTS (a rotation left half-done must not go unnoticed); backup failures are put in
    # the outbox by the backup tool itself (backup/alerts.py), which does not go through UnitOfWork.
    VERSIONS_LISTED = "keys.versions_listed"
    REWRAPPED = "keys.rewrapped"
    REWRAP_FAILED = "keys.rewrap_failed"
    RETIRED = "keys.retired"
    RETIRE_REFUSED = "keys.retire_refused"
    BACKUP_CREATED = "backup.created"
    BACKUP_SENT = "backup.sent"
    BACKUP_FAILED = "backup.failed"
    BACKUP_VERIFY_FAILED = "backup.verify_failed"
    BACKUP_RESTORED = "backup.restored"  # the first record a restored database gets
    # keyd's key-custody events (shares split, delivered, combined; re-keyed, rotated, retired), copied
    # from keyd's spool by the watchdog (ops/checks/keyd_events.py); the detail names the kind.
    KEYD_CUSTODY = "keyd.custody"


# Raised to the outbox (and so, later, mailed) in addition to being audited.
ALERTS: frozenset[Event] = frozenset(
    {
        Event.LOGIN_OFF_HOURS,
        Event.ACCOUNT_LOCKED,
        Event.CERT_REFUSED,
        Event.CERT_HEADER_UNTRUSTED,
        Event.SESSION_IP_CHANGED,
        Event.SESSION_CERT_CHANGED,
        Event.SESSIONS_KILLED,
        Event.INPUT_REFUSED,
        Event.CSRF_REFUSED,
        Event.ERROR_UNEXPECTED,
        Event.VAULT_SEALED,
        Event.VAULT_UNAVAILABLE,
        Event.DB_UNAVAILABLE,
        Event.DB_WRITE_REFUSED,
        Event.USER_ADDED,
        Event.USER_DISABLED,
        Event.USER_ENABLED,
        Event.USER_UNLOCKED,
        Event.PASSWORD_RESET,
        Event.PIN_SET,
        Event.CERT_BOUND,
        Event.CERT_UNBOUND,
        Event.USER_ROLE_CHANGED,
        Event.BUDGET_LIFTED,
        Event.TEST_ALERT,
        Event.AUDIT_VERIFY_FAILED,
        Event.RECORD_REFUSED,
        Event.CARD_REFUSED,
        Event.ITEM_REFUSED,
        Event.REVEAL_REFUSED,
        Event.REVEAL_BUDGET_EXCEEDED,
        Event.REVEAL_INTEGRITY_FAILED,
        Event.STEPUP_FAILURE,
        Event.BUDGET_ALERT,
        Event.BUDGET_LIMIT_REACHED,
        Event.REWRAP_FAILED,
        Event.IMPORT_REFUSED,
        Event.IMPORT_FAILED,
        Event.RETIRE_REFUSED,
    }
)
