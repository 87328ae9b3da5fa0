"""The CA's settings: `config.toml` in the CA directory, written by `init`, parsed strictly.

An unknown key or a wrong type is refused rather than ignored: a typo in `crl_days` must not silently
fall back to a default that locks everyone out.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from ca.errors import CAError

# The PKCS#12 KDF cost in production. Tests may lower it in their config; one test checks this default.
DEFAULT_PKCS12_KDF_ROUNDS = 600_000


@dataclass(frozen=True)
class Config:
    organization: str = "Strongroom"
    employee_days: int = 90
    service_days: int = 365
    server_days: int = 90
    # The issuing CA's CRL: valid crl_days, re-signed by `crl --if-due` once it is crl_refresh_hours old.
    crl_days: int = 7
    crl_refresh_hours: int = 24
    # The root's CRL (signed with the offline root key, so refreshed by hand: see docs/ca.md).
    root_crl_days: int = 365
    root_crl_warn_days: int = 60
    pkcs12_kdf_rounds: int = DEFAULT_PKCS12_KDF_ROUNDS
    # Employee certificates are bound to the web app user; false only before the web app exists.
    bind: bool = True
    # argv prefix of the web app's CLI; empty means [sys.executable, "-m", "flask", "--app", "webapp"].
    webapp_command: list[str] = field(default_factory=list)
    # working directory for that command; empty means the Strongroom checkout this tool runs from.
    webapp_dir: str = ""
    # argv run after every CRL publication, e.g. ["apache2ctl", "graceful"]; empty means none.
    reload_command: list[str] = field(default_factory=list)
    syslog: bool = True

    def __post_init__(self) -> None:
        positive = ("employee_days", "service_days", "server_days", "crl_days", "crl_refresh_hours")
        for name in (*positive, "root_crl_days", "root_crl_warn_days"):
            if getattr(self, name) <= 0:
                raise CAError(f"config: {name} must be a positive number of days/hours")
        if self.crl_refresh_hours >= self.crl_days * 24:
            raise CAError("config: crl_refresh_hours must be shorter than crl_days, or the CRL would expire")
        if self.pkcs12_kdf_rounds < 1000:
            raise CAError("config: pkcs12_kdf_rounds must be at least 1000")
        if not self.organization.strip():
            raise CAError("config: organization must not be empty")


_TYPES: dict[str, type] = {"str": str, "int": int, "bool": bool, "list[str]": list}


def load_config(path: Path) -> Config:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CAError(f"{path} is missing: is this a CA directory? (`python -m ca init` makes one)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise CAError(f"{path} is not valid TOML: {e}") from None
    known = {f.name: str(f.type) for f in fields(Config)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise CAError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    for key, value in raw.items():
        want = _TYPES[known[key]]
        # bool is a subclass of int: an int setting must not accept `true`.
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise CAError(f"{path}: {key} must be of type {known[key]}")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise CAError(f"{path}: {key} must be a list of strings")
    return Config(**raw)


def render_config(config: Config) -> str:
    """The config file `init` writes: every setting spelled out so the admin sees what is in force."""
    lines = ["# Strongroom CA settings (see docs/ca.md). Unknown keys are refused."]
    for f in fields(Config):
        value = getattr(config, f.name)
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int):
            rendered = str(value)
        elif isinstance(value, str):
            rendered = _toml_str(value)
        else:
            rendered = "[" + ", ".join(_toml_str(v) for v in value) + "]"
        lines.append(f"{f.name} = {rendered}")
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
