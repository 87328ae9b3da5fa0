"""keyd's named events and the one interface they flow through.

The watchdog alerts from the JSON-lines spool (ops/checks/keyd_events.py); operators see the same events
in syslog. Events carry names, reasons, uids, actors and purposes, never plaintext, ciphertext, keys,
PINs or passphrases: `emit` only accepts str and int values, and callers pass identifiers only.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class Event(StrEnum):
    STARTED = "started"
    STOPPED = "stopped"
    UNSEALED = "unsealed"
    SEALED = "sealed"
    WRONG_KEY = "wrong_key"
    DROP_FILE_REFUSED = "drop_file_refused"
    DROP_FILE_NOT_DELETED = "drop_file_not_deleted"
    PEER_REFUSED = "peer_refused"
    ADMIN_REFUSED = "admin_refused"
    BUDGET_EXCEEDED = "budget_exceeded"
    INTEGRITY_FAILURE = "integrity_failure"
    RETIRED_VERSION_USED = "retired_version_used"
    ROTATED = "rotated"
    RETIRED = "retired"
    KEY_VERSION_EXHAUSTED = "key_version_exhausted"
    HARDENING_DEGRADED = "hardening_degraded"
    STATE_WRITE_FAILED = "state_write_failed"
    # Custodian shares (keyd/shares.py): the record of split knowledge, who did what and when.
    # A share's index and the deliverer's uid/login travel; a share's value never does.
    SHARES_SPLIT = "shares_split"  # init: the master was made and split (threshold, count, by whom)
    SHARE_ACKNOWLEDGED = "share_acknowledged"  # init: custodian NAME confirmed holding share INDEX
    SHARE_DELIVERED = "share_delivered"  # a valid share is held (index, uid, login, received)
    SHARES_COMBINED = "shares_combined"  # M shares combined in memory (then `unsealed` or `wrong_key`)
    SHARE_REFUSED = "share_refused"  # malformed, bad checksum or not one of this key's shares
    SHARE_DUPLICATE = "share_duplicate"  # an index already held was delivered again
    SHARE_TIMED_OUT = "share_timed_out"  # a held share waited past share_timeout and was discarded
    # Re-keying (keyd/keyring.py): who replaced the operator secret and when; never the secret.
    REKEYED = "rekeyed"  # a new secret generation and key version (generation, mode, uid, actor)
    REKEY_REFUSED = "rekey_refused"  # the new secret was refused before anything changed (reason)
    SECRET_RETIRED = "secret_retired"  # noqa: S105 - an event name: an old generation's secret dropped


# Events an operator must look at; the rest are informational.
ALERTS = frozenset(
    {
        Event.WRONG_KEY,
        Event.DROP_FILE_REFUSED,
        Event.DROP_FILE_NOT_DELETED,
        Event.PEER_REFUSED,
        Event.ADMIN_REFUSED,
        Event.BUDGET_EXCEEDED,
        Event.INTEGRITY_FAILURE,
        Event.RETIRED_VERSION_USED,
        Event.KEY_VERSION_EXHAUSTED,
        Event.HARDENING_DEGRADED,
        Event.STATE_WRITE_FAILED,
        Event.SHARE_REFUSED,
        Event.SHARE_DUPLICATE,
        Event.SHARE_TIMED_OUT,
    }
)

Value = str | int


class EventSink(Protocol):
    def emit(self, event: Event, **fields: Value) -> None: ...


def _clean(fields: dict[str, Value]) -> dict[str, Value]:
    # Belt and braces: only identifiers travel, and a hostile actor string cannot forge log lines.
    out: dict[str, Value] = {}
    for key, value in fields.items():
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise TypeError(f"event field {key!r} must be str or int")
        out[key] = value if isinstance(value, int) else value[:200].encode("ascii", "replace").decode()
    return out


class SyslogSink:
    """Events to syslog (/dev/log) when it exists, else to stderr through logging."""

    def __init__(self, *, address: str = "/dev/log", ident: str = "strongroom-keyd") -> None:
        self._log = logging.getLogger(f"{ident}.events")
        self._log.propagate = False
        self._log.setLevel(logging.INFO)
        handler: logging.Handler
        if Path(address).exists():
            handler = logging.handlers.SysLogHandler(
                address=address, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
            )
            handler.setFormatter(logging.Formatter(f"{ident}[%(process)d]: %(message)s"))
        else:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(f"%(asctime)s {ident}[%(process)d]: %(message)s"))
        for old in list(self._log.handlers):
            self._log.removeHandler(old)
            old.close()
        self._log.addHandler(handler)

    def emit(self, event: Event, **fields: Value) -> None:
        clean = _clean(fields)
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(clean.items()))
        level = logging.WARNING if event in ALERTS else logging.INFO
        self._log.log(level, "event=%s %s", event.value, text)


class SpoolSink:
    """Append-only JSON lines in keyd's state dir: what the watchdog/mailer will consume.

    One line per event, written with O_APPEND and fsync'd: events are rare (repeated refusals are
    coalesced by their producers), and a crash must not lose the evidence that came before it.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._clock = clock
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        self._fd = fd

    def emit(self, event: Event, **fields: Value) -> None:
        record = {"ts": round(self._clock(), 3), "event": event.value, **_clean(fields)}
        line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class FanoutSink:
    """Sends every event to each sink; a failing sink does not silence the others."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks
        self._log = logging.getLogger("keyd")

    def emit(self, event: Event, **fields: Value) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event, **fields)
            except OSError:
                self._log.exception("event sink %s failed for %s", type(sink).__name__, event.value)


class MemorySink:
    """A fake for tests: remembers what was emitted."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, dict[str, Value]]] = []

    def emit(self, event: Event, **fields: Value) -> None:
        self.events.append((event, _clean(fields)))

    def names(self) -> list[Event]:
        return [e for e, _ in self.events]
