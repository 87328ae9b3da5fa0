"""The config file and its refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keyd.config import ConfigError, load

ROOT = Path(__file__).resolve().parents[2]


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


# One row per hostile line, and the exact refusal after "<file>: " (the key and the rule, never the value).
@pytest.mark.parametrize(
    ("text", "refusal"),
    [
        ('sockett = "/x"\n', "sockett: is not a known setting"),
        ('"a\\nb" = 1\n', "'a\\nb': is not a known setting"),
        ('mode = "hsm"\n', "mode: must be 'file' or 'pkcs11'"),
        ("mode = 1\n", "mode: must be 'file' or 'pkcs11'"),
        ('socket = "relative.sock"\n', "socket: must be an absolute path"),
        ("socket = 5\n", "socket: must be an absolute path"),
        ('state_dir = "/var/\\u0000x"\n', "state_dir: must be an absolute path"),
        (
            'allowed_uids = ["www-data"]\n',
            "allowed_uids: must be a list of uids (whole numbers from 0 to 4294967294)",
        ),
        (
            "allowed_uids = [-1]\n",
            "allowed_uids: must be a list of uids (whole numbers from 0 to 4294967294)",
        ),
        (
            "allowed_uids = [true]\n",
            "allowed_uids: must be a list of uids (whole numbers from 0 to 4294967294)",
        ),
        ("allowed_uids = 33\n", "allowed_uids: must be a list of at most 256 uids"),
        ("[budgets.employee]\nweek = 3\n", "budgets: employee has only the windows minute, hour and day"),
        ("[budgets.everyone]\nday = 3\n", "budgets: has only [budgets.employee] and [budgets.global]"),
        ("[budgets.global]\nday = 0\n", "budgets: global.day must be a whole number from 1 to 1000000000"),
        ('[budgets.global]\nday = "9"\n', "budgets: global.day must be a whole number from 1 to 1000000000"),
        ("poll_interval = 0\n", "poll_interval: must be between 0.01 and 10"),
        ('poll_interval = "1"\n', "poll_interval: must be a number"),
        ("max_connections = 0\n", "max_connections: must be between 1 and 4096"),
        ("max_connections = 1.5\n", "max_connections: must be a whole number"),
        ("idle_timeout = true\n", "idle_timeout: must be a number"),
        ('syslog = "no"\n', "syslog: must be true or false"),
        ('user = ""\n', "user: must be 1 to 32 characters"),
        ("token_label = 7\n", "token_label: must be a string"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, text: str, refusal: str) -> None:
    path = tmp_path / "keyd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"{path}: {refusal}"


@pytest.mark.parametrize(
    ("content", "refusal"),
    [
        (b"not toml at all [", "not valid TOML (at line 1, column 5)"),
        (b"#" * (64 * 1024 + 1), "larger than 65536 bytes"),
        (b'user = "\xff"\n', "not UTF-8 text"),
    ],
)
def test_an_unreadable_file_is_refused(tmp_path: Path, content: bytes, refusal: str) -> None:
    path = tmp_path / "keyd.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert str(caught.value) == f"cannot read config: {path}: {refusal}"


def test_every_problem_is_a_line_and_no_value_is_echoed(tmp_path: Path) -> None:
    secret = "Hunter2-S3cret-Passw0rd"
    path = tmp_path / "keyd.toml"
    path.write_text(
        f'pin = "{secret}"\nmode = "{secret}"\ntoken_label = ["{secret}"]\nuser = "{secret * 9}"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load(path, {"poll_interval": 99.0})
    assert str(caught.value).splitlines() == [
        f"{path}: pin: is not a known setting",
        f"{path}: mode: must be 'file' or 'pkcs11'",
        f"{path}: token_label: must be a string",
        f"{path}: user: must be 1 to 32 characters",
        "command line: poll_interval: must be between 0.01 and 10",
    ]
    assert secret not in repr(caught.value)
    assert caught.value.__cause__ is None


def test_keyd_does_not_load_pydantic() -> None:
    # keyd holds the data key: its settings use the standard library only (docs/keyd.md, "Settings").
    code = "import sys, keyd.cli, keyd.server; print(sorted(m for m in sys.modules if 'pydantic' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_serve_without_state_says_so(keyd_factory: object) -> None:
    k = keyd_factory()  # type: ignore[operator]
    result = k.cli("serve", check=False)
    assert result.returncode == 1
    assert "run `python -m keyd init` first" in result.stderr
