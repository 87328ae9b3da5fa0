"""Snapshots on SQLite: round trip, manifest checks, strict archive parsing, restore refusals."""

from __future__ import annotations

import gzip
import io
import json
import secrets
import tarfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backup import snapshot
from backup.archive import BackupRefused
from tests.fixtures.mariadb import PrivateMariaDB
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.db.tables import users

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ENCRYPTED = {"cards": {"pan": "pan_ct", "cardholder": "name_ct", "expiry": "expiry_ct"}}


def database(tmp_path: Path, name: str, *, rows: int = 0) -> sa.Engine:
    engine = make_engine(f"sqlite:///{tmp_path / name}")
    migrate.upgrade(engine)
    with engine.begin() as conn:
        for i in range(rows):
            conn.execute(
                sa.insert(users).values(
                    username=f"user{i}",
                    role="clerk",
                    password_hash="$argon2id$fake",
                    active=True,
                    failed_logins=0,
                    created_at=datetime(2026, 1, 1, 0, 0, 0, 123456),
                    password_changed_at=datetime(2026, 1, 1),
                )
            )
    return engine


def heads() -> list[str]:
    from alembic.script import ScriptDirectory

    return list(ScriptDirectory.from_config(migrate.alembic_config()).get_heads())


def test_sqlite_round_trip_is_byte_identical(tmp_path: Path) -> None:
    src = database(tmp_path, "src.db", rows=3)
    snap = snapshot.create_snapshot(src, keyd_state_dir=None, encrypted=ENCRYPTED, now=NOW)
    assert snap.manifest["tables"]["users"]["rows"] == 3
    opened = snapshot.read_snapshot(snap.archive)
    dst = make_engine(f"sqlite:///{tmp_path / 'dst.db'}")
    counts = snapshot.restore_database(dst, opened, migrate=migrate.upgrade, heads=heads())
    assert counts["users"] == 3
    again = snapshot.create_snapshot(dst, keyd_state_dir=None, encrypted=ENCRYPTED, now=NOW)
    assert snapshot.read_snapshot(again.archive).members == opened.members


def test_restore_refuses_another_schema_before_touching_the_target(tmp_path: Path) -> None:
    snap = snapshot.create_snapshot(
        database(tmp_path, "src.db"), keyd_state_dir=None, encrypted=ENCRYPTED, now=NOW
    )
    dst = make_engine(f"sqlite:///{tmp_path / 'dst.db'}")
    with pytest.raises(BackupRefused, match="restore with the release that made the backup"):
        snapshot.restore_database(
            dst, snapshot.read_snapshot(snap.archive), migrate=migrate.upgrade, heads=["9999"]
        )
    assert sa.inspect(dst).get_table_names() == []


def _rebuild(archive: bytes, change: Any) -> bytes:
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for info in tar:
            f = tar.extractfile(info)
            assert f is not None
            members[info.name] = f.read()
    change(members)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _set_manifest(key: str, value: Any) -> Any:
    def change(m: dict[str, bytes]) -> None:
        manifest = json.loads(m["manifest.json"])
        manifest[key] = value
        m["manifest.json"] = json.dumps(manifest).encode()

    return change


def _append_row(m: dict[str, bytes]) -> None:
    m["db/users.jsonl"] += b"[]\n"


HOSTILE = [
    ("row added", _append_row, "checksum mismatch for db/users.jsonl"),
    ("member removed", lambda m: m.pop("db/users.jsonl"), "members do not match its manifest"),
    ("member added", lambda m: m.__setitem__("db/evil.jsonl", b""), "members do not match its manifest"),
    ("path traversal", lambda m: m.__setitem__("../../etc/passwd", b"x"), "unexpected member name"),
    ("no manifest", lambda m: m.pop("manifest.json"), "no readable manifest"),
    ("manifest garbage", lambda m: m.__setitem__("manifest.json", b"{"), "no readable manifest"),
    ("future format", _set_manifest("format", 2), "unknown format"),
    ("tables not a mapping", _set_manifest("tables", []), "manifest is malformed"),
    ("schema not a list", _set_manifest("schema", "0001"), "manifest is malformed"),
    ("no keyd section", _set_manifest("keyd", None), "manifest is malformed"),
    (
        "rows not a number",
        _set_manifest("tables", {"users": {"rows": "1", "sha256": "x", "columns": []}}),
        "malformed",
    ),
]


@pytest.mark.parametrize(("how", "change", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_damaged_archive_is_refused(tmp_path: Path, how: str, change: Any, reason: str) -> None:
    snap = snapshot.create_snapshot(
        database(tmp_path, "src.db", rows=1), keyd_state_dir=None, encrypted=ENCRYPTED, now=NOW
    )
    with pytest.raises(BackupRefused, match=reason):
        snapshot.read_snapshot(_rebuild(snap.archive, change))


def test_not_an_archive_is_refused() -> None:
    with pytest.raises(BackupRefused, match="damaged"):
        snapshot.read_snapshot(b"\x1f\x8b not really gzip")


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -5,
        2**40,
        "",
        "ünïcode",
        b"",
        b"\x00\xff",
        datetime(2026, 1, 2, 3, 4, 5, 6),
        date(2026, 1, 2),
        Decimal("1.10"),
        0.5,
    ],
)
def test_values_round_trip(value: Any) -> None:
    encoded = json.loads(json.dumps(snapshot.encode_value(value)))
    back = snapshot.decode_value(encoded)
    assert back == value
    assert type(back) is type(value) or isinstance(value, (bytes, bytearray))


@pytest.mark.parametrize(
    "encoded", [{"b": "!!!"}, {"dt": "yesterday"}, {"x": "1"}, {"b": 1}, [1], {"b": "", "dt": ""}]
)
def test_bad_values_are_refused(encoded: Any) -> None:
    with pytest.raises(BackupRefused, match="cannot decode"):
        snapshot.decode_value(encoded)


def test_mariadb_snapshot_is_one_point_in_time(mariadb: PrivateMariaDB) -> None:
    """Rows committed by others while the dump runs (after its first table) are not in the backup."""
    name = "snap_" + secrets.token_hex(4)
    conn = mariadb.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}`")
    conn.close()
    engine = make_engine(
        f"mysql+pymysql://root@localhost/{name}?unix_socket={mariadb.socket}&charset=utf8mb4"
    )
    migrate.upgrade(engine)
    writer = make_engine(engine.url.render_as_string(hide_password=False))
    late = {
        "role": "clerk",
        "password_hash": "x",
        "active": True,
        "failed_logins": 0,
        "created_at": NOW.replace(tzinfo=None),
        "password_changed_at": NOW.replace(tzinfo=None),
    }
    dumped: list[str] = []

    def meanwhile(table: str, _rows: int) -> None:
        # After the first table, another client commits users the dump has not read yet.
        dumped.append(table)
        if len(dumped) == 1:
            with writer.begin() as w:
                w.execute(sa.insert(users), [{"username": f"late{i}", **late} for i in range(3)])

    snap = snapshot.create_snapshot(
        engine, keyd_state_dir=None, encrypted=ENCRYPTED, now=NOW, progress=meanwhile
    )
    assert dumped.index("users") > 0  # users was read after the insert had committed
    assert snap.manifest["tables"]["users"]["rows"] == 0
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(users)).scalar() == 3
    writer.dispose()
    engine.dispose()
