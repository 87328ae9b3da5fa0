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


Key = tuple[str, str, str, int]  # (scope, actor or "*", window, window index)


class BudgetWriteFailed(Exception):
    pass


def _chunk(limit: int) -> int:
    return max(1, min(MAX_CHUNK, limit // 20))


class Budgets:
    def __init__(
        self, limits: Limits, *, path: str | os.PathLike[str], clock: Callable[[], float] = time.time
    ) -> None:
        self.limits = limits
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._used: dict[Key, int] = {}
        self._reserved: dict[Key, int] = {}
        self._refused: set[Key] = set()
        self._load()

    def _load(self) -> None:
        try:
            rows = read_json(self.path)["reserved"]
        except FileNotFoundError:
            return
        now = self._clock()
        for scope, name, window, index, reserved in rows:
            key: Key = (str(scope), str(name), str(window), int(index))
            if window in WINDOWS and int(index) == int(now // WINDOWS[window]):
                # Crash or restart: what was reserved counts as spent.
                self._used[key] = self._reserved[key] = int(reserved)

    def _keys(self, actor: str, now: float) -> list[tuple[Key, int, str, str]]:
        out = []
        for scope, name, limits in (
            ("employee", actor, self.limits.employee),
            ("global", "*", self.limits.overall),
        ):
            for window, limit in limits.items():
                out.append(((scope, name, window, int(now // WINDOWS[window])), limit, scope, window))
        return out

    def charge(self, actor: str) -> Exceeded | None:
        """Count one decrypt for `actor`. None if allowed (and persisted), else the window that refused.

        Raises BudgetWriteFailed when the reservation cannot be written: the caller must refuse.
        """
        with self._lock:
            now = self._clock()
            keys = self._keys(actor, now)
            used = self._used
            for key, limit, scope, window in keys:
                if used.get(key, 0) >= limit:
                    first = key not in self._refused
                    self._refused.add(key)
                    return Exceeded(scope, window, limit, first)
            dirty = False
            for key, _, _, _ in keys:
                used[key] = used.get(key, 0) + 1
                if used[key] > self._reserved.get(key, 0):
                    dirty = True
            if dirty:
                # Top up every counter this decrypt touched, so one write covers the next chunk.
                for key, limit, _, _ in keys:
                    self._reserved[key] = max(
                        self._reserved.get(key, 0), min(limit, used[key] + _chunk(limit) - 1)
                    )
                self._prune(now)
                try:
                    atomic_write_json(
                        self.path,
                        {"reserved": [[*key, value] for key, value in sorted(self._reserved.items())]},
                    )
                except OSError as exc:
                    raise BudgetWriteFailed(str(exc)) from exc
            return None

    def _prune(self, now: float) -> None:
        for key in [k for k in self._reserved if k[3] != int(now // WINDOWS[k[2]])]:
            self._reserved.pop(key, None)
            self._used.pop(key, None)
            self._refused.discard(key)

    def usage(self, actor: str) -> dict[str, int]:
        with self._lock:
            now = self._clock()
            return {
                f"{scope}_{window}": self._used.get(key, 0)
                for key, _, scope, window in self._keys(actor, now)
            }
