"""Rewrap benchmark: stored fields re-encrypted under a new key version per second, batched vs unbatched.

Run as root from the repo root: `.venv/bin/python bench/bench_rewrap.py` (or `make bench`). It starts its
own file-mode keyd and an SQLite database in a temp dir, stores 100k fields (cards, 3 fields each),
rotates, and times the real job (webapp.keys.service.Rewrapper: read a batch, keyd rewrap_batch,
compare-and-swap UPDATEs plus the checkpoint in one transaction), best of three runs. Not a test:
nothing fails on a slow machine; the target is printed next to the figure.

A private MariaDB (started here, as the tests do) gets the same batched run when mariadbd is installed.

Unbatched (one field per keyd call, one row per transaction) is timed on a slice of the same data
and reported as a rate: at ~1 ms per durable SQLite commit, all 100k that way would take minutes.
"""

from __future__ import annotations

import importlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from keyd.client import Context, KeydAdminClient, KeydClient  # noqa: E402
from webapp.db import migrate  # noqa: E402
from webapp.db.engine import make_engine  # noqa: E402
from webapp.keys.service import Rewrapper  # noqa: E402
from webapp.records.tables import ENCRYPTED_COLUMNS, cards, customer_records  # noqa: E402

FIELDS = 100_000
UNBATCHED_FIELDS = 3_000
TARGET = 50_000
BIG = [f"--budget={s}.{w}=1000000000" for s in ("employee", "global") for w in ("minute", "hour", "day")]


