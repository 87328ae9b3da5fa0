"""The config file and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from keyd.config import ConfigError, load


def test_toml_file_and_flag_overrides(tmp_path: Path) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(
        'socket = "/run/x/keyd.sock"\nallowed_uids = [33]\nmode = "pkcs11"\n'
        "[budgets.employee]\nminute = 5\n[budgets.global]\nday = 100\n"
    )
    config = load(path, {"allowed_uids": [33, 0], "state_dir": None})
    assert str(config.socket) == "/run/x/keyd.sock"
    assert config.allowed_uids == {0, 33}
    assert config.mode == "pkcs11"
    # A window given overrides its default; the others keep theirs (none can be switched off).
    assert config.budgets.employee == {"minute": 5, "hour": 300, "day": 1000}
    assert config.budgets.overall == {"minute": 300, "hour": 3000, "day": 100}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('sockett = "/x"\n', "unknown config keys: sockett"),
        ('mode = "hsm"\n', "mode must be 'file' or 'pkcs11'"),
        ('socket = "relative.sock"\n', "must be an absolute path"),
        ('allowed_uids = ["www-data"]\n', "allowed_uids must be a list of uids"),
        ("allowed_uids = [-1]\n", "allowed_uids must be a list of uids"),
        ("[budgets.employee]\nweek = 3\n", "bad budget week=3"),
        ("[budgets.everyone]\nday = 3\n", "budgets has only"),
        ("poll_interval = 0\n", "poll_interval"),
        ("not toml at all [", "cannot read config"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load(path)


def test_serve_without_state_says_so(keyd_factory: object) -> None:
    k = keyd_factory()  # type: ignore[operator]
    result = k.cli("serve", check=False)
    assert result.returncode == 1
    assert "run `python -m keyd init` first" in result.stderr
