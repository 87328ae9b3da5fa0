"""The CA's settings: `config.toml` in the CA directory, written by `init`, declared as a model
(common/settings.py) and parsed strictly.

An unknown key or a wrong type is refused rather than ignored: a typo in `crl_days` must not silently
fall back to a default that locks everyone out.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from ca.errors import CAError
from common.settings import (
    AbsolutePath,
    Array,
    SettingsMissing,
    SettingsModel,
    SettingsRefused,
    load_toml,
    problems,
)

# The PKCS#12 KDF cost in production. Tests may lower it in their config; one test checks this default.
DEFAULT_PKCS12_KDF_ROUNDS = 600_000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Days = Annotated[int, Field(gt=0)]

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*")
_POSIX_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# ssh splits UserKnownHostsFile on whitespace and expands %-tokens and ~ in both file options.
_SSH_PATH = re.compile(r"/[A-Za-z0-9._/+@-]{1,254}")


def _matching(pattern: re.Pattern[str], rule: str) -> AfterValidator:
    def check(value: Any) -> Any:
        if not pattern.fullmatch(str(value)):
            raise ValueError(rule)
        return value

    return AfterValidator(check)


def _host(value: str) -> str:
    # Never something ssh could read as an option (a leading '-'), nor a user@ or a port.
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _DNS_NAME.fullmatch(value):
        raise ValueError("must be an IP address or a lowercase DNS name")
    return value


class CrlNode(SettingsModel):
    """A web node the CA host pushes the CRL to over SSH (docs/ca.md, "Several web nodes")."""

    name: Annotated[str, _matching(_NODE_NAME, "must be 1-64 letters, digits, '.', '_' or '-'")]
    host: Annotated[str, AfterValidator(_host)]
    port: int = Field(default=22, ge=1, le=65535)
    user: Annotated[str, _matching(_POSIX_USER, "must be a plain user name")]
    # The node's host key, pinned: a known_hosts line for `host` (`[host]:port` unless port 22).
    known_hosts: Annotated[AbsolutePath, _matching(_SSH_PATH, "must be an absolute path without spaces")]
    # The CA host's private key whose public half the node's authorized_keys restricts.
    identity: Annotated[AbsolutePath, _matching(_SSH_PATH, "must be an absolute path without spaces")]


class Config(SettingsModel):
    organization: Annotated[str, AfterValidator(_not_blank)] = "Strongroom"
    employee_days: Days = 90
    service_days: Days = 365
    server_days: Days = 90
    # The issuing CA's CRL: valid crl_days, re-signed by `crl --if-due` once it is crl_refresh_hours old.
    crl_days: Days = 7
    crl_refresh_hours: Annotated[int, Field(gt=0)] = 24
    # The root's CRL (signed with the offline root key, so refreshed by hand: see docs/ca.md).
    root_crl_days: Days = 365
    root_crl_warn_days: Days = 60
    pkcs12_kdf_rounds: int = Field(default=DEFAULT_PKCS12_KDF_ROUNDS, ge=1000)
    # Employee certificates are bound to the web app user; false only before the web app exists.
    bind: bool = True
    # argv prefix of the web app's CLI; empty means [sys.executable, "-m", "flask", "--app", "webapp"].
    webapp_command: list[str] = Field(default_factory=list)
    # working directory for that command; empty means the Strongroom checkout this tool runs from.
    webapp_dir: str = ""
    # argv run after every CRL publication, e.g. ["apache2ctl", "graceful"]; empty means none.
    reload_command: list[str] = Field(default_factory=list)
    syslog: bool = True
    # Web nodes that get every new CRL from `push-crl` (run it as the reload hook); empty: one host.
    crl_nodes: Array[CrlNode] = ()

    @model_validator(mode="after")
    def _crl_outlives_its_refresh(self) -> Config:
        if self.crl_refresh_hours >= self.crl_days * 24:
            raise ValueError("crl_refresh_hours must be shorter than crl_days, or the CRL would expire")
        names = [node.name for node in self.crl_nodes]
        if len(set(names)) != len(names):
            raise ValueError("crl_nodes: each node needs its own name")
        return self

    # Last, so that it wraps every rule above.
    @model_validator(mode="wrap")
    @classmethod
    def _refused_as_ca_error(
        cls, data: Any, handler: ModelWrapValidatorHandler[Config], info: ValidationInfo
    ) -> Config:
        # `init` builds the settings from its options: the same rules, refused as a CAError (exit 1).
        # From the file (a validation context names it), the loader says which file.
        if info.context is not None:
            return handler(data)
        try:
            return handler(data)
        except ValidationError as exc:
            raise CAError("\n".join(problems(exc, source="config"))) from None


def load_config(path: Path) -> Config:
    try:
        return load_toml(Config, path)
    except SettingsMissing:
        raise CAError(f"{path} is missing: is this a CA directory? (`python -m ca init` makes one)") from None
    except SettingsRefused as exc:
        raise CAError(str(exc)) from None


def render_config(config: Config) -> str:
    """The config file `init` writes: every setting spelled out so the admin sees what is in force."""
    lines = ["# Strongroom CA settings (see docs/ca.md). Unknown keys are refused."]
    for name in Config.model_fields:
        value = getattr(config, name)
        lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str | Path):
        return _toml_str(str(value))
    if isinstance(value, CrlNode):  # an inline table: one line per node keeps the file readable
        return "{" + ", ".join(f"{k} = {_toml_value(getattr(value, k))}" for k in CrlNode.model_fields) + "}"
    if not isinstance(value, list | tuple):
        raise TypeError(f"no TOML rendering for {type(value).__name__}")
    if any(isinstance(v, CrlNode) for v in value):
        return "[\n" + "".join(f"    {_toml_value(v)},\n" for v in value) + "]"
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
