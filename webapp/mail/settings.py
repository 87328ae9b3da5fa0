"""The mailer's settings, declared as a model (common/settings.py) over the app config
(STRONGROOM_SMTP_*, MAIL_FROM, ALERT_TO) and parsed strictly.

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
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field

from common.settings import AbsolutePath, SettingsModel, SettingsRefused, validate

StartTls = Literal["auto", "required"]
STARTTLS_MODES: tuple[StartTls, ...] = get_args(StartTls)
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


def _host(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ValueError("must be a host name or an IP address")
    return value


def plain_address(value: object) -> bool:
    """user@host and nothing else (no display name, quoting or comment); ops.postfix uses it too."""
    return isinstance(value, str) and len(value) <= 254 and _ADDRESS.fullmatch(value) is not None


def _address(value: str) -> str:
    if not plain_address(value):
        raise ValueError("is not a plain mail address (user@host)")
    return value


def _split(value: object) -> object:
    """ALERT_TO is comma-separated in the environment; a list given in an instance file is a list."""
    return tuple(part.strip() for part in value.split(",")) if isinstance(value, str) else value


def _distinct(addresses: tuple[str, ...]) -> tuple[str, ...]:
    if len({a.lower() for a in addresses}) != len(addresses):
        raise ValueError("lists an address twice")
    return addresses


def _user(value: str) -> str:
    if not _USER.fullmatch(value):
        raise ValueError("must be 1-128 printable characters")
    return value


def _readable(path: Path) -> Path:
    if not path.is_file():
        raise ValueError("is not a readable file")
    return path


Address = Annotated[str, AfterValidator(_address)]


class MailConfig(SettingsModel):
    """The mailer's settings as the app config holds them (an unset or empty one is left out)."""

    host: Annotated[str, Field(max_length=253), AfterValidator(_host)] = Field(alias="SMTP_HOST")
    port: int = Field(alias="SMTP_PORT", ge=1, le=65535)
    starttls: StartTls = Field(alias="SMTP_STARTTLS")
    timeout: int = Field(alias="SMTP_TIMEOUT", ge=1, le=300)
    sender: Address = Field(alias="MAIL_FROM", description="the address alerts are sent from (user@host)")
    recipients: Annotated[
        tuple[Address, ...],
        BeforeValidator(_split),
        Field(min_length=1, max_length=MAX_RECIPIENTS),
        AfterValidator(_distinct),
    ] = Field(alias="ALERT_TO", description="comma-separated admin addresses")
    ca_file: Annotated[AbsolutePath, AfterValidator(_readable)] | None = Field(None, alias="SMTP_CA_FILE")
    user: Annotated[str, AfterValidator(_user)] | None = Field(None, alias="SMTP_USER")
    password_file: Annotated[AbsolutePath, AfterValidator(_readable)] | None = Field(
        None, alias="SMTP_PASSWORD_FILE"
    )


def _config(cfg: Mapping[str, Any]) -> MailConfig:
    keys = (f.alias for f in MailConfig.model_fields.values())
    raw = {key: cfg[key] for key in keys if key is not None and cfg.get(key) not in (None, "")}
    try:
        return validate(MailConfig, raw, source="mail settings", key_prefix="STRONGROOM_")
    except SettingsRefused as exc:
        raise MailConfigError(str(exc)) from None


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
        config = _config(cfg)
        starttls = tls_required(config.host, config.starttls)
        password = None
        if config.user is not None:
            if not starttls:
                raise MailConfigError(
                    "SMTP authentication is only sent over TLS: set STRONGROOM_SMTP_STARTTLS=required"
                )
            if config.password_file is None:
                raise MailConfigError("STRONGROOM_SMTP_USER needs STRONGROOM_SMTP_PASSWORD_FILE")
            raw = config.password_file.read_bytes()[: MAX_PASSWORD_FILE + 1]
            if len(raw) > MAX_PASSWORD_FILE:
                raise MailConfigError("STRONGROOM_SMTP_PASSWORD_FILE is too large")
            try:
                password = raw.decode("utf-8", errors="strict").rstrip("\r\n")
            except UnicodeDecodeError:
                raise MailConfigError("STRONGROOM_SMTP_PASSWORD_FILE is not UTF-8 text") from None
            if not password:
                raise MailConfigError("STRONGROOM_SMTP_PASSWORD_FILE is empty")
        return cls(
            host=config.host,
            port=config.port,
            starttls=starttls,
            timeout=config.timeout,
            sender=config.sender,
            recipients=config.recipients,
            ca_file=config.ca_file,
            user=config.user,
            password=password,
        )
