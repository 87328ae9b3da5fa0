"""Bulk import benchmark: 1,000,000 cards from a CSV file into MariaDB through a real keyd.

Run as root from the repo root: `.venv/bin/python bench/bench_import.py` (or `make bench`). It starts
its own file-mode keyd (bench_rewrap.start_keyd) and a private MariaDB (the tests' instance helper,
with a buffer pool large enough for the run, as production would have), generates the file
(Luhn-valid numbers of several brands, none on a well-known test-number list, about two cards per
customer), and times the real engine (webapp.records.bulk.Importer.run_file, as `flask --app webapp
records import` runs it: parse and check every line, keyd encrypt_batch, find-or-create the customer
records, insert the cards, move the checkpoint, one audit record per batch). In the same run it
times keyd's own encrypt_batch on the same kind of fields with no database: the ratio says how much
of keyd's rate the import keeps. Not a test: nothing fails on a slow machine.

BENCH_IMPORT_ROWS scales the run down (the default is 1,000,000); BENCH_IMPORT_BATCH sets the batch.
"""

from __future__ import annotations

import importlib
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sqlalchemy as sa  # noqa: E402

from keyd.client import Context, KeydClient  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.db import migrate  # noqa: E402
from webapp.db.engine import make_engine  # noqa: E402
from webapp.records import bulk  # noqa: E402
from webapp.records.tables import cards, customer_records  # noqa: E402
from webapp.services import services  # noqa: E402
from webapp.unit import Origin  # noqa: E402

# A neighbour in bench/, loaded by name as the other benchmarks load theirs (not a package dependency).
start_keyd = importlib.import_module("bench_rewrap").start_keyd

ROWS = int(os.environ.get("BENCH_IMPORT_ROWS", "1000000"))
BATCH = int(os.environ.get("BENCH_IMPORT_BATCH", "2000"))
GOAL_SECONDS = 120.0 * ROWS / 1_000_000
# Well-known test numbers (PSPs' documentation): the generator never emits one.
TEST_NUMBERS = frozenset(
    {"4111111111111111", "4242424242424242", "4012888888881881", "5555555555554444", "5105105105105100",
     "378282246310005", "371449635398431", "6011111111111117", "3530111333300000", "4000056655665556"}
)  # fmt: skip
PREFIXES = (
    ("4", 16),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
    ("3528", 16),
)
NAMES = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Jane O'Neil", "Jean-Luc Picard", "Zoë Mäkinen")


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def generate(path: Path, rows: int) -> None:
    rnd = random.Random(18)
    with path.open("w", encoding="utf-8") as fh:
        fh.write("crm_ref,cardholder,pan,expiry\n")
        for i in range(rows):
            prefix, length = PREFIXES[i % len(PREFIXES)]
            while True:
                body = prefix + "".join(rnd.choices("0123456789", k=length - len(prefix) - 1))
                pan = body + luhn_digit(body)
                if pan not in TEST_NUMBERS:
                    break
            fh.write(
                f"C{10_000_000 + i // 2},{NAMES[i % len(NAMES)]},{pan},{1 + i % 12:02d}/{2027 + i % 8}\n"
            )


def keyd_rate(client: KeydClient, cards_n: int) -> float:
    """keyd's own encrypt_batch: the import's fields (three per card, 999 per call), no database."""
    items = []
    for _ in range(333):
        cid = secrets.token_hex(16)
        items += [(Context(cid, "pan"), b"4539123412341234"), (Context(cid, "cardholder"), b"Ada Lovelace"),
                  (Context(cid, "expiry"), b"07/2029")]  # fmt: skip
    calls = max(1, cards_n // 333)
    start = time.perf_counter()
    for _ in range(calls):
        client.encrypt_batch(items, actor="bench", purpose="ceiling")
    return calls * len(items) / (time.perf_counter() - start)


def row(label: str, value: str, target: str = "", verdict: str = "") -> None:
    print(f"  {label:<56} {value:>18}  {target:<12} {verdict}")


def main() -> int:
    if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").exists():
        print("import: skipped, mariadbd is not installed")
        return 0
    base = Path(tempfile.mkdtemp(prefix="bench-import-"))
    proc: subprocess.Popen[bytes] | None = None
    fixture: Any = importlib.import_module("tests.fixtures.mariadb")
    server = fixture.PrivateMariaDB(base / "maria")
    try:
        proc, sock = start_keyd(base / "keyd")
        server.install()
        with server.defaults.open("a") as cnf:  # production-sized for the run: the data fits in memory
            cnf.write("[mariadbd]\ninnodb_buffer_pool_size=1G\ninnodb_log_file_size=256M\n")
        server.start()
        conn = server.root()
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE bench CHARACTER SET utf8mb4")
        conn.close()
        url = f"mysql+pymysql://root@localhost/bench?unix_socket={server.socket}&charset=utf8mb4"
        owner = make_engine(url)
        migrate.upgrade(owner)
        owner.dispose()
        path = base / "cards.csv"
        t0 = time.perf_counter()
        generate(path, ROWS)
        mb, secs = path.stat().st_size / 1e6, time.perf_counter() - t0
        print(f"import: {ROWS:,} cards ({mb:.0f} MB CSV, generated in {secs:.0f} s), MariaDB (private),")
        print(
            f"  keyd file mode, batch {BATCH}, {os.cpu_count()} shared cores, load {os.getloadavg()[0]:.2f}"
        )
        client = KeydClient(sock, timeout=30.0)
        app = create_app(
            {"SECRET_KEY": secrets.token_urlsafe(32), "DATABASE_URL": url, "KEYD_SOCKET": str(sock),
             "INSTANCE_PATH": str(base / "instance"), "MODE": "production"},
            vault=client,
        )  # fmt: skip
        with app.app_context():
            importer = bulk.Importer(
                services(app),
                origin=Origin(actor="cli:bench", ip="local"),
                crm_pattern=str(app.config["CRM_REF_PATTERN"]),
                batch_size=BATCH,
            )
            start = time.perf_counter()
            data = path.read_bytes()
            report = importer.run_file(data, "csv")
            elapsed = time.perf_counter() - start
        if report.accepted != ROWS or report.refused:
            raise SystemExit(
                f"import: accepted {report.accepted}, refused {report.refused}: expected {ROWS}, 0"
            )
        with services(app).engine.connect() as c:
            stored = c.execute(sa.select(sa.func.count()).select_from(cards)).scalar_one()
            records = c.execute(sa.select(sa.func.count()).select_from(customer_records)).scalar_one()
        rate = ROWS / elapsed
        ceiling = keyd_rate(client, min(ROWS, 200_000))
        row(f"import, end to end ({stored:,} cards, {records:,} records)", f"{elapsed:.1f} s",
            f"<= {GOAL_SECONDS:.0f} s", "ok" if elapsed <= GOAL_SECONDS else "MISSED")  # fmt: skip
        row("import rate", f"{rate:,.0f} cards/s")
        row("keyd encrypt_batch(999) alone, same run", f"{ceiling:,.0f} fields/s")
        row("  = cards/s keyd alone could seal (3 fields a card)", f"{ceiling / 3:,.0f} cards/s")
        row("import / keyd-alone", f"{rate / (ceiling / 3):.0%}")
        services(app).engine.dispose()
        client.close()
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
