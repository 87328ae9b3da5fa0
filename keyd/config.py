"""keyd's configuration: a small TOML file, each value overridable by a command-line flag.

Example (`/etc/strongroom/keyd.toml`)::

    socket = "/run/strongroom-keyd/keyd.sock"
    state_dir = "/var/lib/strongroom-keyd"
    drop_path = "/dev/shm/ekey"
    allowed_uids = [998]         # the web app's own user (strongroom-web), never Apache's www-data
    admin_uids = [0]             # who may seal, rotate and retire
    drop_uids = []               # owners a drop file may have; empty = keyd's own uid
    socket_group = "strongroom-keyd-clients"  # only keyd and the web app's user are in it (deploy/)
    user = "strongroom-keyd"     # drop root privileges to this user after binding
    mode = "file"                # or "pkcs11"
    pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "strongroom"
    share_timeout = 900          # seconds a custodian share waits for the others (key_kind "shares")

    [budgets.employee]
    minute = 30
    hour = 300
    day = 1000
    [budgets.global]
    minute = 300
    hour = 3000
    day = 20000

Each setting is declared once below, as a field with its default and its rule
(`field(default=0.25, metadata=rule(Number(0.01, 10)))`): the same shape as the other packages'
pydantic models (common/settings.py) and the same refusal, one line per problem `<file>: <key>: <rule>`
that never quotes the value. keyd does not use pydantic itself: it is the process that holds the data
key, and a large compiled dependency in it is attack surface and more to confine (docs/keyd.md,
"Settings").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common.tomlfile import SettingsRefused, read_toml
from keyd.budgets import WINDOWS, Limits


class ConfigError(Exception):
    pass


DEFAULT_EMPLOYEE_BUDGET = {"minute": 30, "hour": 300, "day": 1000}
DEFAULT_GLOBAL_BUDGET = {"minute": 300, "hour": 3000, "day": 20000}
MAX_UIDS = 256
MAX_UID = 2**32 - 2  # 2**32-1 is (uid_t)-1, "no user"
MAX_BUDGET = 10**9


class Refused(ValueError):
    """A value broke its rule; the message is the rule, never the value."""


# -- the rules: each reads a TOML (or flag) value into its Python type, or raises Refused -------------


def _int(value: Any) -> int:
    # bool is an int in Python; `true` is a typo, never a number.
    if isinstance(value, bool) or not isinstance(value, int):
        raise Refused("must be a whole number")
    return value


@dataclass(frozen=True)
class AbsolutePath:
    def read(self, value: Any) -> Path:
        if not isinstance(value, str | Path) or not str(value).startswith("/") or "\x00" in str(value):
            raise Refused("must be an absolute path")
        return Path(value)


@dataclass(frozen=True)
class Text:
    max_length: int = 256

    def read(self, value: Any) -> str:
        if not isinstance(value, str):
            raise Refused("must be a string")
        if not 0 < len(value) <= self.max_length or "\x00" in value:
            raise Refused(f"must be 1 to {self.max_length} characters")
        return value


@dataclass(frozen=True)
class Choice:
    choices: tuple[str, ...]

    def read(self, value: Any) -> str:
        if value not in self.choices:
            raise Refused("must be " + " or ".join(repr(c) for c in self.choices))
        return str(value)


@dataclass(frozen=True)
class Number:
    low: float
    high: float

    def read(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refused("must be a number")
        if not self.low <= value <= self.high:
            raise Refused(f"must be between {self.low:g} and {self.high:g}")
        return float(value)


@dataclass(frozen=True)
class Count:
    low: int
    high: int

    def read(self, value: Any) -> int:
        if not self.low <= _int(value) <= self.high:
            raise Refused(f"must be between {self.low} and {self.high}")
        return int(value)


@dataclass(frozen=True)
class Flag:
    def read(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise Refused("must be true or false")
        return value


@dataclass(frozen=True)
class Uids:
    def read(self, value: Any) -> frozenset[int]:
        if not isinstance(value, list | tuple | set | frozenset) or len(value) > MAX_UIDS:
            raise Refused(f"must be a list of at most {MAX_UIDS} uids")
        for uid in value:
            if isinstance(uid, bool) or not isinstance(uid, int) or not 0 <= uid <= MAX_UID:
                raise Refused(f"must be a list of uids (whole numbers from 0 to {MAX_UID})")
        return frozenset(value)


@dataclass(frozen=True)
class Budgets:
    def read(self, value: Any) -> Limits:
        if not isinstance(value, dict) or set(value) - {"employee", "global"}:
            raise Refused("has only [budgets.employee] and [budgets.global]")
        scopes: dict[str, dict[str, int]] = {}
        for scope, defaults in (("employee", DEFAULT_EMPLOYEE_BUDGET), ("global", DEFAULT_GLOBAL_BUDGET)):
            given = value.get(scope, {})
            if not isinstance(given, dict) or set(given) - set(WINDOWS):
                raise Refused(f"{scope} has only the windows minute, hour and day")
            for window, limit in given.items():
                if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_BUDGET:
                    raise Refused(f"{scope}.{window} must be a whole number from 1 to {MAX_BUDGET}")
            # Given windows override the defaults; a window cannot be switched off (fail closed).
            scopes[scope] = {**defaults, **given}
        return Limits(employee=scopes["employee"], overall=scopes["global"])


Rule = AbsolutePath | Text | Choice | Number | Count | Flag | Uids | Budgets


def rule(check: Rule) -> dict[str, Rule]:
    """A field's metadata: the rule a value from the file or a flag must pass."""
    return {"rule": check}


