"""Audit event names of key rotation and backups.

They belong in `webapp.events.Event` (one enum of names); that file is another team's, so they wait
here until the lead moves them (the names are final: the audit log stores them as text).
"""

from __future__ import annotations

from enum import StrEnum


class KeyEvent(StrEnum):
    VERSIONS_LISTED = "keys.versions_listed"
    REWRAPPED = "keys.rewrapped"
    REWRAP_FAILED = "keys.rewrap_failed"
    RETIRED = "keys.retired"
    RETIRE_REFUSED = "keys.retire_refused"
    BACKUP_CREATED = "backup.created"
    BACKUP_SENT = "backup.sent"
    BACKUP_FAILED = "backup.failed"
    BACKUP_VERIFY_FAILED = "backup.verify_failed"
