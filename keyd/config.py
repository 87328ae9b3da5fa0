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

    [budgets.employee]
    minute = 30
    hour = 300
    day = 1000
    [budgets.global]
    minute = 300
    hour = 3000
    day = 20000
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from keyd.budgets import Limits


class ConfigError(Exception):
    pass


DEFAULT_EMPLOYEE_BUDGET = {"minute": 30, "hour": 300, "day": 1000}
DEFAULT_GLOBAL_BUDGET = {"minute": 300, "hour": 3000, "day": 20000}


@dataclass(frozen=True)
class Config:
    socket: Path = Path("/run/strongroom-keyd/keyd.sock")
    state_dir: Path = Path("/var/lib/strongroom-keyd")
    drop_path: Path = Path("/dev/shm/ekey")  # noqa: S108 - tmpfs on purpose: the key never touches a disk
    allowed_uids: frozenset[int] = frozenset()
    admin_uids: frozenset[int] = frozenset({0})
    drop_uids: frozenset[int] = frozenset()
    socket_group: str | None = None
    user: str | None = None
    mode: str = "file"
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    token_label: str = "strongroom"  # noqa: S105 - a token name, not a secret
    poll_interval: float = 0.25
    idle_timeout: float = 300.0
    max_connections: int = 128
    syslog: bool = True
    budgets: Limits = field(
        default_factory=lambda: Limits(
            employee=dict(DEFAULT_EMPLOYEE_BUDGET), overall=dict(DEFAULT_GLOBAL_BUDGET)
        )
    )

    def validate(self) -> Config:
        if self.mode not in ("file", "pkcs11"):
            raise ConfigError(f"mode must be 'file' or 'pkcs11', not {self.mode!r}")
        if not 0.01 <= self.poll_interval <= 10:
            raise ConfigError("poll_interval must be between 0.01 and 10 seconds")
        if self.max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        for path in (self.socket, self.state_dir, self.drop_path):
            if not path.is_absolute():
                raise ConfigError(f"{path} must be an absolute path")
        return self


_PATHS = {"socket", "state_dir", "drop_path"}
_UIDS = {"allowed_uids", "admin_uids", "drop_uids"}


def _convert(name: str, value: Any) -> Any:
    if name in _PATHS:
        return Path(value)
    if name in _UIDS:
        if not isinstance(value, list) or not all(isinstance(u, int) and u >= 0 for u in value):
            raise ConfigError(f"{name} must be a list of uids")
        return frozenset(value)
    if name == "budgets":
        if not isinstance(value, dict) or set(value) - {"employee", "global"}:
            raise ConfigError("budgets has only [budgets.employee] and [budgets.global]")
        # Given windows override the defaults; a window cannot be switched off (fail closed).
        try:
            return Limits(
                employee={**DEFAULT_EMPLOYEE_BUDGET, **value.get("employee", {})},
                overall={**DEFAULT_GLOBAL_BUDGET, **value.get("global", {})},
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return value


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """The config from `path` (if any), then `overrides` (flags that were given), validated."""
    values: dict[str, Any] = {}
    known = {f.name for f in fields(Config)}
    if path is not None:
        try:
            with path.open("rb") as f:
                raw = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        values.update({k: _convert(k, v) for k, v in raw.items()})
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _convert(key, value)
    return replace(Config(), **values).validate()
