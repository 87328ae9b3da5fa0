"""Time as an input: idle and absolute timeouts, lockout windows and working hours all ask a clock.

Production uses `SystemClock`; tests pass a `FakeClock` and move it instead of sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FakeClock:
    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("FakeClock needs a timezone-aware start time")
        self._now = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> None:
        self._now += delta

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise ValueError("FakeClock needs timezone-aware times")
        self._now = when.astimezone(UTC)


def to_db(when: datetime) -> datetime:
    """Aware UTC -> the naive UTC that the DATETIME columns hold."""
    return when.astimezone(UTC).replace(tzinfo=None)


def from_db(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC)


def audit_timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
