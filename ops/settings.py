"""Watchdog settings: one TOML file, parsed strictly (unknown keys are refused, types checked).

The database URL is the web app's own (`STRONGROOM_DATABASE_URL`) unless the file names one: alerts
go into the same outbox that the web app's mailer drains.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

CHECKS = (
    "processes",
    "ports",
    "logs",
    "access",
    "updates",
    "keyd",
    "keyd_events",
    "integrity",
    "remote",
    "outbox",
    "logsize",
)


class SettingsError(ValueError):
    """The settings file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    database_url: str
    checks: tuple[str, ...] = CHECKS
    # logs: name -> path of a file watched for any new data (syslog, Apache's error log)
    logs: dict[str, Path] = field(default_factory=dict)
    modsecurity_log: str = "apache_error"  # which of `logs` carries ModSecurity's denials
    # Regular expressions (searched in each line) for routine lines that are not news (cron, timers).
    # Keep them narrow: every pattern is a blind spot the admin chose.
    log_ignore: tuple[str, ...] = ()
    access_log: Path | None = None
    access_per_cert: int = 50  # requests per certificate between two reviews (start low)
    access_total: int = 200  # requests in total between two reviews
    keyd_socket: Path = Path("/run/strongroom-keyd/keyd.sock")
    keyd_timeout: float = 2.0
    # keyd's event spool and the user that writes it: a spool owned by anyone else is not keyd's.
    keyd_spool: Path = Path("/var/lib/strongroom-keyd/events.jsonl")
    keyd_user: str = "strongroom-keyd"
    aide_binary: str = "aide"
    aide_config: Path = Path("/etc/strongroom/aide.conf")
    apt_binary: str = "apt-get"
    remote_local_log: Path | None = None
    remote_copy: Path | None = None
    remote_grace_seconds: int = 120
    # Set when remote_copy is fetched (strongroom-remote-copy.timer, every 5 minutes): its mtime is then
    # the fetch time, the comparison ends there, and a copy older than this is an alert (the fetch
    # fails). Unset for a live file (the check run on the log host itself).
    remote_copy_max_age_seconds: int | None = None
    max_read_bytes: int = 64 * 1024 * 1024  # per log per run; the rest is read next run
    # outbox: alerts unsent for longer than this mean the mail path is broken (root is mailed directly).
    # The mailer tries every minute: a quarter of an hour of failures is no passing hiccup.
    outbox_stuck_seconds: int = 900
    # logsize: every log above (logs, access_log) and these, which nobody tails (ModSecurity's audit
    # log), alarm past this size: logrotate keeps each under 50 MB, four times that fills the disk.
    log_max_bytes: int = 200 * 1024 * 1024
    log_size_paths: dict[str, Path] = field(default_factory=dict)
    # Programs the installed server itself starts on demand (postfix's master spawns smtpd, cleanup,
    # local... for each mail and lets them exit when idle): a snapshot taken at a quiet moment misses
    # them. `baseline record` adds these entries to its proposal, so the admin's approval covers them;
    # the check itself reads only the approved baseline.
    routine_processes: tuple[dict[str, str], ...] = ()


_PATHS = {
    "state_dir",
    "access_log",
    "keyd_socket",
    "keyd_spool",
    "aide_config",
    "remote_local_log",
    "remote_copy",
}
_INTS = {
    "access_per_cert",
    "access_total",
    "remote_grace_seconds",
    "remote_copy_max_age_seconds",
    "max_read_bytes",
    "outbox_stuck_seconds",
    "log_max_bytes",
}
_STRS = {"database_url", "modsecurity_log", "aide_binary", "apt_binary", "keyd_user"}


def load(path: Path, *, environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    try:
        raw = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    return parse(raw, environ=env)


def parse(raw: dict[str, Any], *, environ: dict[str, str] | os._Environ[str]) -> Settings:
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"unknown setting(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _PATHS:
            values[name] = _path(name, value)
        elif name in _INTS:
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise SettingsError(f"{name} must be a positive integer")
            values[name] = value
        elif name in _STRS:
            if not isinstance(value, str) or not value:
                raise SettingsError(f"{name} must be a non-empty string")
            values[name] = value
        elif name == "keyd_timeout":
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise SettingsError("keyd_timeout must be a positive number")
            values[name] = float(value)
        elif name == "checks":
            if (
                not isinstance(value, list)
                or not all(v in CHECKS for v in value)
                or len(set(value)) != len(value)
            ):
                raise SettingsError(f"checks must be a list of distinct names from {CHECKS}")
            values[name] = tuple(value)
        elif name == "log_ignore":
            values[name] = _patterns(value)
        elif name == "routine_processes":
            values[name] = _process_entries(value)
        elif name in ("logs", "log_size_paths"):
            if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value):
                raise SettingsError(f"{name} must be a table of name = path")
            values[name] = {k: _path(f"{name}.{k}", v) for k, v in value.items()}
    if "database_url" not in values:
        url = environ.get("STRONGROOM_DATABASE_URL")
        if not url:
            raise SettingsError(
                "database_url is not set (nor STRONGROOM_DATABASE_URL): alerts need the outbox"
            )
        values["database_url"] = url
    if "state_dir" not in values:
        raise SettingsError("state_dir must be set")
    settings = Settings(**values)
    if "remote" in settings.checks and (settings.remote_local_log is None) != (settings.remote_copy is None):
        raise SettingsError("remote_local_log and remote_copy go together")
    return settings


def _patterns(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > 100:
        raise SettingsError("log_ignore must be a list of at most 100 regular expressions")
    for pattern in value:
        if not isinstance(pattern, str) or not 0 < len(pattern) <= 500:
            raise SettingsError("log_ignore patterns must be strings of 1-500 characters")
        try:
            re.compile(pattern.encode())
        except re.error:
            raise SettingsError(f"log_ignore: not a regular expression: {pattern!r}") from None
    return tuple(value)


def _process_entries(value: Any) -> tuple[dict[str, str], ...]:
    """Allowlist entries as the processes check reads them: name, user, and one of cmdline (exact)
    or cmdline_glob."""
    if not isinstance(value, list) or len(value) > 100:
        raise SettingsError("routine_processes must be a list of at most 100 tables")
    out = []
    for entry in value:
        if not isinstance(entry, dict) or not all(
            isinstance(v, str) and 0 < len(v) <= 500 and "\x00" not in v for v in entry.values()
        ):
            raise SettingsError("routine_processes entries are tables of strings of 1-500 characters")
        keys = set(entry)
        if keys not in ({"name", "user", "cmdline"}, {"name", "user", "cmdline_glob"}):
            raise SettingsError("routine_processes entries have name, user and cmdline or cmdline_glob")
        out.append(dict(entry))
    return tuple(out)


def _path(name: str, value: Any) -> Path:
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value:
        raise SettingsError(f"{name} must be an absolute path")
    return Path(value)
