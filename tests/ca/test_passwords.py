"""ca/passwords.py: generated bundle passwords, strength checks, passphrase files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from zxcvbn import zxcvbn

from ca.errors import CAError
from ca.passwords import ALPHABET, check_strength, generate_password, read_secret_file


def test_generated_passwords_are_long_unambiguous_and_strong() -> None:
    seen = {generate_password() for _ in range(50)}
    assert len(seen) == 50
    for pw in seen:
        groups = pw.split("-")
        assert [len(g) for g in groups] == [5] * 5
        assert set("".join(groups)) <= set(ALPHABET)
        assert zxcvbn(pw)["score"] == 4
    assert not set("0Oo1lI") & set(ALPHABET)


def test_a_strong_typed_password_passes() -> None:
    check_strength("tundra-velvet-orchid-42-saffron", what="bundle password", context=["alice"])


def _secret(tmp_path: Path, data: bytes, mode: int = 0o600) -> Path:
    path = tmp_path / "pass"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_secret_file_strips_one_newline_only(tmp_path: Path) -> None:
    assert read_secret_file(_secret(tmp_path, b" pass phrase \n"), what="x") == b" pass phrase "


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: _secret(p, b"\n"), "the x file {p}/pass is empty"),
        (lambda p: _secret(p, b"a" * 5000), "the x file {p}/pass is too large to be a passphrase"),
        (
            lambda p: _secret(p, b"secret", 0o640),
            "the x file {p}/pass is readable by others: chmod 600 {p}/pass",
        ),
        (lambda p: p, "the x file {p} is not a regular file"),
        (lambda p: p / "missing", "the x file {p}/missing does not exist"),
    ],
    ids=["empty", "huge", "group-readable", "directory", "missing"],
)
def test_bad_secret_files_are_refused(tmp_path: Path, setup: object, message: str) -> None:
    assert callable(setup)
    path = setup(tmp_path)
    with pytest.raises(CAError) as info:
        read_secret_file(path, what="x")
    assert str(info.value) == message.format(p=tmp_path)


def test_a_symlinked_secret_file_is_refused(tmp_path: Path) -> None:
    target = _secret(tmp_path, b"secret")
    link = tmp_path / "link"
    os.symlink(target, link)
    with pytest.raises(CAError, match="cannot open the x file"):
        read_secret_file(link, what="x")