@dataclass(frozen=True)
class Config:
    socket: Path = field(default=Path("/run/strongroom-keyd/keyd.sock"), metadata=rule(AbsolutePath()))
    state_dir: Path = field(default=Path("/var/lib/strongroom-keyd"), metadata=rule(AbsolutePath()))
    # tmpfs on purpose: the key never touches a disk
    drop_path: Path = field(default=Path("/dev/shm/ekey"), metadata=rule(AbsolutePath()))  # noqa: S108
    allowed_uids: frozenset[int] = field(default=frozenset(), metadata=rule(Uids()))
    admin_uids: frozenset[int] = field(default=frozenset({0}), metadata=rule(Uids()))
    drop_uids: frozenset[int] = field(default=frozenset(), metadata=rule(Uids()))
    socket_group: str | None = field(default=None, metadata=rule(Text(32)))
    user: str | None = field(default=None, metadata=rule(Text(32)))
    mode: str = field(default="file", metadata=rule(Choice(("file", "pkcs11"))))
    pkcs11_module: str = field(default="/usr/lib/softhsm/libsofthsm2.so", metadata=rule(Text()))
    # a token name, not a secret (a PKCS#11 label has 32 bytes)
    token_label: str = field(default="strongroom", metadata=rule(Text(32)))
    poll_interval: float = field(default=0.25, metadata=rule(Number(0.01, 10)))
    # key_kind "shares": a delivered custodian share waits this long for the others, then is discarded
    share_timeout: float = field(default=900.0, metadata=rule(Number(1, 86400)))
    idle_timeout: float = field(default=300.0, metadata=rule(Number(1, 86400)))
    max_connections: int = field(default=128, metadata=rule(Count(1, 4096)))
    syslog: bool = field(default=True, metadata=rule(Flag()))
    budgets: Limits = field(
        default_factory=lambda: Limits(
            employee=dict(DEFAULT_EMPLOYEE_BUDGET), overall=dict(DEFAULT_GLOBAL_BUDGET)
        ),
        metadata=rule(Budgets()),
    )


_RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in fields(Config)}


def _read(values: Mapping[str, Any], source: str) -> tuple[dict[str, Any], list[str]]:
    """Each value read by its rule, and one line per problem (the key and the rule, never the value)."""
    good: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in values.items():
        rule = _RULES.get(key)
        if rule is None:
            shown = key if key.isidentifier() and len(key) <= 64 else repr(key[:64])
            problems.append(f"{source}: {shown}: is not a known setting")
            continue
        try:
            good[key] = rule.read(value)
        except Refused as exc:
            problems.append(f"{source}: {key}: {exc}")
    return good, problems


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """The config from `path` (if any), then `overrides` (flags that were given), each value checked."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    if path is not None:
        try:
            raw = read_toml(path)
        except SettingsRefused as exc:
            raise ConfigError(f"cannot read config: {exc}") from None
        good, bad = _read(raw, str(path))
        values.update(good)
        problems += bad
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    good, bad = _read(given, "command line")
    values.update(good)
    problems += bad
    if problems:
        raise ConfigError("\n".join(problems))
    return replace(Config(), **values)
