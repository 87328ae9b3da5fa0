"""Watchdog settings: one TOML file, declared as a model (common/settings.py): unknown keys are refused,
types are strict, each limit is stated beside its setting.

The database URL is the web app's own (`STRONGROOM_DATABASE_URL`) unless the file names one: alerts
go into the same outbox that the web app's mailer drains.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, model_validator

from common.settings import AbsolutePath, Array, SettingsModel, SettingsRefused, read_toml, validate

Check = Literal[
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
]
CHECKS: tuple[Check, ...] = get_args(Check)


class SettingsError(ValueError):
    """The settings file is missing, malformed or inconsistent."""


def _distinct(checks: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(checks)) != len(checks):
        raise ValueError("must be a list of distinct names")
    return checks


def _name(key: str) -> str:
    if not key.isidentifier():
        raise ValueError("is not a name (letters, digits and _, not starting with a digit)")
    return key


def _regex(pattern: str) -> str:
    try:
        re.compile(pattern.encode())
    except re.error:
        raise ValueError("is not a regular expression") from None
    return pattern


def _process_entry(entry: dict[str, str]) -> dict[str, str]:
    """Allowlist entries as the processes check reads them: name, user, and one of cmdline (exact)
    or cmdline_glob."""
    if set(entry) not in ({"name", "user", "cmdline"}, {"name", "user", "cmdline_glob"}):
        raise ValueError("must have name, user and cmdline or cmdline_glob")
    if any("\x00" in v for v in entry.values()):
        raise ValueError("must not contain a NUL character")
    return entry


Positive = Annotated[int, Field(gt=0)]
NonEmpty = Annotated[str, Field(min_length=1)]
PathTable = dict[Annotated[str, AfterValidator(_name)], AbsolutePath]
Text = Annotated[str, Field(min_length=1, max_length=500)]


class Settings(SettingsModel):
    state_dir: AbsolutePath
    database_url: NonEmpty
    checks: Annotated[Array[Check], AfterValidator(_distinct)] = CHECKS
    # logs: name -> path of a file watched for any new data (syslog, Apache's error log)
    logs: PathTable = Field(default_factory=dict)
    modsecurity_log: NonEmpty = "apache_error"  # which of `logs` carries ModSecurity's denials
    # Regular expressions (searched in each line) for routine lines that are not news (cron, timers).
    # Keep them narrow: every pattern is a blind spot the admin chose.
    log_ignore: Array[Annotated[Text, AfterValidator(_regex)]] = Field(default=(), max_length=100)
    access_log: AbsolutePath | None = None
    access_per_cert: Positive = 50  # requests per certificate between two reviews (start low)
    access_total: Positive = 200  # requests in total between two reviews
    keyd_socket: AbsolutePath = Path("/run/strongroom-keyd/keyd.sock")
    keyd_timeout: float = Field(default=2.0, gt=0)
    # keyd's event spool and the user that writes it: a spool owned by anyone else is not keyd's.
    keyd_spool: AbsolutePath = Path("/var/lib/strongroom-keyd/events.jsonl")
    keyd_user: NonEmpty = "strongroom-keyd"
    aide_binary: NonEmpty = "aide"
    aide_config: AbsolutePath = Path("/etc/strongroom/aide.conf")
    apt_binary: NonEmpty = "apt-get"
    remote_local_log: AbsolutePath | None = None
    remote_copy: AbsolutePath | None = None
    remote_grace_seconds: Positive = 120
    # Set when remote_copy is fetched (strongroom-remote-copy.timer, every 5 minutes): its mtime is then
    # the fetch time, the comparison ends there, and a copy older than this is an alert (the fetch
    # fails). Unset for a live file (the check run on the log host itself).
    remote_copy_max_age_seconds: Positive | None = None
    max_read_bytes: Positive = 64 * 1024 * 1024  # per log per run; the rest is read next run
    # outbox: alerts unsent for longer than this mean the mail path is broken (root is mailed directly).
    # The mailer tries every minute: a quarter of an hour of failures is no passing hiccup.
    outbox_stuck_seconds: Positive = 900
    # logsize: every log above (logs, access_log) and these, which nobody tails (ModSecurity's audit
    # log), alarm past this size: logrotate keeps each under 50 MB, four times that fills the disk.
    log_max_bytes: Positive = 200 * 1024 * 1024
    log_size_paths: PathTable = Field(default_factory=dict)
    # Programs the installed server itself starts on demand (postfix's master spawns smtpd, cleanup,
    # local... for each mail and lets them exit when idle): a snapshot taken at a quiet moment misses
    # them. `baseline record` adds these entries to its proposal, so the admin's approval covers them;
    # the check itself reads only the approved baseline.
    routine_processes: Array[Annotated[dict[str, Text], AfterValidator(_process_entry)]] = Field(
        default=(), max_length=100
    )

    @model_validator(mode="after")
    def _remote_pair(self) -> Settings:
        if "remote" in self.checks and (self.remote_local_log is None) != (self.remote_copy is None):
            raise ValueError("remote_local_log and remote_copy go together")
        return self


def load(path: Path, *, environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    try:
        raw = read_toml(Path(path))
    except SettingsRefused as exc:
        raise SettingsError(str(exc)) from None
    return parse(raw, environ=env, source=str(path))


def parse(
    raw: dict[str, Any], *, environ: dict[str, str] | os._Environ[str], source: str = "settings"
) -> Settings:
    if "database_url" not in raw:
        url = environ.get("STRONGROOM_DATABASE_URL")
        if not url:
            raise SettingsError(
                f"{source}: database_url is not set (nor STRONGROOM_DATABASE_URL): alerts need the outbox"
            )
        raw = {**raw, "database_url": url}
    try:
        return validate(Settings, raw, source=source)
    except SettingsRefused as exc:
        raise SettingsError(str(exc)) from None
