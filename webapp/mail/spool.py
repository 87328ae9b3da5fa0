"""The alert spool: the path alerts take when the database (and so the outbox) cannot take them.

When a request fails because the database is down, read-only or full, its alert cannot be queued in
the outbox: it lives in that database. The web app's workers then write the alert here, a directory
on local disk (`STRONGROOM_ALERT_SPOOL`, default `<instance>/alert-spool`, mode 0700), and the mailer
sends what it finds directly over SMTP at the start of every pass, database or not, then deletes it.

- Coalesced: one file per event name, 10-minute window (the outbox's) and worker process, holding
  the count and the first and last times. A worker is its file's only writer (a lock covers its
  threads); every update is a new file renamed over the old one, so a reader sees a whole file.
- Bounded: at most MAX_FILES files of at most MAX_FILE_BYTES each; a new file beyond that is not
  written (the syslog copy and the other files still tell the admins the database is in trouble).
- No details: a file holds an event name (checked: dotted lowercase, no digits), a count and two
  times. The mail says what an outbox mail says: the name, the count, the times.
- A file the mailer cannot parse is mailed as "an unrecognised event" and removed: something was
  spooled, so the admins hear of it.
- A worker that read its file just before the mailer removed it writes the old count plus one:
  the next mail may count a few events twice, never fewer.
- Delivery: like the outbox, at least once. A crash between the server's 250 and the unlink sends
  the same mail again with the same Message-ID. These mails are not audited (the database may be
  the very thing that is down); the mailer's journal has a line per pass.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import atomic
from webapp.outbox import COALESCE_SECONDS, valid_event_name

MAX_FILES = 256
MAX_FILE_BYTES = 128
MAX_COUNT = 10**9
SUBDIR = "alert-spool"
UNRECOGNISED = "-"  # the event name given to a file that does not parse (texts.py: "an unrecognised event")
_NAME = re.compile(r"([a-z_.]{1,64})\.(\d{1,12})\.(\d{1,10})")
_BODY = re.compile(r"v1 (\d{1,10}) (\d{1,12}) (\d{1,12})\n")
_TMP = ".tmp-"  # the temporary files of older versions


class SpoolError(Exception):
    """The spool directory is unusable (not absolute, not a directory we own)."""


@dataclass
class Spooled:
    """The spooled alerts of one event name, as the mailer sends them."""

    event: str
    count: int
    first: datetime
    last: datetime
    files: list[Path] = field(default_factory=list)

    @property
    def identity(self) -> list[str]:
        """For the Message-ID: the same files with the same counts give the same mail."""
        return [*sorted(f.name for f in self.files), str(self.count)]


def spool_path(config: Mapping[str, Any], instance_path: str) -> Path:
    configured = config.get("ALERT_SPOOL")
    if configured is None:
        return Path(instance_path) / SUBDIR
    if not isinstance(configured, str) or not os.path.isabs(configured):
        raise SpoolError("STRONGROOM_ALERT_SPOOL must be an absolute path")
    return Path(configured)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _names(self) -> list[str]:
        try:
            # A file still being written is not there yet: the mailer must not mail and remove it.
            return [n for n in os.listdir(self.path) if not (n.startswith(_TMP) or atomic.is_temp(n))]
        except FileNotFoundError:
            return []

    def add(self, event: str, *, now: datetime) -> bool:
        """Count one alert; False when it could not be spooled (full, unusable). Never raises for
        a disk problem: the caller is already answering a failure."""
        if not valid_event_name(event):
            raise ValueError("event names are dotted lowercase words")
        stamp = int(now.astimezone(UTC).timestamp())
        window = stamp - stamp % COALESCE_SECONDS
        target = self.path / f"{event}.{window}.{os.getpid()}"
        with self._lock:
            try:
                os.makedirs(self.path, mode=0o700, exist_ok=True)
                count, first = 0, stamp
                with contextlib.suppress(FileNotFoundError):
                    parsed = _parse_body(target.read_bytes()[: MAX_FILE_BYTES + 1])
                    if parsed is not None:
                        count, first, _ = parsed
                if count == 0 and len(self._names()) >= MAX_FILES:
                    return False
                body = f"v1 {min(count + 1, MAX_COUNT)} {first} {stamp}\n".encode()
                atomic.write_bytes(target, body, mode=0o600)
                return True
            except OSError:
                return False

    def collect(self) -> list[Spooled]:
        """Everything spooled, one entry per event name, oldest name first."""
        found: dict[str, Spooled] = {}
        for name in sorted(self._names())[: MAX_FILES * 2]:
            path = self.path / name
            m = _NAME.fullmatch(name)
            parsed = None
            if m is not None and valid_event_name(m[1]):
                with contextlib.suppress(OSError):
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                    try:
                        parsed = _parse_body(os.read(fd, MAX_FILE_BYTES + 1))
                    finally:
                        os.close(fd)
            event = m[1] if m is not None and parsed is not None else UNRECOGNISED
            count, first, last = parsed if parsed is not None else (1, 0, 0)
            first_at = datetime.fromtimestamp(first, UTC)
            last_at = datetime.fromtimestamp(last, UTC)
            entry = found.get(event)
            if entry is None:
                found[event] = Spooled(event, count, first_at, last_at, [path])
            else:
                entry.count += count
                entry.first = min(entry.first, first_at)
                entry.last = max(entry.last, last_at)
                entry.files.append(path)
        return sorted(found.values(), key=lambda s: s.first)

    def remove(self, spooled: Spooled) -> None:
        for path in spooled.files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _parse_body(data: bytes) -> tuple[int, int, int] | None:
    if len(data) > MAX_FILE_BYTES:
        return None
    m = _BODY.fullmatch(data.decode("ascii", errors="replace"))
    if m is None:
        return None
    count, first, last = int(m[1]), int(m[2]), int(m[3])
    if not 1 <= count <= MAX_COUNT or first > last:
        return None
    return count, first, last
