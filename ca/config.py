"""The CA's settings: `config.toml` in the CA directory, written by `init`, declared as a model
(common/settings.py) and parsed strictly.

An unknown key or a wrong type is refused rather than ignored: a typo in `crl_days` must not silently
fall back to a default that locks everyone out.
"""

from __future__ import annotations

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
from common.settings import SettingsMissing, SettingsModel, SettingsRefused, load_toml, problems

# The PKCS#12 KDF cost in production. Tests may lower it in their config; one test checks this default.
DEFAULT_PKCS12_KDF_ROUNDS = 600_000


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


Days = Annotated[int, Field(gt=0)]


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

    @model_validator(mode="after")
    def _crl_outlives_its_refresh(self) -> Config:
        if self.crl_refresh_hours >= self.crl_days * 24:
            raise ValueError("crl_refresh_hours must be shorter than crl_days, or the CRL would expire")
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
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, int):
            rendered = str(value)
        elif isinstance(value, str):
            rendered = _toml_str(value)
        else:
            rendered = "[" + ", ".join(_toml_str(v) for v in value) + "]"
        lines.append(f"{name} = {rendered}")
    return "\n".join(lines) + "\n"


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
