"""Web app benchmark: a reveal and a masked record view against a bare route through the same stack
(Flask test client, and real gunicorn over TLS with client certificates), and a masked list for one
customer with 10k and with 1M rows in the tables (it must stay flat: indexed lookups only).

Run as root from the repo root: `.venv/bin/python bench/bench_webapp.py` (or `make bench`). It starts
its own keyd (file mode, budgets raised out of the way) and gunicorn in a temp dir, on SQLite, and
takes a few minutes (the 1M-row table is bulk-inserted with plain SQL and fake ciphertext bytes,
which is fine for list timing: a list never decrypts). Not a test: nothing fails on a slow machine.

The bare route is `GET /login` by a logged-in employee: session load and IP/certificate binding,
user and certificate lookup, an audit record appended to the hash chain, commit, the redirect. Every
records page pays all of that too, so the ratio shows what the records work adds. A reveal is a GET
(the form and its step-up token) plus a POST (token spent, argon2id re-verification with the
production parameters, keyd decrypt); it is expensive on purpose.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from keyd.client import KeydClient  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.auth import passwords  # noqa: E402
from webapp.clock import to_db  # noqa: E402
from webapp.db import migrate  # noqa: E402
from webapp.records import service  # noqa: E402
from webapp.records.cards import parse_pan  # noqa: E402
from webapp.records.tables import cards, customer_records  # noqa: E402

# The test suite's own fixtures (real keyd daemons, a throwaway PKI, gunicorn over TLS), loaded by
# name: mypy checks bench/, and the test packages are not part of its file list.
_pki = importlib.import_module("tests.fixtures.pki")
_keyd = importlib.import_module("tests.keyd.conftest")
_web = importlib.import_module("tests.webapp.conftest")
_tls = importlib.import_module("tests.webapp.tls_server")
TestCA, FakeTlsSocket, serve = _pki.TestCA, _web.FakeTlsSocket, _tls.serve
GENEROUS, make_keyd, raw_key, traversable_tmp = (
    _keyd.GENEROUS,
    _keyd.make_keyd,
    _keyd.raw_key,
    _keyd.traversable_tmp,
)

SECRET = "bench-secret-" + "b" * 40
PASSWORD = "Saffron-Beacon-Walnut-7351"  # noqa: S105 - a throwaway benchmark user
REASON = "benchmark reveal of a test card"
PRODUCTION_ARGON2 = {
    "ARGON2_TIME_COST": passwords.PRODUCTION_TIME_COST,
    "ARGON2_MEMORY_COST": passwords.PRODUCTION_MEMORY_COST_KIB,
    "ARGON2_PARALLELISM": passwords.PRODUCTION_PARALLELISM,
}
HOURS = {"WORKING_DAYS": "mon-sun", "WORKING_HOURS": "00:00-23:59"}
# The web app's reveal budgets raised out of the way, like keyd's (GENEROUS): a benchmark reveals more
# than an employee's 30 a minute.
REVEALS = {scope: dict.fromkeys(("minute", "hour", "day"), 1_000_000) for scope in ("employee", "global")}
_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
_STEPUP = re.compile(r'name="stepup"[^>]*value="([^"]+)"')


def find(pattern: re.Pattern[str], text: str) -> str:
    m = pattern.search(text)
    if m is None:
        raise RuntimeError(f"{pattern.pattern!r} not on the page")
    return m.group(1)


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(median, p95) in milliseconds over n calls, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def row(name: str, median: float, p95: float, base: float | None = None) -> None:
    ratio = f"{median / base:6.2f}x bare" if base else ""
    print(f"  {name:<46} median {median:8.2f} ms   p95 {p95:8.2f} ms   {ratio}")


def add_user(app: Any, ca: Any, d: Path, name: str, role: str) -> Any:
    runner = app.test_cli_runner()
    out = runner.invoke(
        args=["users", "add", name, "--role", role, "--password-stdin"], input=PASSWORD + "\n"
    )
    issued = ca.issue(name)
    pem, _key = issued.write(d, name)
    bound = runner.invoke(args=["certs", "bind", name, str(pem)])
    if out.exit_code or bound.exit_code:
        raise RuntimeError(out.output + bound.output)
    return issued


def seed_customer(app: Any, crm: str = "C1000001", n_cards: int = 5) -> tuple[int, str]:
    svc = app.extensions["strongroom"]
    now = datetime.now(UTC)
    with svc.engine.begin() as conn:
        record_id = service.add_record(conn, crm, actor="bench", now=now)
        card_id = ""
        for _ in range(n_cards):
            card = service.NewCard(parse_pan("4111111111111111"), "Ada Lovelace", "12/2030")
            card_id = service.add_card(conn, svc.vault, record_id, card, actor="bench", now=now)
    return record_id, card_id


def filler(app: Any, total: int, have: int) -> None:
    """Other customers' records and cards up to `total` rows each, by plain SQL in big chunks."""
    engine = app.extensions["strongroom"].engine
    now = to_db(datetime.now(UTC))
    fake = secrets.token_bytes(49)
    chunk = 20000
    with engine.begin() as conn:
        start = conn.execute(sa.select(sa.func.max(customer_records.c.id))).scalar() or 0
    for lo in range(have, total, chunk):
        hi = min(total, lo + chunk)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(customer_records),
                [
                    {
                        "id": start + i + 1,
                        "crm_ref": f"C{2000000 + i}",
                        "created_at": now,
                        "created_by": "bench",
                    }
                    for i in range(lo, hi)
                ],
            )
            conn.execute(
                sa.insert(cards),
                [
                    {
                        "id": f"{i:032x}",
                        "record_id": start + i + 1,
                        "brand": "visa",
                        "last4": "1111",
                        "pan_ct": fake,
                        "name_ct": fake,
                        "expiry_ct": fake,
                        "created_at": now,
                        "created_by": "bench",
                    }
                    for i in range(lo, hi)
                ],
            )