def start_keyd(base: Path) -> tuple[subprocess.Popen[bytes], Path]:
    (base / "shm").mkdir(parents=True)
    sock = base / "run" / "keyd.sock"
    flags = [
        f"--socket={sock}",
        f"--state-dir={base / 'state'}",
        f"--drop-path={base / 'shm' / 'ekey'}",
        "--allow-uid=0",
        "--poll-interval=0.05",
        "--no-syslog",
        *BIG,
    ]
    key = secrets.token_hex(32).encode() + b"\n"

    def drop() -> None:
        tmp = base / "shm" / "ekey-tmp"
        tmp.write_bytes(key)
        tmp.chmod(0o600)
        tmp.rename(base / "shm" / "ekey")

    drop()
    subprocess.run(
        [sys.executable, "-m", "keyd", "init", "--key-kind", "raw", "--wait", "10", *flags],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    log = (base / "keyd.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "keyd", "serve", *flags], cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            raise SystemExit("keyd did not start")
        time.sleep(0.02)
    drop()
    with KeydClient(sock) as c:
        while c.status().sealed:
            if time.monotonic() > deadline:
                raise SystemExit("keyd did not unseal")
            time.sleep(0.02)
    return proc, sock


def seed(engine: sa.Engine, client: KeydClient, n_fields: int) -> None:
    fields = ENCRYPTED_COLUMNS[cards]
    now = datetime(2026, 11, 28)
    with engine.begin() as conn:
        rid = conn.execute(
            sa.insert(customer_records).values(crm_ref="C1234567", created_at=now, created_by="bench")
        ).inserted_primary_key[0]  # type: ignore[index]
    n_cards = -(-n_fields // len(fields))
    for start in range(0, n_cards, 300):
        ids = [secrets.token_hex(16) for _ in range(min(300, n_cards - start))]
        items = [(Context(cid, f), b"4111111111111111") for cid in ids for f in fields]
        out = client.encrypt_batch(items, actor="bench", purpose="seed")
        rows: dict[str, dict[str, object]] = {}
        for (ctx, _), ct in zip(items, out, strict=True):
            rows.setdefault(
                ctx.record_id,
                {
                    "id": ctx.record_id,
                    "record_id": rid,
                    "brand": "visa",
                    "last4": "1111",
                    "created_at": now,
                    "created_by": "bench",
                },
            )[fields[ctx.field].name] = ct
        with engine.begin() as conn:
            conn.execute(sa.insert(cards), list(rows.values()))


def run_job(engine: sa.Engine, client: KeydClient, target: int, batch: int) -> tuple[int, float]:
    job = Rewrapper(engine, keyd=client, actor="bench", now=lambda: datetime.now(UTC), batch_size=batch)
    start = time.perf_counter()
    report = job.run(target)
    elapsed = time.perf_counter() - start
    assert report.ok, report.failures[:3]
    return report.rewrapped, elapsed


def keyd_only(client: KeydClient, engine: sa.Engine) -> float:
    """The ceiling: rewrap_batch of 1000 over the stored ciphertexts, no database writes."""
    fields = ENCRYPTED_COLUMNS[cards]
    with engine.connect() as conn:
        rows = conn.execute(sa.select(cards.c.id, *fields.values())).all()
    items = [(Context(r[0], f), bytes(r[i])) for r in rows for i, f in enumerate(fields, start=1)]
    start = time.perf_counter()
    for s in range(0, len(items), 1000):
        client.rewrap_batch(items[s : s + 1000], actor="bench", purpose="ceiling")
    return len(items) / (time.perf_counter() - start)


def row(label: str, value: str, target: str = "", verdict: str = "") -> None:
    print(f"  {label:<52} {value:>16}  {target:<12} {verdict}")


def maria(base: Path, client: KeydClient, admin: KeydAdminClient) -> None:
    """The same job against a private MariaDB (the test fixture's: innodb_flush_log_at_trx_commit=2)."""
    if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").exists():
        row("rewrap job on MariaDB", "skipped", "", "mariadbd not installed")
        return
    # The tests' private-instance helper, reused as is (imported by name: it is type-checked, and
    # its pymysql import typed, with the tests rather than with the benchmarks).
    fixture: Any = importlib.import_module("tests.fixtures.mariadb")
    server = fixture.PrivateMariaDB(base / "maria")
    server.install()
    server.start()
    try:
        conn = server.root()
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE bench")
        conn.close()
        engine = make_engine(
            f"mysql+pymysql://root@localhost/bench?unix_socket={server.socket}&charset=utf8mb4"
        )
        migrate.upgrade(engine)
        seed(engine, client, FIELDS)
        runs = []
        for _ in range(3):
            target = admin.rotate(actor="bench").key_version or 5
            runs.append(run_job(engine, client, target, 1000))
        done, secs = min(runs, key=lambda r: r[1])
        rate = done / secs
        row(f"rewrap job on MariaDB, batch 1000 ({done:,} fields, {secs:.1f} s)", f"{rate:,.0f} fields/s",
            f">= {TARGET:,}", "ok" if rate >= TARGET else "MISSED")  # fmt: skip
        engine.dispose()
    finally:
        server.stop()


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="bench-rewrap-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        proc, sock = start_keyd(base / "keyd")
        engine = make_engine(f"sqlite:///{base / 'vault.db'}")
        migrate.upgrade(engine)
        with KeydClient(sock, timeout=30.0) as client, KeydAdminClient(sock, timeout=30.0) as admin:
            seed(engine, client, FIELDS)
            print(f"rewrap: {FIELDS:,} fields (cards x3) in SQLite, keyd file mode, 2 shared cores")
            target = admin.rotate(actor="bench").key_version or 2
            ceiling = keyd_only(client, engine)
            row("keyd rewrap_batch(1000) alone, no database", f"{ceiling:,.0f} fields/s")
            # Best of three runs (a rotation before each): this machine is shared, and other load
            # only ever makes a run slower.
            runs = []
            for _ in range(3):
                target = admin.rotate(actor="bench").key_version or 3
                runs.append(run_job(engine, client, target, 1000))
            done, secs = min(runs, key=lambda r: r[1])
            batched = done / secs
            row(f"rewrap job, batch 1000 ({done:,} fields, {secs:.1f} s)", f"{batched:,.0f} fields/s",
                f">= {TARGET:,}", "ok" if batched >= TARGET else "MISSED")  # fmt: skip
            slowest = done / max(r[1] for r in runs)
            row("  slowest of the three runs", f"{slowest:,.0f} fields/s", f">= {TARGET:,}",
                "ok" if slowest >= TARGET else "MISSED")  # fmt: skip
            # Unbatched on a fresh slice of the same kind of data.
            small = make_engine(f"sqlite:///{base / 'small.db'}")
            migrate.upgrade(small)
            seed(small, client, UNBATCHED_FIELDS)
            target = admin.rotate(actor="bench").key_version or 4
            done1, secs1 = run_job(small, client, target, 1)
            unbatched = done1 / secs1
            row(f"rewrap job, unbatched ({done1:,} fields, {secs1:.1f} s)", f"{unbatched:,.0f} fields/s")
            row("batched / unbatched", f"{batched / unbatched:.1f}x")
            row("job / keyd-only ceiling", f"{batched / ceiling:.0%}")
            small.dispose()
            maria(base, client, admin)
        engine.dispose()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
