"""The import CLI SIGKILLed after its first committed batch, then run again, against a real MariaDB and
a real keyd: every card stored exactly once, every one decrypts, the audit chain verifies."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyd.client import Context, KeydClient
from tests.fixtures.mariadb import PrivateMariaDB
from tests.keyd.conftest import ROOT, Keyd
from tests.webapp.conftest import SECRET
from tests.webapp.records.support import keyd_running  # noqa: F401 - the module's real keyd
from tests.webapp.records.test_bulk import HEADER, luhn
from webapp.audit import service as audit
from webapp.db import migrate
from webapp.db.engine import READ_ONLY, make_engine
from webapp.records.tables import cards, customer_records, import_jobs

ROWS = 3000


def _database(server: PrivateMariaDB) -> str:
    name = "import_" + secrets.token_hex(4)
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    conn.close()
    return f"mysql+pymysql://root@localhost/{name}?unix_socket={server.socket}&charset=utf8mb4"


def _command(path: Path, batch: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "webapp",
        "records",
        "import",
        str(path),
        "--batch-size",
        str(batch),
    ]


def test_sigkill_after_the_first_batch_then_resume(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    keyd_running: tuple[Keyd, bytes],  # noqa: F811
) -> None:
    url = _database(request.getfixturevalue("mariadb"))
    engine = make_engine(url)
    migrate.upgrade(engine)
    lines = [f"C3{i % 1000:06d},Jane Doe,{luhn('4539' + str(i).zfill(6))},12/2031" for i in range(ROWS)]
    path = tmp_path / "cards.csv"
    path.write_text("\n".join([HEADER.decode(), *lines]) + "\n")
    keyd = keyd_running[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | {
        "STRONGROOM_SECRET_KEY": SECRET,
        "STRONGROOM_DATABASE_URL": url,
        "STRONGROOM_KEYD_SOCKET": str(keyd.socket),
        "STRONGROOM_INSTANCE_PATH": str(tmp_path / "instance"),
        "COLUMNS": "100",
    }
    job = subprocess.Popen(
        _command(path, 20), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
                mark = conn.execute(sa.select(import_jobs.c.last_line)).scalar()
            if mark:
                break
            assert job.poll() is None, "the import ended before it could be killed"
            time.sleep(0.005)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(timeout=30)
    assert job.returncode == -signal.SIGKILL
    with engine.connect() as conn:
        killed_at = int(conn.execute(sa.select(import_jobs.c.last_line)).scalar_one())
        stored_then = conn.execute(sa.select(sa.func.count()).select_from(cards)).scalar_one()
    assert 1 < killed_at < ROWS + 1, "kill earlier: the import had finished"
    assert stored_then == killed_at - 1  # the checkpoint moved with exactly the committed cards

    again = subprocess.run(
        _command(path, 500), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0, again.stderr
    assert f"resumed after line {killed_at}" in again.stdout
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cards.c.id, cards.c.pan_ct)).all()
        assert conn.execute(sa.select(sa.func.count()).select_from(customer_records)).scalar_one() == 1000
        assert audit.verify(conn).ok
        done = conn.execute(sa.select(import_jobs)).one()
    assert done.finished_at is not None
    assert (done.accepted, done.refused) == (ROWS, 0)
    with KeydClient(keyd.socket, timeout=10.0) as client:
        pans: list[str] = []
        for start in range(0, len(rows), 900):
            chunk = rows[start : start + 900]
            out = client.decrypt_batch(
                [(Context(r.id, "pan"), bytes(r.pan_ct)) for r in chunk], actor="check", purpose="check"
            )
            assert all(isinstance(o, bytes) for o in out)
            pans += [o.decode() for o in out if isinstance(o, bytes)]
    counted = Counter(pans)
    assert len(pans) == ROWS
    assert set(counted.values()) == {1}
    assert set(counted) == {line.split(",")[2] for line in lines}
    engine.dispose()
