"""Decrypt budgets per employee and globally, per minute, hour and day, persistent and fail-closed.

Windows are fixed and aligned to the epoch (minute k covers [60k, 60k+60)): cheap to count and
simple to reason about, at the price that a burst straddling a boundary can reach twice a window's
limit within one window's length. The day budget bounds that burst.

Persistence without an fsync per decrypt: each counter keeps `used` in memory and a `reserved`
ceiling on disk. When a decrypt would pass `reserved`, keyd reserves another chunk (one atomic,
fsync'd write of budgets.json) *before* the plaintext leaves. After a crash or restart the reserved
values are loaded as used: an unclean stop counts as budget spent, never refunded, so a crash loop
can only shrink budgets. If the write fails, the decrypt is refused (the count stays spent).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from keyd.state import atomic_write_json, read_json

WINDOWS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
MAX_CHUNK = 1000


@dataclass(frozen=True)
class Limits:
    """Limits per window name; a window left out is not limited at that scope."""

    employee: dict[str, int]
    overall: dict[str, int]

    def __post_init__(self) -> None:
        for scope in (self.employee, self.overall):
            for window, limit in scope.items():
                if window not in WINDOWS or not isinstance(limit, int) or limit < 1:
                    raise ValueError(f"bad budget {window}={limit!r}")


@dataclass(frozen=True)
class Exceeded:
    scope: str  # "employee" or "global"
    window: str  # "minute", "hour", "day"
    limit: int
    first: bool  # the first refusal in this window: raise the event once, not per request


class BudgetWriteFailed(Exception):
    pass


def _chunk(limit: int) -> int:
    return max(1, min(MAX_CHUNK, limit // 20))


class _Counter:
    """One window of one scope: decrypts used in the current window and the reservation on disk."""

    __slots__ = (
        "chunk",
        "index",
        "limit",
        "name",
        "period",
        "refused",
        "reserved",
        "scope",
        "used",
        "window",
    )

    def __init__(self, scope: str, name: str, window: str, limit: int) -> None:
        self.scope = scope
        self.name = name
        self.window = window
        self.limit = limit
        self.period = WINDOWS[window]
        self.chunk = _chunk(limit)
        self.index = -1
        self.used = 0
        self.reserved = 0
        self.refused = False


MAX_TRACKED_ACTORS = 10_000


class Budgets:
    def __init__(
        self, limits: Limits, *, path: str | os.PathLike[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.limits = limits
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._global = [_Counter("global", "*", w, limit) for w, limit in limits.overall.items()]
        self._actors: dict[str, list[_Counter]] = {}
        self._load()

    def _counters(self, actor: str) -> list[_Counter]:
        counters = self._actors.get(actor)
        if counters is None:
            if len(self._actors) >= MAX_TRACKED_ACTORS:
                self._forget_idle()
            counters = [_Counter("employee", actor, w, limit) for w, limit in self.limits.employee.items()]
            counters += self._global
            self._actors[actor] = counters
        return counters

    def _forget_idle(self) -> None:
        # Only actors with nothing reserved in a current window may go; the others are evidence.
        now = self._clock()
        for actor, counters in list(self._actors.items()):
            if all(
                c.index != int(now // c.period) or not c.reserved for c in counters if c.scope == "employee"
            ):
                del self._actors[actor]

    def _load(self) -> None:
        try:
            rows = read_json(self.path)["reserved"]
        except FileNotFoundError:
            return
        now = self._clock()
        for scope, name, window, index, reserved in rows:
            counters = self._global if scope == "global" else self._counters(str(name))
            for c in counters:
                if c.scope == scope and c.window == window and int(index) == int(now // c.period):
                    # Crash or restart: what was reserved counts as spent.
                    c.index = int(index)
                    c.used = c.reserved = int(reserved)

    def charge(self, actor: str, n: int = 1) -> tuple[int, Exceeded | None]:
        """Count up to `n` decrypts for `actor`. Returns how many are granted and, if fewer than `n`,
        the window that refused the rest. Raises BudgetWriteFailed when the reservation cannot be
        written: the caller must refuse everything (the decrypts stay counted as spent).
        """
        with self._lock:
            now = self._clock()
            counters = self._counters(actor)
            granted = n
            worst: _Counter | None = None
            for c in counters:
                index = int(now // c.period)
                if c.index != index:
                    c.index, c.used, c.reserved, c.refused = index, 0, 0, False
                room = c.limit - c.used
                if room < granted:
                    granted = room
                    worst = c
            if granted > 0:
                dirty = False
                for c in counters:
                    c.used += granted
                    if c.used > c.reserved:
                        dirty = True
                if dirty:
                    # Top up every counter this decrypt touched, so one write covers the next chunk.
                    for c in counters:
                        c.reserved = max(c.reserved, min(c.limit, c.used + c.chunk - 1))
                    self._save()
            exceeded = None
            if worst is not None:
                exceeded = Exceeded(worst.scope, worst.window, worst.limit, not worst.refused)
                worst.refused = True
            return granted, exceeded

    def _save(self) -> None:
        rows = []
        seen: set[int] = set()
        now = self._clock()
        for counters in self._actors.values():
            for c in counters:
                if id(c) not in seen and c.reserved and c.index == int(now // c.period):
                    seen.add(id(c))
                    rows.append([c.scope, c.name, c.window, c.index, c.reserved])
        for c in self._global:
            if id(c) not in seen and c.reserved:
                rows.append([c.scope, c.name, c.window, c.index, c.reserved])
        try:
            atomic_write_json(self.path, {"reserved": sorted(rows)})
        except OSError as exc:
            raise BudgetWriteFailed(str(exc)) from exc

    def usage(self, actor: str) -> dict[str, int]:
        with self._lock:
            now = self._clock()
            return {
                f"{c.scope}_{c.window}": c.used if c.index == int(now // c.period) else 0
                for c in self._counters(actor)
            }
