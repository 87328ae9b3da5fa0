"""Fixtures for key rotation: a real unsealed keyd per test (rotation changes its state) and seeded cards."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from keyd.client import Context, KeydAdminClient, KeydClient
from tests.fixtures.mariadb import PrivateMariaDB
from tests.keyd.conftest import ROOT, Running, unsealed_keyd
from tests.webapp.conftest import SECRET, MariaBackend
from webapp.db.engine import READ_ONLY
from webapp.keys.tables import key_rewrap_checkpoints
from webapp.records.tables import ENCRYPTED_COLUMNS, cards, customer_records

NOW = datetime(2026, 11, 25, 10, 0)


@pytest.fixture
def daemon() -> Iterator[Running]:
    with unsealed_keyd() as running:
        yield running


@pytest.fixture
def keyd_client(daemon: Running) -> Iterator[KeydClient]:
    with KeydClient(daemon.keyd.socket, timeout=10.0) as client:
        yield client


@pytest.fixture
def vault(keyd_client: KeydClient) -> KeydClient:
    """Replaces tests/webapp's FakeVault: the app talks to the real keyd."""
    return keyd_client


KEYS_GRANTS = Path(__file__).resolve().parents[3] / "webapp" / "db" / "grants-keys.sql"
KEYS_DB_USER = "strongroom_keys"


@pytest.fixture(scope="session")
def keys_db_password(maria_backend: MariaBackend) -> str:
    """The maintenance user of docs/key-rotation.md, with exactly the grants of db/grants-keys.sql."""
    password = secrets.token_urlsafe(18)
    conn = maria_backend.server.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE USER '{KEYS_DB_USER}'@'localhost' IDENTIFIED BY %s", (password,))
    conn.close()
    maria_backend.server.client(maria_backend.database, KEYS_GRANTS.read_text())
    return password


@pytest.fixture
def keys_db_url(request: pytest.FixtureRequest, db_url: str) -> str:
    """Where the rewrap job connects: on MariaDB its own least-privileged user, as in production."""
    if db_url.startswith("sqlite"):
        return db_url
    backend: MariaBackend = request.getfixturevalue("maria_backend")
    password: str = request.getfixturevalue("keys_db_password")
    return backend.server.url(KEYS_DB_USER, password, backend.database)


@pytest.fixture
def keys_app(make_app: Callable[..., Flask], daemon: Running, keys_db_url: str) -> Flask:
    # The rewrap job runs as the maintenance user (the app's own user may not UPDATE ciphertexts).
    return make_app(KEYD_SOCKET=str(daemon.keyd.socket), KEYS_DATABASE_URL=keys_db_url)


def rotate(daemon: Running) -> int:
    with KeydAdminClient(daemon.keyd.socket, timeout=10.0) as admin:
        version = admin.rotate(actor="tester").key_version
    assert version is not None
    return version


@dataclass(frozen=True)
class Seeded:
    plaintexts: dict[tuple[str, str], bytes]  # (card id, field) -> plaintext


def seed_cards(engine: sa.Engine, client: KeydClient, n: int, *, tag: str = "") -> Seeded:
    """n cards with every registered encrypted field, encrypted by the real keyd under its current version."""
    fields = ENCRYPTED_COLUMNS[cards]
    plain: dict[tuple[str, str], bytes] = {}
    rows: list[dict[str, Any]] = []
    with engine.begin() as conn:
        record_id = conn.execute(
            sa.insert(customer_records).values(crm_ref="C1234567", created_at=NOW, created_by="seed")
        ).inserted_primary_key[0]  # type: ignore[index]
    for start in range(0, n, 300):
        ids = [secrets.token_hex(16) for _ in range(min(300, n - start))]
        items = [(Context(cid, f), f"{tag}{f}-{cid}".encode()) for cid in ids for f in fields]
        out = client.encrypt_batch(items, actor="seed", purpose="seed")
        by_id: dict[str, dict[str, Any]] = {}
        for (ctx, data), ct in zip(items, out, strict=True):
            assert isinstance(ct, bytes)
            plain[(ctx.record_id, ctx.field)] = data
            by_id.setdefault(ctx.record_id, {})[fields[ctx.field].name] = ct
        rows += [
            {
                "id": cid,
                "record_id": record_id,
                "brand": "visa",
                "last4": "1111",
                "created_at": NOW,
                "created_by": "seed",
                **cols,
            }
            for cid, cols in by_id.items()
        ]
    with engine.begin() as conn:
        for start in range(0, len(rows), 500):
            conn.execute(sa.insert(cards), rows[start : start + 500])
    return Seeded(plain)


def stored(engine: sa.Engine) -> dict[tuple[str, str], bytes]:
    fields = ENCRYPTED_COLUMNS[cards]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cards.c.id, *fields.values())).all()
    return {(r[0], f): bytes(r[i]) for r in rows for i, f in enumerate(fields, start=1)}


def decrypt_all(client: KeydClient, blobs: dict[tuple[str, str], bytes]) -> dict[tuple[str, str], bytes]:
    keys = sorted(blobs)
    out: dict[tuple[str, str], bytes] = {}
    for start in range(0, len(keys), 900):
        chunk = keys[start : start + 900]
        res = client.decrypt_batch(
            [(Context(cid, f), blobs[(cid, f)]) for cid, f in chunk], actor="check", purpose="check"
        )
        for k, r in zip(chunk, res, strict=True):
            assert isinstance(r, bytes), f"{k} does not decrypt: {r!r}"
            out[k] = r
    return out


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database for one test: a SQLite file, or a new database on the private MariaDB."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'vault.db'}"
    server: PrivateMariaDB = request.getfixturevalue("mariadb")
    name = "kill_" + secrets.token_hex(4)
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    return f"mysql+pymysql://root@localhost/{name}?unix_socket={server.socket}&charset=utf8mb4"


def job_env(url: str, daemon: Running, tmp_path: Path) -> dict[str, str]:
    """The environment a `flask keys ...` job runs in: this test's database, keyd and instance."""
    return {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | {
        "STRONGROOM_SECRET_KEY": SECRET,
        "STRONGROOM_DATABASE_URL": url,
        "STRONGROOM_KEYD_SOCKET": str(daemon.keyd.socket),
        "STRONGROOM_INSTANCE_PATH": str(tmp_path / "instance"),
        "COLUMNS": "100",
    }


def kill_rewrap_midway(engine: sa.Engine, env: dict[str, str]) -> None:
    """`flask keys rewrap` in small batches, SIGKILLed as soon as its first batch is committed."""
    job = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "webapp", "keys", "rewrap", "--batch-size", "12"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # A read that takes no write lock: on SQLite a BEGIN IMMEDIATE here waits behind every
            # batch (its busy handler does not queue) and could starve until the job had finished.
            with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                mark = conn.execute(sa.select(key_rewrap_checkpoints.c.last_id)).scalar()
            if mark is not None:
                break
            assert job.poll() is None, "the job ended before it could be killed"
            time.sleep(0.005)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=30)
    assert job.returncode == -signal.SIGKILL
