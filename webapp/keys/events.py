"""Audit event names of key rotation and backups: members of the one enum, `webapp.events.Event`.

`KeyEvent` is kept as the name the keys and backup code use; it is the same enum.
"""

from __future__ import annotations

from webapp.events import Event

KeyEvent = Event
