"""The shared settings loader: hostile files, one row each, and the exact refusal they must get."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field, model_validator

from common.settings import (
    AbsolutePath,
    Array,
    SettingsMissing,
    SettingsModel,
    SettingsRefused,
    load_toml,
    validate,
)
from common.tomlfile import loads_toml

SECRET = "Hunter2-S3cret-Passw0rd"
Writer = Callable[[str | bytes], Path]


class Example(SettingsModel):
    state_dir: AbsolutePath = Field(description="where the state lives")
    port: int = Field(default=25, ge=1, le=65535)
    timeout: float = Field(default=2.0, gt=0, le=300)
    name: str = Field(default="vault", min_length=1, max_length=20)
    mode: Literal["file", "pkcs11"] = "file"
    syslog: bool = True
    uids: Array[Annotated[int, Field(ge=0)]] = Field(default=(), max_length=3)
    logs: dict[str, AbsolutePath] = Field(default_factory=dict)
    first: int = 1
    last: int = 2

    @model_validator(mode="after")
    def _ordered(self) -> Example:
        if self.first > self.last:
            raise ValueError("first must not be after last")
        return self


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    def write(text: str | bytes) -> Path:
        path = tmp_path / "example.toml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return write


GOOD = 'state_dir = "/var/lib/x"\n'


def test_a_good_file_gives_typed_immutable_settings(write: Writer) -> None:
    s = load_toml(
        Example, write(GOOD + 'uids = [33, 0]\ntimeout = 5\nlogs = { syslog = "/var/log/syslog" }\n')
    )
    assert s.state_dir == Path("/var/lib/x")
    assert s.uids == (33, 0)
    assert s.timeout == 5.0  # a TOML integer is a number
    assert s.logs == {"syslog": Path("/var/log/syslog")}
    assert (s.port, s.mode, s.syslog) == (25, "file", True)
    with pytest.raises(ValueError, match="frozen"):
        s.port = 26  # type: ignore[misc]


# One row per hostile input: the file's text and the exact refusal lines after "<file>: ".
HOSTILE = [
    ("unknown key", GOOD + "sockett = 1\n", ["sockett: is not a known setting"]),
    ("unknown nested key", GOOD + "[logs]\n", []),  # an empty table is fine: the control row
    ("missing required", "port = 25\n", ["state_dir: is required: where the state lives"]),
    ("string for an int", GOOD + 'port = "25"\n', ["port: must be a whole number"]),
    ("float for an int", GOOD + "port = 25.0\n", ["port: must be a whole number"]),
    ("bool for an int", GOOD + "port = true\n", ["port: must be a whole number"]),
    ("int for a bool", GOOD + "syslog = 1\n", ["syslog: must be true or false"]),
    ("string for a float", GOOD + 'timeout = "2"\n', ["timeout: must be a number"]),
    ("int for a string", GOOD + "name = 5\n", ["name: must be a string"]),
    ("below the range", GOOD + "port = 0\n", ["port: must be at least 1"]),
    ("above the range", GOOD + "port = 65536\n", ["port: must be at most 65535"]),
    ("zero where positive", GOOD + "timeout = 0\n", ["timeout: must be greater than 0"]),
    ("infinity", GOOD + "timeout = inf\n", ["timeout: must be at most 300"]),
    ("empty string", GOOD + 'name = ""\n', ["name: must not be empty"]),
    ("long string", GOOD + f'name = "{"x" * 21}"\n', ["name: must be at most 20 characters long"]),
    ("not a choice", GOOD + 'mode = "hsm"\n', ["mode: must be one of 'file' or 'pkcs11'"]),
    ("relative path", 'state_dir = "relative/dir"\n', ["state_dir: must be an absolute path"]),
    ("NUL in a path", 'state_dir = "/var/\\u0000x"\n', ["state_dir: must be an absolute path"]),
    ("number for a path", "state_dir = 5\n", ["state_dir: must be a path"]),
    ("scalar for a list", GOOD + "uids = 5\n", ["uids: must be a list"]),
    (
        "bad list item",
        GOOD + 'uids = [1, "x", -1]\n',
        ["uids[1]: must be a whole number", "uids[2]: must be at least 0"],
    ),
    ("long list", GOOD + "uids = [1, 2, 3, 4]\n", ["uids: must have at most 3 entries"]),
    ("scalar for a table", GOOD + 'logs = "/x"\n', ["logs: must be a table"]),
    ("bad table value", GOOD + 'logs = { syslog = "x" }\n', ["logs.syslog: must be an absolute path"]),
    ("key with a newline", GOOD + '"a\\nb" = 1\n', ["'a\\nb': is not a known setting"]),
    ("cross-field rule", GOOD + "first = 3\nlast = 2\n", ["first must not be after last"]),
    ("a date", GOOD + "port = 2026-12-06\n", ["port: must be a whole number"]),
    (
        "several problems, each its own line",
        "port = 0\nsyslog = 1\nnope = 1\n",
        [
            "state_dir: is required: where the state lives",
            "port: must be at least 1",
            "syslog: must be true or false",
            "nope: is not a known setting",
        ],
    ),
]


@pytest.mark.parametrize(("text", "lines"), [row[1:] for row in HOSTILE], ids=[row[0] for row in HOSTILE])
def test_hostile_settings_are_refused_one_line_per_problem(
    write: Writer, text: str, lines: list[str]
) -> None:
    path = write(text)
    if not lines:
        load_toml(Example, path)
        return
    with pytest.raises(SettingsRefused) as caught:
        load_toml(Example, path)
    assert caught.value.problems == [f"{path}: {line}" for line in lines]
    assert str(caught.value) == "\n".join(caught.value.problems)


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (b"port = [", "not valid TOML (at end of document)"),
        (b'state_dir = "/x"\nport = 1\nport = 2\n', "not valid TOML (at line 3, column 9)"),
        (b'name = "\x01"\n', "not valid TOML (at line 1, column 9)"),
        (b'name = "\xff"\n', "not UTF-8 text"),
        (b"#" * 65 * 1024, "larger than 65536 bytes"),
    ],
    ids=["unclosed", "duplicate key", "control character", "not utf-8", "oversize"],
)
def test_unreadable_files_are_refused(write: Writer, content: bytes, line: str) -> None:
    path = write(content)
    with pytest.raises(SettingsRefused) as caught:
        load_toml(Example, path)
    assert caught.value.problems == [f"{path}: {line}"]


def test_the_size_limit_is_the_callers(write: Writer) -> None:
    path = write(GOOD + "#" * 100 + "\n")
    with pytest.raises(SettingsRefused, match="larger than 64 bytes"):
        load_toml(Example, path, max_bytes=64)
    assert load_toml(Example, path, max_bytes=1024).state_dir == Path("/var/lib/x")


def test_a_missing_file_is_its_own_refusal(tmp_path: Path) -> None:
    with pytest.raises(SettingsMissing) as caught:
        load_toml(Example, tmp_path / "nowhere.toml")
    assert caught.value.problems == [f"{tmp_path / 'nowhere.toml'}: does not exist"]


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsRefused, match="cannot read"):
        load_toml(Example, tmp_path)


# Every way a secret typed into the wrong place could come back out of a refusal.
SECRET_ROWS = [
    f'password = "{SECRET}"\n',  # an unknown key
    f'port = "{SECRET}"\n',  # a wrong type
    f'mode = "{SECRET}"\n',  # not a choice
    f'name = "{SECRET * 2}"\n',  # too long
    f'state_dir = "{SECRET}"\n',  # a custom validator
    f'uids = ["{SECRET}"]\n',  # a list item
    f'logs = {{ syslog = "{SECRET}" }}\n',  # a table value
    f'port = [ "{SECRET}"\n',  # not TOML
    f'name = "{SECRET}\x01"\n',  # not TOML, the bad character right after the secret
]


@pytest.mark.parametrize("text", SECRET_ROWS)
def test_a_refusal_never_echoes_the_value(write: Writer, text: str) -> None:
    with pytest.raises(SettingsRefused) as caught:
        load_toml(Example, write(text))
    exc = caught.value
    for shown in (str(exc), repr(exc), *map(str, exc.args), *exc.problems):
        assert SECRET not in shown
        assert SECRET[:8] not in shown  # nor a prefix of it
    # The ValidationError (which holds the input) is not chained: a traceback cannot print it.
    assert exc.__cause__ is None
    assert exc.__suppress_context__


def test_settings_from_code_and_env_get_the_same_refusal() -> None:
    with pytest.raises(SettingsRefused) as caught:
        validate(Example, {"state_dir": "/x", "port": "25"}, source="environment", key_prefix="APP_")
    assert caught.value.problems == ["environment: APP_port: must be a whole number"]
    # A Path object from code is a path; a bytes object is not.
    assert validate(Example, {"state_dir": Path("/x")}, source="code").state_dir == Path("/x")
    with pytest.raises(SettingsRefused, match="state_dir: must be a path"):
        validate(Example, {"state_dir": b"/x"}, source="code")


def test_problems_are_capped(write: Writer) -> None:
    text = GOOD + "".join(f"unknown{i} = 1\n" for i in range(30))
    with pytest.raises(SettingsRefused) as caught:
        load_toml(Example, write(text))
    assert len(caught.value.problems) == 21
    assert caught.value.problems[-1].endswith(": and 10 more problems")


def test_without_a_source_the_caller_names_it() -> None:
    # A command that prints "<file>: " once before the refusal passes no source.
    with pytest.raises(SettingsRefused) as caught:
        validate(Example, {"state_dir": "/x", "port": 0, "nope": 1}, source="")
    assert caught.value.problems == ["port: must be at least 1", "nope: is not a known setting"]
    with pytest.raises(SettingsRefused) as caught:
        loads_toml("port = [")
    assert caught.value.problems == ["not valid TOML (at end of document)"]
