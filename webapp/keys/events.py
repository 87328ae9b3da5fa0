"""Audit event names of key rotation and backups: members of the one enum, `webapp.events.Event`.

`KeyEvent` is the name backup/ uses; it is the same enum (webapp's own code says `Event`).
"""

from __future__ import annotations

from webapp.events import Event

KeyEvent = Event
