"""Working hours: logins outside them (successful or not) raise an off-hours event."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time
from zoneinfo import ZoneInfo

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class WorkingHours:
    start: time
    end: time
    days: frozenset[int]  # 0 = Monday
    zone: ZoneInfo

    @classmethod
    def parse(cls, hours: str, days: str, zone: str) -> WorkingHours:
        """`09:00-18:00`, `mon-fri` (or `mon,wed,fri`), an IANA zone name. Bad config raises."""
        m = re.fullmatch(r"(\d\d):(\d\d)-(\d\d):(\d\d)", hours.strip())
        if not m:
            raise ValueError("WORKING_HOURS must look like 09:00-18:00")
        start = time(int(m[1]), int(m[2]))
        end = time(int(m[3]), int(m[4]))
        if not start < end:
            raise ValueError("WORKING_HOURS must start before it ends")
        picked: set[int] = set()
        for part in days.lower().replace(" ", "").split(","):
            first, _, last = part.partition("-")
            if first not in _DAYS or (last and last not in _DAYS):
                raise ValueError("WORKING_DAYS must look like mon-fri or mon,tue")
            a, b = _DAYS.index(first), _DAYS.index(last or first)
            picked.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
        return cls(start, end, frozenset(picked), ZoneInfo(zone))

    def contains(self, when: datetime) -> bool:
        local = when.astimezone(self.zone)
        return local.weekday() in self.days and self.start <= local.time() < self.end