class TestClientSession:
    def __init__(self, app: Any, issued: Any, username: str) -> None:
        self.client = app.test_client()
        self.client.environ_base.update(
            {"gunicorn.socket": FakeTlsSocket(issued.der), "REMOTE_ADDR": "10.0.0.5"}
        )
        page = self.get("/login")
        r = self.post("/login", {"csrf_token": find(_CSRF, page), "username": username, "password": PASSWORD})
        assert r == 302, r

    def get(self, path: str) -> str:
        r = self.client.get(path, base_url="https://vault.example")
        assert r.status_code in (200, 302), (path, r.status_code)
        return str(r.text)

    def post(self, path: str, data: dict[str, str]) -> int:
        return int(self.client.post(path, data=data, base_url="https://vault.example").status_code)


class TlsSession:
    """One employee over real TLS to gunicorn (sync workers: a new connection per request)."""

    def __init__(self, server: Any, cert: tuple[Path, Path], username: str) -> None:
        self.server, self.cert, self.cookie = server, cert, ""
        page = self.get("/login")
        status = self.post(
            "/login", {"csrf_token": find(_CSRF, page), "username": username, "password": PASSWORD}
        )
        assert status == 302, status

    def _do(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        conn = self.server.connection(self.cert)
        headers = {"Host": "127.0.0.1"}
        if self.cookie:
            headers["Cookie"] = self.cookie
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        text = r.read().decode()
        cookie = r.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";")[0]
        conn.close()
        return r.status, text

    def get(self, path: str) -> str:
        status, text = self._do("GET", path)
        assert status in (200, 302), (path, status, text[-300:])
        return text

    def post(self, path: str, data: dict[str, str]) -> int:
        return self._do("POST", path, urlencode(data))[0]


def reveal_once(s: TestClientSession | TlsSession, url: str) -> None:
    page = s.get(url)
    data = {
        "csrf_token": find(_CSRF, page),
        "stepup": find(_STEPUP, page),
        "reason": REASON,
        "password": PASSWORD,
    }
    assert s.post(url, data) == 200


