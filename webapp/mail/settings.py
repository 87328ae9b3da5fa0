"""The mailer's settings, parsed strictly from the app config (STRONGROOM_SMTP_*, MAIL_FROM, ALERT_TO).

The TLS rule: a mail server on loopback may be spoken to in clear (the local MTA relays onwards);
anything else needs STARTTLS with a verified certificate, and credentials are only ever sent over TLS.
There is no setting that turns TLS off for a remote host.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STARTTLS_MODES = ("auto", "required")
MAX_RECIPIENTS = 10
MAX_PASSWORD_FILE = 4096
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A deliberately plain address: no display names, no quoting, no comments, nothing a header could be
# smuggled in with.
_ADDRESS = re.compile(rf"[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})*")
_USER = re.compile(r"[\x21-\x7e]{1,128}")


class MailConfigError(ValueError):
    """The mailer refuses to run with this configuration."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost: it may resolve anywhere, so treat it as remote


def tls_required(host: str, mode: str) -> bool:
    """The policy: STARTTLS unless the host is loopback and the mode is "auto"."""
    if mode not in STARTTLS_MODES:
        raise MailConfigError(f"STRONGROOM_SMTP_STARTTLS must be one of {STARTTLS_MODES}")
    return mode == "required" or not is_loopback(host)


def _host(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 253:
        raise MailConfigError("STRONGROOM_SMTP_HOST must be a host name or an IP address")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise MailConfigError("STRONGROOM_SMTP_HOST must be a host name or an IP address")
    return value


def _int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise MailConfigError(f"STRONGROOM_{name} must be an integer from {low} to {high}")
    return value


def plain_address(value: object) -> bool:
    """user@host and nothing else (no display name, quoting or comment); ops.postfix uses it too."""
    return isinstance(value, str) and len(value) <= 254 and _ADDRESS.fullmatch(value) is not None


def _address(name: str, value: Any) -> str:
    if not isinstance(value, str) or not plain_address(value):
        raise MailConfigError(f"STRONGROOM_{name}: {value!r:.80} is not a plain mail address (user@host)")
    return value


def _recipients(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise MailConfigError("STRONGROOM_ALERT_TO must be set: comma-separated admin addresses")
    if not items or items == [""]:
        raise MailConfigError("STRONGROOM_ALERT_TO must be set: comma-separated admin addresses")
    if len(items) > MAX_RECIPIENTS:
        raise MailConfigError(f"STRONGROOM_ALERT_TO: at most {MAX_RECIPIENTS} addresses")
    found = tuple(_address("ALERT_TO", item) for item in items)
    if len({a.lower() for a in found}) != len(found):
        raise MailConfigError("STRONGROOM_ALERT_TO lists an address twice")
    return found


def _optional_file(name: str, value: Any) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not Path(value).is_absolute():
        raise MailConfigError(f"STRONGROOM_{name} must be an absolute path")
    path = Path(value)
    if not path.is_file():
        raise MailConfigError(f"STRONGROOM_{name}: {path} is not a readable file")
    return path


@dataclass(frozen=True)
class MailSettings:
    host: str
    port: int
    starttls: bool
    timeout: int
    sender: str
    recipients: tuple[str, ...]
    ca_file: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def domain(self) -> str:
        return self.sender.rsplit("@", 1)[1]

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> MailSettings:
        host = _host(cfg.get("SMTP_HOST"))
        mode = cfg.get("SMTP_STARTTLS")
        starttls = tls_required(host, mode if isinstance(mode, str) else "")
        user = cfg.get("SMTP_USER") or None
        password = None
        if user is not None:
            if not isinstance(user, str) or not _USER.fullmatch(user):
                raise MailConfigError("STRONGROOM_SMTP_USER must be 1-128 printable characters")
            if not starttls:
                raise MailConfigError(
                    "SMTP authentication is only sent over TLS: set STRONGROOM_SMTP_STARTTLS=required"
                )
            password_file = _optional_file("SMTP_PASSWORD_FILE", cfg.get("SMTP_PASSWORD_FILE"))
            if password_file is None:
                raise MailConfigError("STRONGROOM_SMTP_USER needs STRONGROOM_SMTP_PASSWORD_FILE")
            raw = password_file.read_bytes()[: MAX_PASSWORD_FILE + 1]
            if len(raw) > MAX_PASSWORD_FILE:
                raise MailConfigError("STRONGROOM_SMTP_PASSWORD_FILE is too large")
            try:
                password = raw.decode("utf-8", errors="strict").rstrip("\r\n")
            except UnicodeDecodeError:
                raise MailConfigError("STRONGROOM_SMTP_PASSWORD_FILE is not UTF-8 text") from None
            if not password:
                raise MailConfigError("STRONGROOM_SMTP_PASSWORD_FILE is empty")
        return cls(
            host=host,
            port=_int("SMTP_PORT", cfg.get("SMTP_PORT"), 1, 65535),
            starttls=starttls,
            timeout=_int("SMTP_TIMEOUT", cfg.get("SMTP_TIMEOUT"), 1, 300),
            sender=_address("MAIL_FROM", cfg.get("MAIL_FROM")),
            recipients=_recipients(cfg.get("ALERT_TO")),
            ca_file=_optional_file("SMTP_CA_FILE", cfg.get("SMTP_CA_FILE")),
            user=user,
            password=password,
        )
