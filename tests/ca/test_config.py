"""config.toml: what `init` writes reads back, and every hostile setting is refused as a CAError."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca.config import DEFAULT_PKCS12_KDF_ROUNDS, Config, load_config, render_config
from ca.errors import CAError


def test_what_init_writes_reads_back(tmp_path: Path) -> None:
    config = Config(organization='Acme "Vault"', reload_command=["apache2ctl", "graceful"], crl_days=2)
    path = tmp_path / "config.toml"
    path.write_text(render_config(config))
    assert load_config(path) == config
    assert Config().pkcs12_kdf_rounds == DEFAULT_PKCS12_KDF_ROUNDS


@pytest.mark.parametrize(
    ("line", "refusal"),
    [
        ("crl_dayz = 7", "crl_dayz: is not a known setting"),
        ("crl_days = 0", "crl_days: must be greater than 0"),
        ('crl_days = "7"', "crl_days: must be a whole number"),
        ("crl_days = true", "crl_days: must be a whole number"),
        ("crl_days = 7.0", "crl_days: must be a whole number"),
        ("crl_days = 1", "crl_refresh_hours must be shorter than crl_days, or the CRL would expire"),
        ("root_crl_warn_days = -1", "root_crl_warn_days: must be greater than 0"),
        ("pkcs12_kdf_rounds = 999", "pkcs12_kdf_rounds: must be at least 1000"),
        ('organization = "  "', "organization: must not be empty"),
        ("bind = 1", "bind: must be true or false"),
        ('reload_command = "apache2ctl graceful"', "reload_command: must be a list"),
        ("reload_command = [1]", "reload_command[0]: must be a string"),
        ("crl_days = [", "not valid TOML (at end of document)"),
    ],
)
def test_a_hostile_setting_is_refused(tmp_path: Path, line: str, refusal: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(line + "\n")
    with pytest.raises(CAError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: {refusal}"


def test_a_missing_file_says_what_makes_one(tmp_path: Path) -> None:
    with pytest.raises(CAError, match=r"is missing: is this a CA directory\?"):
        load_config(tmp_path / "config.toml")


def test_settings_from_the_init_options_get_the_same_rules() -> None:
    with pytest.raises(CAError) as caught:
        Config(organization=" ", crl_days=1)
    assert str(caught.value) == "config: organization: must not be empty"
    with pytest.raises(CAError, match=r"^config: crl_refresh_hours must be shorter than crl_days"):
        Config(crl_days=1)
