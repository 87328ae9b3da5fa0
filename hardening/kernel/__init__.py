"""Kernel and network hardening sysctls (the nearest thing to the design's grsecurity; docs/hardening.md).

`SYSCTL_FILE` is the shipped /etc/sysctl.d file; `parse(text)` reads such a file strictly; `check(settings)`
compares it with the running kernel (`python -m hardening.kernel check`), for the manual check after an
install and for the watchdog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SYSCTL_FILE = Path(__file__).with_name("99-strongroom-hardening.conf")
PROC_SYS = Path("/proc/sys")
MAX_LINES = 500
_KEY = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)+")
_VALUE = re.compile(r"-?\d+|\|/[A-Za-z0-9_/.-]+")  # numbers, or a core_pattern pipe to a program


class SysctlFileError(ValueError):
    """The sysctl file is malformed; the message names the line."""


@dataclass(frozen=True)
class Setting:
    key: str
    value: str
    optional: bool  # "-key = value": skipped where the running kernel does not have the key

    @property
    def path(self) -> Path:
        return PROC_SYS / self.key.replace(".", "/")


@dataclass(frozen=True)
class Mismatch:
    key: str
    wanted: str
    actual: str | None  # None: the kernel has no such key


def parse(text: str) -> list[Setting]:
    lines = text.splitlines()
    if len(lines) > MAX_LINES:
        raise SysctlFileError(f"more than {MAX_LINES} lines")
    settings: list[Setting] = []
    seen: set[str] = set()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        optional = key.startswith("-")
        key = key.removeprefix("-")
        if not sep or not _KEY.fullmatch(key):
            raise SysctlFileError(f"line {number}: expected 'key.name = value', got {line[:80]!r}")
        if not _VALUE.fullmatch(value):
            raise SysctlFileError(f"line {number}: {key}: {value[:80]!r} is not a number or a |/program")
        if key in seen:
            raise SysctlFileError(f"line {number}: {key} is set twice (the last one would silently win)")
        seen.add(key)
        settings.append(Setting(key, value, optional))
    return settings


def shipped() -> list[Setting]:
    return parse(SYSCTL_FILE.read_text(encoding="utf-8"))


def check(settings: Iterable[Setting]) -> list[Mismatch]:
    """What the running kernel does not have as the file says (optional keys it lacks are not listed)."""
    found: list[Mismatch] = []
    for setting in settings:
        try:
            actual = " ".join(setting.path.read_text(encoding="utf-8").split())
        except FileNotFoundError:
            if not setting.optional:
                found.append(Mismatch(setting.key, setting.value, None))
            continue
        if actual != setting.value:
            found.append(Mismatch(setting.key, setting.value, actual))
    return found
