"""`flask --app webapp keys rewrap` as a real process, SIGKILLed midway and resumed (SQLite and MariaDB)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyd.client import KeydClient, key_version
from tests.fixtures.mariadb import PrivateMariaDB
from tests.keyd.conftest import ROOT, Running
from tests.webapp.conftest import SECRET
from tests.webapp.keys.conftest import decrypt_all, rotate, seed_cards, stored
from webapp.db import migrate
from webapp.db.engine import READ_ONLY, make_engine
from webapp.keys.tables import key_rewrap_checkpoints


def _flask(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "webapp", "keys", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _database(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'vault.db'}"
    server: PrivateMariaDB = request.getfixturevalue("mariadb")
    name = "kill_" + secrets.token_hex(4)
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    return f"mysql+pymysql://root@localhost/{name}?unix_socket={server.socket}&charset=utf8mb4"


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_sigkill_midway_then_resume(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, daemon: Running, keyd_client: KeydClient
) -> None:
    url = _database(backend, request, tmp_path)
    engine = make_engine(url)
    migrate.upgrade(engine)
    seeded = seed_cards(engine, keyd_client, 3000)
    target = rotate(daemon)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | {
        "STRONGROOM_SECRET_KEY": SECRET,
        "STRONGROOM_DATABASE_URL": url,
        "STRONGROOM_KEYD_SOCKET": str(daemon.keyd.socket),
        "STRONGROOM_INSTANCE_PATH": str(tmp_path / "instance"),
        "COLUMNS": "100",
    }
    job = _flask(env, "rewrap", "--batch-size", "12")
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
    mid = [key_version(ct) for ct in stored(engine).values()]
    assert 1 in mid, "the job finished before the kill: make it longer"
    assert target in mid, "the job had not committed a batch before the kill"
    with engine.connect() as conn:
        resume_after = conn.execute(sa.select(key_rewrap_checkpoints.c.last_id)).scalar()
    assert resume_after is not None

    resumed = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", "keys", "rewrap", "--batch-size", "500"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed cards after {resume_after}" in resumed.stdout
    after = stored(engine)
    assert {key_version(ct) for ct in after.values()} == {target}
    assert decrypt_all(keyd_client, after) == seeded.plaintexts
    engine.dispose()
