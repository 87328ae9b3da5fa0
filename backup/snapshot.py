"""A consistent snapshot of the database and keyd's non-secret state, as one archive with a manifest.

The database is read in ONE transaction: on MariaDB `START TRANSACTION WITH CONSISTENT SNAPSHOT,
READ ONLY` at REPEATABLE READ (InnoDB serves every table from the same point in time, without locks,
so the web app keeps running); on SQLite a deferred read transaction, which under WAL sees one
snapshot. Rows are written as they are stored: ciphertexts stay ciphertexts, bytes for bytes.

Archive (a gzip'd tar, in memory): `manifest.json`, `db/<table>.jsonl` (one JSON array per row, in
primary-key order), `keyd/<file>` (state.json and friends; the key itself is never on disk, so never
here). The manifest holds each member's SHA-256 and row count, the schema revisions, and the number
of ciphertexts per key version, so a restore can check all of it before writing anything.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from backup.archive import BackupRefused
from keyd.client import key_version
from keyd.state import State, StateError
from webapp.db.engine import READ_ONLY

FORMAT = 1
# keyd's state dir minus anything that is not its own known, non-secret file (keyd/state.py).
KEYD_FILES = ("state.json", "budgets.json", "events.jsonl")
MAX_MEMBER = 1024**3
MAX_MEMBERS = 1000
_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
SKIP_TABLES = {"alembic_version"}  # its content is the manifest's "schema"


# --- values --------------------------------------------------------------------------------------


def encode_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"b": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, datetime):
        return {"dt": v.isoformat()}
    if isinstance(v, date):
        return {"d": v.isoformat()}
    if isinstance(v, Decimal):
        return {"n": str(v)}
    if isinstance(v, float):
        return {"f": repr(v)}
    raise BackupRefused(f"a column holds a value of type {type(v).__name__} that backups do not know")


def decode_value(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, dict) and len(v) == 1:
        ((tag, text),) = v.items()
        if isinstance(text, str):
            try:
                if tag == "b":
                    return base64.b64decode(text, validate=True)
                if tag == "dt":
                    return datetime.fromisoformat(text)
                if tag == "d":
                    return date.fromisoformat(text)
                if tag == "n":
                    return Decimal(text)
                if tag == "f":
                    return float(text)
            except ValueError:
                pass
    raise BackupRefused("a row holds a value this tool cannot decode")


# --- dump ----------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    archive: bytes  # the gzip'd tar
    manifest: dict[str, Any]


def _reflect(engine: sa.Engine) -> sa.MetaData:
    md = sa.MetaData()
    md.reflect(bind=engine)
    return md


def _snapshot_conn(engine: sa.Engine) -> sa.Connection:
    if engine.dialect.name == "sqlite":
        # webapp's engine turns this option into BEGIN DEFERRED: one WAL snapshot, no write lock.
        conn = engine.connect().execution_options(**{READ_ONLY: True})
        conn.exec_driver_sql("SELECT 1")  # starts the transaction
        return conn
    if engine.dialect.name in ("mysql", "mariadb"):
        conn = engine.connect().execution_options(isolation_level="REPEATABLE READ")
        conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        return conn
    raise BackupRefused(f"unsupported database backend {engine.dialect.name}")


def _add(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime)
    info.mode = 0o600
    tar.addfile(info, io.BytesIO(data))


def create_snapshot(
    engine: sa.Engine,
    *,
    keyd_state_dir: Path | None,
    encrypted: dict[str, dict[str, str]],
    now: datetime,
    progress: Callable[[str, int], None] = lambda _t, _n: None,
) -> Snapshot:
    """Dump every table of the database (and keyd's state files) into an archive with a manifest.

    `encrypted` is {table: {field: column name}} from the app's registry: its columns are counted
    per key version for the manifest.
    """
    md = _reflect(engine)
    members: dict[str, bytes] = {}
    tables: dict[str, Any] = {}
    versions: Counter[str] = Counter()
    conn = _snapshot_conn(engine)
    try:
        schema = sorted(r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version")))
        for table in md.sorted_tables:
            if table.name in SKIP_TABLES:
                continue
            cols = [c.name for c in table.columns]
            order = list(table.primary_key.columns) or list(table.columns)
            enc_cols = {cols.index(c) for c in encrypted.get(table.name, {}).values() if c in cols}
            buf = io.BytesIO()
            n = 0
            for row in conn.execute(sa.select(table).order_by(*order)):
                for i in enc_cols:
                    if row[i] is not None:
                        try:
                            versions[str(key_version(bytes(row[i])))] += 1
                        except ValueError:
                            versions["not-a-ciphertext"] += 1
                buf.write(json.dumps([encode_value(v) for v in row], separators=(",", ":")).encode())
                buf.write(b"\n")
                n += 1
            data = buf.getvalue()
            members[f"db/{table.name}.jsonl"] = data
            tables[table.name] = {"columns": cols, "rows": n, "sha256": hashlib.sha256(data).hexdigest()}
            progress(table.name, n)
    finally:
        conn.rollback()
        conn.close()
    keyd: dict[str, Any] = {}
    if keyd_state_dir is not None:
        for name in KEYD_FILES:
            path = keyd_state_dir / name
            if path.exists():
                data = path.read_bytes()
                members[f"keyd/{name}"] = data
                keyd[name] = hashlib.sha256(data).hexdigest()
        if "state.json" not in keyd:
            raise BackupRefused(f"{keyd_state_dir} holds no keyd state.json")
        state = _keyd_state(members["keyd/state.json"])
        keyd_info = {
            "current_version": state.current_version,
            "min_decrypt_version": state.min_decrypt_version,
        }
    else:
        keyd_info = {}
    manifest = {
        "format": FORMAT,
        "created_at": now.astimezone(UTC).isoformat(),
        "database": engine.dialect.name,
        "schema": schema,
        "tables": tables,
        "key_versions": dict(sorted(versions.items())),
        "keyd": {"files": keyd, **keyd_info},
    }
    raw = io.BytesIO()
    mtime = time.time()
    # gzip without a file name or timestamp of its own; the tar carries the times.
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        _add(tar, "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode(), mtime)
        for name, data in members.items():
            _add(tar, name, data, mtime)
    return Snapshot(raw.getvalue(), manifest)


def _keyd_state(data: bytes) -> State:
    try:
        return State.from_json(json.loads(data))
    except (StateError, ValueError) as exc:
        raise BackupRefused(f"keyd's state.json in the backup does not parse ({exc})") from None


# --- read back -----------------------------------------------------------------------------------


@dataclass
class Opened:
    manifest: dict[str, Any]
    members: dict[str, bytes]


def read_snapshot(archive: bytes) -> Opened:
    """Parse the archive strictly and check every member against the manifest."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for info in tar:
                if len(members) >= MAX_MEMBERS:
                    raise BackupRefused("the archive has too many members")
                if not info.isreg() or info.size > MAX_MEMBER or info.name in members:
                    raise BackupRefused("the archive holds an unexpected member")
                if not (
                    info.name == "manifest.json"
                    or re.fullmatch(r"(db/[a-z0-9_]+\.jsonl|keyd/[a-z.]+)", info.name)
                ):
                    raise BackupRefused("the archive holds an unexpected member name")
                f = tar.extractfile(info)
                if f is None:
                    raise BackupRefused("the archive holds an unreadable member")
                members[info.name] = f.read()
    except (tarfile.TarError, OSError, EOFError):
        raise BackupRefused("the archive inside the backup is damaged") from None
    try:
        manifest = json.loads(members.pop("manifest.json"))
    except (KeyError, ValueError):
        raise BackupRefused("the archive has no readable manifest") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupRefused("the manifest is of an unknown format")
    _check_manifest_shape(manifest)
    expected = {f"db/{t}.jsonl": m["sha256"] for t, m in manifest["tables"].items()}
    expected |= {f"keyd/{n}": h for n, h in manifest["keyd"]["files"].items()}
    if set(expected) != set(members):
        raise BackupRefused("the archive's members do not match its manifest")
    for name, digest in expected.items():
        if hashlib.sha256(members[name]).hexdigest() != digest:
            raise BackupRefused(f"checksum mismatch for {name}")
    for t, m in manifest["tables"].items():
        if not _TABLE_NAME.match(t):
            raise BackupRefused("the manifest names an impossible table")
        if members[f"db/{t}.jsonl"].count(b"\n") != m["rows"]:
            raise BackupRefused(f"row count mismatch for {t}")
    if "keyd/state.json" in members:
        _keyd_state(members["keyd/state.json"])
    return Opened(manifest, members)


def _check_manifest_shape(m: dict[str, Any]) -> None:
    """Every field the restore reads, with its type: a bad manifest is refused, never a traceback."""
    try:
        ok = (
            isinstance(m["schema"], list)
            and all(isinstance(r, str) for r in m["schema"])
            and isinstance(m["tables"], dict)
            and all(
                isinstance(t, dict)
                and isinstance(t["rows"], int)
                and isinstance(t["sha256"], str)
                and isinstance(t["columns"], list)
                and all(isinstance(c, str) for c in t["columns"])
                for t in m["tables"].values()
            )
            and isinstance(m["keyd"], dict)
            and isinstance(m["keyd"]["files"], dict)
            and all(isinstance(h, str) for h in m["keyd"]["files"].values())
            and isinstance(m["key_versions"], dict)
        )
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise BackupRefused("the manifest is malformed")


def rows_of(opened: Opened, table: str) -> list[list[Any]]:
    out = []
    for line in opened.members[f"db/{table}.jsonl"].splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            raise BackupRefused(f"a row of {table} is not JSON") from None
        if not isinstance(row, list) or len(row) != len(opened.manifest["tables"][table]["columns"]):
            raise BackupRefused(f"a row of {table} has the wrong shape")
        out.append([decode_value(v) for v in row])
    return out


# --- restore -------------------------------------------------------------------------------------


def restore_database(
    engine: sa.Engine,
    opened: Opened,
    *,
    migrate: Callable[[sa.Engine], None],
    heads: list[str],
    progress: Callable[[str, int], None] = lambda _t, _n: None,
) -> dict[str, int]:
    """Into an EMPTY database: create the schema with the code's migrations, then every row, in one
    transaction. Refuses a non-empty target, or a backup of another schema, before writing anything."""
    if sorted(heads) != sorted(opened.manifest["schema"]):
        raise BackupRefused(
            f"the backup is of schema {opened.manifest['schema']}, this code creates {sorted(heads)}: "
            "restore with the release that made the backup"
        )
    if sa.inspect(engine).get_table_names():
        raise BackupRefused("the target database is not empty: restore only into an empty database")
    migrate(engine)
    md = _reflect(engine)
    wanted = opened.manifest["tables"]
    present = {t.name for t in md.sorted_tables} - SKIP_TABLES
    if present != set(wanted):
        raise BackupRefused("the migrated schema's tables differ from the backup's")
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        for table in reversed(md.sorted_tables):
            if table.name not in SKIP_TABLES:
                conn.execute(sa.delete(table))  # rows the migrations seeded (e.g. the audit chain head)
        for table in md.sorted_tables:
            if table.name in SKIP_TABLES:
                continue
            cols = wanted[table.name]["columns"]
            if cols != [c.name for c in table.columns]:
                raise BackupRefused(f"the columns of {table.name} differ from the backup's")
            rows = [dict(zip(cols, r, strict=True)) for r in rows_of(opened, table.name)]
            for start in range(0, len(rows), 1000):
                conn.execute(sa.insert(table), rows[start : start + 1000])
            counts[table.name] = len(rows)
            progress(table.name, len(rows))
    return counts


def restore_keyd_state(opened: Opened, target: Path) -> list[str]:
    """keyd's files into a new, empty state dir (0700, files 0600). The key is not among them."""
    if target.exists() and any(target.iterdir()):
        raise BackupRefused(f"{target} is not empty: keyd state is restored only into a new directory")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    written = []
    for name in KEYD_FILES:
        data = opened.members.get(f"keyd/{name}")
        if data is None:
            continue
        fd = os.open(target / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        written.append(name)
    return written
