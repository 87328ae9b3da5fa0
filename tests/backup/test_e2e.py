"""create -> send (real sshd) -> fetch -> restore into a fresh private MariaDB -> every record
byte-identical and every field decryptable through a keyd started on the restored state."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from backup import snapshot
from keyd.client import KeydClient
from tests.backup.conftest import Keys, Sshd
from tests.fixtures.mariadb import PrivateMariaDB
from tests.keyd.conftest import GENEROUS, ROOT, Running, make_keyd, traversable_tmp, unsealed_keyd
from tests.webapp.conftest import CHEAP_ARGON2, SECRET
from tests.webapp.keys.conftest import decrypt_all, rotate, seed_cards, stored
from webapp import create_app
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log
from webapp.records.tables import ENCRYPTED_COLUMNS, cards


def run_backup(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "backup", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def maria_url(server: PrivateMariaDB, database: str) -> str:
    return f"mysql+pymysql://root@localhost/{database}?unix_socket={server.socket}&charset=utf8mb4"


def new_database(server: PrivateMariaDB) -> str:
    name = "db_" + secrets.token_hex(4)
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    return maria_url(server, name)


@pytest.fixture
def daemon() -> Iterator[Running]:
    with unsealed_keyd() as running:
        yield running


@pytest.fixture
def fresh_mariadb(tmp_path: Path) -> Iterator[PrivateMariaDB]:
    """A second private MariaDB: the machine the backup is restored on."""
    server = PrivateMariaDB(tmp_path / "maria-restore")
    server.install()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def dump(url: str) -> dict[str, bytes]:
    engine = make_engine(url)
    encrypted = {t.name: {f: c.name for f, c in cols.items()} for t, cols in ENCRYPTED_COLUMNS.items()}
    snap = snapshot.create_snapshot(engine, keyd_state_dir=None, encrypted=encrypted, now=datetime.now(UTC))
    engine.dispose()
    return snapshot.read_snapshot(snap.archive).members


def last_audit(url: str) -> tuple[str, str] | None:
    """(event, detail) of the audit chain's newest record."""
    engine = make_engine(url)
    with engine.connect() as conn:
        last = conn.execute(
            sa.select(audit_log.c.event, audit_log.c.detail).order_by(audit_log.c.seq.desc())
        ).first()
    engine.dispose()
    return None if last is None else (last.event, last.detail)


def assert_restored(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Every row byte for byte, plus the one audit record the restore itself appends to the chain."""
    log = "db/audit_log.jsonl"
    assert {k for k in after if after[k] != before[k]} == {log, "db/audit_head.jsonl"}
    assert after[log].startswith(before[log])
    assert after[log].count(b"\n") == before[log].count(b"\n") + 1
    assert b'"backup.restored"' in after[log].splitlines()[-1]


def populate(url: str, daemon: Running, tmp_path: Path) -> dict[tuple[str, str], bytes]:
    """Users and audit records through the real app's commands; cards under two key versions."""
    engine = make_engine(url)
    migrate.upgrade(engine)
    with KeydClient(daemon.keyd.socket, timeout=10.0) as client:
        app = create_app(
            {
                "SECRET_KEY": SECRET,
                "DATABASE_URL": url,
                "INSTANCE_PATH": str(tmp_path / "inst"),
                **CHEAP_ARGON2,
            },
            vault=client,
        )
        runner = app.test_cli_runner()
        for name in ("alice", "bob"):
            r = runner.invoke(
                args=["users", "add", name, "--role", "clerk", "--password-stdin"],
                input="Quartz-Lantern-Mosaic-4817\n",
            )
            assert r.exit_code == 0, r.output
        app.extensions["strongroom"].engine.dispose()
        plain = seed_cards(engine, client, 60).plaintexts
        rotate(daemon)
        plain |= seed_cards(engine, client, 25, tag="v2-").plaintexts
    engine.dispose()
    return plain


def test_create_send_fetch_restore_verify(
    tmp_path: Path,
    mariadb: PrivateMariaDB,
    fresh_mariadb: PrivateMariaDB,
    daemon: Running,
    sshd: Sshd,
    backup_keys: Keys,
) -> None:
    source = new_database(mariadb)
    plaintexts = populate(source, daemon, tmp_path)
    out = tmp_path / "local-backups"
    out.mkdir()
    before = dump(source)  # the database as the backup must capture it
    made = run_backup(
        "create",
        "--database-url", source,
        "--keyd-state-dir", str(daemon.keyd.state_dir),
        "--recipient", str(backup_keys.recipient),
        "--signing-key", str(backup_keys.signing_key),
        "--out-dir", str(out),
    )  # fmt: skip
    path = Path(made.stdout.splitlines()[0])
    assert "key_versions={'1': 180, '2': 75}" in made.stdout
    assert run_backup("verify", str(path), "--signing-pub", str(backup_keys.signing_pub)).returncode == 0

    # The backup is anchored in the source's audit chain by its SHA-256.
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert last_audit(source) == ("backup.created", f"{path.name} sha256={digest}")

    sent = run_backup("send", str(path), *sshd.options())
    assert f"sent {sshd.remote_dir / path.name}" in sent.stdout
    assert (sshd.remote_dir / path.name).read_bytes() == path.read_bytes()
    assert not list(sshd.remote_dir.glob("*.partial"))

    fetched_dir = tmp_path / "restore-machine"
    fetched_dir.mkdir()
    run_backup("fetch", path.name, *sshd.options(), "--dest", str(fetched_dir))
    fetched = fetched_dir / path.name
    deep = run_backup(
        "verify",
        str(fetched),
        "--signing-pub",
        str(backup_keys.signing_pub),
        "--identity",
        str(backup_keys.identity),
    )
    assert "every checksum OK" in deep.stdout

    target = new_database(fresh_mariadb)
    with traversable_tmp() as tmp:
        restored_keyd = make_keyd(tmp / "k", extra=GENEROUS)
        restored = run_backup(
            "restore", str(fetched),
            "--signing-pub", str(backup_keys.signing_pub),
            "--identity", str(backup_keys.identity),
            "--database-url", target,
            "--keyd-state-dir", str(restored_keyd.state_dir),
        )  # fmt: skip
        assert "keyd state restored" in restored.stdout
        # 100 % of the rows, byte for byte (ciphertexts, password hashes, the audit chain), and the
        # chain goes on with one record of the restore itself.
        assert_restored(before, dump(target))
        assert last_audit(target) == ("backup.restored", f"{fetched.name} sha256={digest}")
        verified = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "webapp", "audit", "verify"],
            cwd=ROOT,
            env={**os.environ, "STRONGROOM_DATABASE_URL": target, "STRONGROOM_SECRET_KEY": SECRET,
                 "STRONGROOM_INSTANCE_PATH": str(tmp_path / "verify-inst")},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # keyd on the restored state, unsealed with the same operator key, opens every field.
        restored_keyd.start()
        try:
            restored_keyd.unseal(daemon.key)
            checked = run_backup(
                "check", "--database-url", target, "--keyd-socket", str(restored_keyd.socket)
            )
            assert "records=85 fields=255 decryptable=255 failed=0" in checked.stdout
            with KeydClient(restored_keyd.socket, timeout=10.0) as client:
                restored_engine = make_engine(target)
                assert decrypt_all(client, stored(restored_engine)) == plaintexts
                restored_engine.dispose()
        finally:
            restored_keyd.kill()  # even when an assertion failed: never leave a daemon behind

    # A second restore into the now non-empty database is refused and changes nothing.
    again = run_backup(
        "restore", str(fetched),
        "--signing-pub", str(backup_keys.signing_pub),
        "--identity", str(backup_keys.identity),
        "--database-url", target,
        check=False,
    )  # fmt: skip
    assert again.returncode == 1
    assert "not empty" in again.stderr


