"""The backup file format: tampering, truncation, foreign signers and the wrong key are all refused."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from backup import archive
from backup.archive import MAGIC, SIG_LEN, BackupRefused
from tests.backup.conftest import Keys
from tests.support import need_binary

PLAIN = b"manifest customer_records C1234567 " * 200


@pytest.fixture
def sealed(tmp_path: Path, backup_keys: Keys) -> Path:
    out = tmp_path / "b.sbk"
    archive.seal(
        PLAIN,
        recipient=archive.load_recipient(str(backup_keys.recipient)),
        signing_key=archive.load_signing_key(backup_keys.signing_key),
        out=out,
    )
    return out


def _open(path: Path, keys: Keys) -> bytes:
    return archive.open_sealed(
        path,
        verify_key=archive.load_verify_key(keys.signing_pub),
        identity=archive.load_identity(keys.identity),
    )


def test_round_trip(sealed: Path, backup_keys: Keys) -> None:
    assert _open(sealed, backup_keys) == PLAIN
    assert sealed.stat().st_mode & 0o777 == 0o600


def test_the_file_reveals_nothing_without_the_offline_key(
    sealed: Path, backup_keys: Keys, tmp_path: Path
) -> None:
    data = sealed.read_bytes()
    for marker in (b"customer_records", b"C1234567", b"manifest"):
        assert marker not in data
    other = tmp_path / "other-identity.txt"
    other.write_text(archive.new_identity()[0] + "\n")
    other.chmod(0o600)
    with pytest.raises(BackupRefused, match="cannot be decrypted with this identity"):
        archive.open_sealed(
            sealed,
            verify_key=archive.load_verify_key(backup_keys.signing_pub),
            identity=archive.load_identity(other),
        )


def _resign(data: bytes, keys: Keys) -> bytes:
    """What an attacker holding the server's signing key could do: sign a modified body."""
    body = data[:-SIG_LEN]
    sig = archive.load_signing_key(keys.signing_key).sign(archive.DOMAIN + hashlib.sha512(body).digest())
    return body + sig


def _flip(at: int) -> Callable[[bytes, Keys], bytes]:
    def f(data: bytes, _keys: Keys) -> bytes:
        b = bytearray(data)
        b[at] ^= 0x40
        return bytes(b)

    return f


TAMPERING: list[tuple[str, Callable[[bytes, Keys], bytes], str]] = [
    ("empty", lambda d, k: b"", "truncated"),
    ("magic only", lambda d, k: d[: len(MAGIC)], "truncated"),
    ("cut in the body", lambda d, k: d[: len(d) // 2], "signature does not verify"),
    ("cut the signature", lambda d, k: d[:-1], "signature does not verify"),
    ("one byte appended", lambda d, k: d + b"\0", "signature does not verify"),
    ("magic changed", _flip(3), "bad magic"),
    ("header byte changed", _flip(len(MAGIC) + 30), "signature does not verify"),
    ("last body byte changed", _flip(-SIG_LEN - 1), "signature does not verify"),
    ("signature changed", _flip(-1), "signature does not verify"),
    (
        "body changed and re-signed",
        lambda d, k: _resign(_flip(-SIG_LEN - 20)(d, k), k),
        "age authentication failed",
    ),
    (
        "body truncated and re-signed",
        lambda d, k: _resign(d[: len(MAGIC) + (len(d) - len(MAGIC) - SIG_LEN) // 2] + d[-SIG_LEN:], k),
        "age authentication failed",
    ),
]


@pytest.mark.parametrize(("how", "mutate", "reason"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampered_or_truncated_backups_are_refused(
    sealed: Path, backup_keys: Keys, how: str, mutate: Callable[[bytes, Keys], bytes], reason: str
) -> None:
    sealed.write_bytes(mutate(sealed.read_bytes(), backup_keys))
    with pytest.raises(BackupRefused, match=reason):
        _open(sealed, backup_keys)


def test_a_backup_signed_by_another_key_is_refused(sealed: Path, backup_keys: Keys, tmp_path: Path) -> None:
    _private, public = archive.new_signing_key()
    (tmp_path / "other.pub").write_bytes(public)
    with pytest.raises(BackupRefused, match="signature does not verify"):
        archive.open_sealed(
            sealed,
            verify_key=archive.load_verify_key(tmp_path / "other.pub"),
            identity=archive.load_identity(backup_keys.identity),
        )


@pytest.mark.parametrize(
    ("content", "mode", "reason"),
    [
        ("AGE-SECRET-KEY-1XYZ\n", 0o644, "readable by others"),
        ("not a key\n", 0o600, "does not hold an age X25519 identity"),
        ("", 0o600, "exactly one age identity"),
    ],
)
def test_bad_identity_files_are_refused(tmp_path: Path, content: str, mode: int, reason: str) -> None:
    path = tmp_path / "id.txt"
    path.write_text(content)
    os.chmod(path, mode)
    with pytest.raises(BackupRefused, match=reason):
        archive.load_identity(path)


@pytest.mark.parametrize("text", ["", "age1notakey", "ssh-ed25519 AAAA", "AGE-SECRET-KEY-1QQQ"])
def test_bad_recipients_are_refused(text: str) -> None:
    with pytest.raises(BackupRefused, match="not an age X25519 public key"):
        archive.load_recipient(text)


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_a_recipient_file_others_may_rewrite_is_refused(backup_keys: Keys, mode: int) -> None:
    backup_keys.recipient.chmod(mode)
    with pytest.raises(BackupRefused, match="writable by others"):
        archive.load_recipient(str(backup_keys.recipient))
    backup_keys.signing_pub.chmod(mode)
    with pytest.raises(BackupRefused, match="writable by others"):
        archive.load_verify_key(backup_keys.signing_pub)


def test_the_reference_age_tool_opens_the_body(sealed: Path, backup_keys: Keys, tmp_path: Path) -> None:
    """docs/backup.md promises the offline side can also use Debian's `age` (the Go reference)."""
    age = need_binary("age")
    body = sealed.read_bytes()[len(MAGIC) : -SIG_LEN]
    (tmp_path / "body.age").write_bytes(body)
    out = subprocess.run(
        [age, "-d", "-i", str(backup_keys.identity), str(tmp_path / "body.age")],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert out.stdout == PLAIN
