"""Re-keying a loaded vault end to end: `keyd rekey` onto a new secret, the rewrap job SIGKILLed midway
and resumed while another process keeps decrypting, `keys retire`, `keyd retire-secret`; every value
decrypts after, the old secret no longer unseals and the new one does. Real keyd, real database (SQLite
and a private MariaDB).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from keyd.client import KeydClient, key_version
from tests.keyd.conftest import ROOT, Running, raw_key, wait_for
from tests.webapp.keys.conftest import database, decrypt_all, job_env, kill_rewrap_midway, seed_cards, stored
from webapp.db import migrate
from webapp.db.engine import make_engine

# Another process, as the web app would be: reads a card's ciphertext from the database and decrypts
# it, card after card, until told to stop; prints how many decrypts worked and how many failed.
LOAD = """
import secrets, sys, time
from pathlib import Path
import sqlalchemy as sa
from keyd.client import Context, KeydClient
from webapp.records.tables import cards
url, sock, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
engine = sa.create_engine(url)
ok = failed = 0
with KeydClient(sock, timeout=30.0) as keyd:
    while not stop.exists():
        with engine.connect() as conn:
            # Ids are random hex: the 20 cards from a random id on (both backends; no random()).
            pick = sa.select(cards.c.id, cards.c.pan_ct).order_by(cards.c.id).limit(20)
            rows = conn.execute(pick.where(cards.c.id >= secrets.token_hex(16))).all()
            rows = rows or conn.execute(pick).all()
        for card_id, pan in rows:
            try:
                keyd.decrypt(bytes(pan), context=Context(card_id, "pan"), actor="clerk", purpose="reveal")
                ok += 1
            except Exception as exc:
                failed += 1
                print("failed", type(exc).__name__, exc, file=sys.stderr)
print(ok, failed)
"""


def _keyd_cli(
    daemon: Running, command: str, secret: bytes | None, *args: str
) -> subprocess.CompletedProcess[str]:
    return daemon.keyd.cli(command, *args, input=(secret or b"").decode(), timeout=120, check=False)


@pytest.mark.parametrize("backend", ["sqlite", "mariadb"])
def test_rekey_under_load_with_a_killed_rewrap(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, daemon: Running, keyd_client: KeydClient
) -> None:
    url = database(backend, request, tmp_path)
    engine = make_engine(url)
    migrate.upgrade(engine)
    seeded = seed_cards(engine, keyd_client, 3000)
    new = raw_key()
    done = _keyd_cli(daemon, "rekey", new, "--to", "raw", "--stdin")
    assert done.returncode == 0, done.stderr
    target = keyd_client.status().key_version
    assert target == 2
    env = job_env(url, daemon, tmp_path)
    stop = tmp_path / "stop-load"
    load = subprocess.Popen(
        [sys.executable, "-c", LOAD, url, str(daemon.keyd.socket), str(stop)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        kill_rewrap_midway(engine, env)
        mid = {key_version(ct) for ct in stored(engine).values()}
        assert mid == {1, 2}, "the kill must land between the first and the last batch"
        resumed = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "webapp", "keys", "rewrap"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert resumed.returncode == 0, resumed.stderr
        assert "resumed cards after" in resumed.stdout
    finally:
        stop.touch()
        out, err = load.communicate(timeout=60)
    assert load.returncode == 0, err
    ok, failed = (int(x) for x in out.split())
    assert (failed, err) == (0, ""), err
    assert ok > 0

    after = stored(engine)
    assert {key_version(ct) for ct in after.values()} == {2}
    retire = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", "keys", "retire", "--min-version", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert retire.returncode == 0, retire.stderr
    retired = _keyd_cli(daemon, "retire-secret", None)
    assert retired.returncode == 0, retired.stderr
    assert decrypt_all(keyd_client, after) == seeded.plaintexts

    # After a restart the old secret opens nothing; the new one unseals and every value decrypts.
    k = daemon.keyd
    k.kill()
    k.start()
    assert _keyd_cli(daemon, "unseal", daemon.key, "--stdin").returncode == 3
    assert k.status()["sealed"] is True
    k.unseal(new)
    wait_for(lambda: not k.status()["sealed"], what="unseal with the new secret")
    with KeydClient(k.socket, timeout=10.0) as fresh:
        assert decrypt_all(fresh, after) == seeded.plaintexts
    engine.dispose()