def test_check_reports_fields_that_do_not_decrypt(tmp_path: Path, daemon: Running) -> None:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    with KeydClient(daemon.keyd.socket, timeout=10.0) as client:
        seed_cards(engine, client, 3)
    blobs = stored(engine)
    (_cid, field), blob = sorted(blobs.items())[0]
    other = sorted(blobs)[-1][0]
    column = ENCRYPTED_COLUMNS[cards][field]
    with engine.begin() as conn:  # a ciphertext moved to another row: its context no longer matches
        conn.execute(sa.update(cards).where(cards.c.id == other).values({column.name: blob}))
    engine.dispose()
    result = run_backup("check", "--database-url", url, "--keyd-socket", str(daemon.keyd.socket), check=False)
    assert result.returncode == 1
    assert "fields=9 decryptable=8 failed=1" in result.stdout
    assert f"failed\tcards\t{other}\t{field}\tauthentication_failed" in result.stderr


def _sqlite_backup(tmp_path: Path, daemon: Running, keys: Keys) -> tuple[dict[str, bytes], Path]:
    src = f"sqlite:///{tmp_path / 'src.db'}"
    engine = make_engine(src)
    migrate.upgrade(engine)
    with KeydClient(daemon.keyd.socket, timeout=10.0) as client:
        seed_cards(engine, client, 12)
    engine.dispose()
    out = tmp_path / "out"
    out.mkdir()
    before = dump(src)
    made = run_backup(
        "create", "--database-url", src, "--keyd-state-dir", str(daemon.keyd.state_dir),
        "--recipient", str(keys.recipient), "--signing-key", str(keys.signing_key), "--out-dir", str(out),
    )  # fmt: skip
    return before, Path(made.stdout.splitlines()[0])


def test_sqlite_restore_checks_through_a_running_keyd(
    tmp_path: Path, daemon: Running, backup_keys: Keys
) -> None:
    before, path = _sqlite_backup(tmp_path, daemon, backup_keys)
    target = f"sqlite:///{tmp_path / 'restored.db'}"
    result = run_backup(
        "restore", str(path),
        "--signing-pub", str(backup_keys.signing_pub), "--identity", str(backup_keys.identity),
        "--database-url", target, "--keyd-socket", str(daemon.keyd.socket),
    )  # fmt: skip
    assert "records=12 fields=36 decryptable=36 failed=0" in result.stdout
    assert "ciphertexts per key version in the backup: {'1': 36}" in result.stdout
    assert_restored(before, dump(target))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda d: d[:-100], "signature does not verify"),
        (lambda d: d[:30] + bytes([d[30] ^ 1]) + d[31:], "signature does not verify"),
        (lambda d: b"", "truncated"),
    ],
    ids=["truncated", "flipped", "empty"],
)
def test_restore_refuses_a_damaged_backup_and_writes_nothing(
    tmp_path: Path, daemon: Running, backup_keys: Keys, damage: object, reason: str
) -> None:
    _src, path = _sqlite_backup(tmp_path, daemon, backup_keys)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    target_file = tmp_path / "restored.db"
    state = tmp_path / "restored-keyd"
    result = run_backup(
        "restore", str(path),
        "--signing-pub", str(backup_keys.signing_pub), "--identity", str(backup_keys.identity),
        "--database-url", f"sqlite:///{target_file}", "--keyd-state-dir", str(state),
        check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert reason in result.stderr
    assert not target_file.exists()
    assert not state.exists()