def bench_stack(
    label: str, sup: TestClientSession | TlsSession, record_id: int, card_id: str, n: int
) -> None:
    print(f"\n{label}")
    bare = timed(lambda: sup.get("/login"), n)
    row("bare route (GET /login, logged in: 302)", *bare)
    row("masked record view (5 cards)", *timed(lambda: sup.get(f"/records/{record_id}"), n), base=bare[0])
    url = f"/records/{record_id}/reveal/card/{card_id}/pan"
    row("reveal form (GET, issues a step-up token)", *timed(lambda: sup.get(url), n), base=bare[0])
    row(
        "reveal (GET form + POST, argon2id + keyd)",
        *timed(lambda: reveal_once(sup, url), max(5, n // 4)),
        base=bare[0],
    )


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench_webapp: run as root (keyd's peer checks), like make bench")
    print(
        f"web app benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite"
    )
    with traversable_tmp() as tmp:
        keyd = make_keyd(tmp / "keyd", extra=GENEROUS)
        key = raw_key()
        keyd.init(key, "--key-kind", "raw")
        keyd.start()
        try:
            keyd.unseal(key)
            d = Path(tempfile.mkdtemp(dir=tmp))
            ca = TestCA("Bench CA")
            cfg = {
                "SECRET_KEY": SECRET,
                "DATABASE_URL": f"sqlite:///{d / 'bench.db'}",
                "INSTANCE_PATH": str(d / "instance"),
                **PRODUCTION_ARGON2,
                **HOURS,
                "REVEAL_BUDGETS": REVEALS,
            }
            app = create_app(cfg, vault=KeydClient(keyd.socket, timeout=5.0))
            migrate.upgrade(app.extensions["strongroom"].engine)
            sam = add_user(app, ca, d, "sam", "supervisor")
            record_id, card_id = seed_customer(app)
            sup = TestClientSession(app, sam, "sam")
            bench_stack("Flask test client (in process), real keyd, SQLite", sup, record_id, card_id, 200)

            print("\nMasked list for one customer (5 cards) as the tables grow (test client)")
            for total in (10_000, 1_000_000):
                t0 = time.perf_counter()
                filler(app, total, have=0 if total == 10_000 else 10_000)
                fill = time.perf_counter() - t0
                view = timed(lambda: sup.get(f"/records/{record_id}"), 200)
                search = timed(lambda: sup.get("/records/?crm_ref=C1000001"), 200)
                row(f"record view, {total:>9,} records+cards (fill {fill:5.1f} s)", *view)
                row(f"search by CRM ref, {total:>9,} records", *search)
            with app.extensions["strongroom"].engine.connect() as conn:
                plan = conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN SELECT id FROM cards WHERE record_id = ?", (record_id,)
                ).fetchall()
            print("  plan for the card list:", "; ".join(str(p[-1]) for p in plan))
            app.extensions["strongroom"].engine.dispose()

            extra = {f"STRONGROOM_{k}": str(v) for k, v in PRODUCTION_ARGON2.items()}
            extra["STRONGROOM_KEYD_SOCKET"] = str(keyd.socket)
            extra["STRONGROOM_REVEAL_BUDGETS"] = json.dumps(REVEALS)
            with serve(Path(tempfile.mkdtemp(dir=tmp)), extra_env=extra) as server:
                gapp = create_app(
                    {
                        "SECRET_KEY": SECRET,
                        "DATABASE_URL": server.db_url,
                        "INSTANCE_PATH": str(d / "g"),
                        **PRODUCTION_ARGON2,
                        **HOURS,
                    },
                    vault=KeydClient(keyd.socket, timeout=5.0),
                )
                issued = add_user(gapp, server.ca, d, "sam", "supervisor")
                record_id, card_id = seed_customer(gapp)
                gapp.extensions["strongroom"].engine.dispose()
                cert = issued.write(d, "sam-tls")
                tls = TlsSession(server, cert, "sam")
                bench_stack(
                    "gunicorn over TLS (2 sync workers, client certificate, new connection per request)",
                    tls,
                    record_id,
                    card_id,
                    60,
                )
        finally:
            keyd.stop()


if __name__ == "__main__":
    main()
