"""`flask --app webapp keys rewrap` as a real process, SIGKILLed midway and resumed (SQLite and MariaDB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyd.client import KeydClient, key_version
from tests.keyd.conftest import ROOT, Running
from tests.webapp.keys.conftest import (
    database,
    decrypt_all,
    job_env,
    kill_rewrap_midway,
    rotate,
    seed_cards,
    stored,
)
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.keys.tables import key_rewrap_checkpoints


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_sigkill_midway_then_resume(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, daemon: Running, keyd_client: KeydClient
) -> None:
    url = database(backend, request, tmp_path)
    engine = make_engine(url)
    migrate.upgrade(engine)
    seeded = seed_cards(engine, keyd_client, 3000)
    target = rotate(daemon)
    env = job_env(url, daemon, tmp_path)
    kill_rewrap_midway(engine, env)
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
