"""The CRM API's benchmark: add-card and the masked card list at /api/v1, through the production path
(Apache with TLS, a required client certificate and the CRL, ModSecurity with the CRS's JSON body
processor -> gunicorn on its Unix socket -> the app -> a real keyd), beside the bare authenticated
route (bench/bare_app.py: Apache's mTLS and ModSecurity, the proxy hop and gunicorn, no app) in the
same run, with a service certificate and keep-alive connections.

- masked list (GET /api/v1/records/ID/cards, 5 cards): `ab -k -E service.pem`, as
  bench_production_path.py measures pages; the bare route with the same ab.
- add-card (POST /api/v1/records/ID/cards, JSON): every POST needs its own Idempotency-Key, which ab
  cannot vary (and wrk, which could, presents no client certificate), so a small client does it:
  one process per client, each on one kept-alive TLS connection with the service certificate,
  a fresh key and a fresh Luhn-valid card number per request, spread over one record per client.
  The bare route is measured with the same client (the same body POSTed to bench/bare_api.py's
  bare JSON route under /api/v1, which ModSecurity inspects as it does the API), so the ratio
  compares like with like.

Goals (issue 18): each API call at least half the bare route's req/s, its p99 within 2x the bare
route's p99, at each concurrency. Not a test: a miss is reported, not failed; a failed or non-2xx
answer is reported and the run exits 1.

Run as root from the repo root: `.venv/bin/python bench/bench_api.py` (or `make bench`).

Settings (environment):
    BENCH_SECONDS     seconds per cell (default 5; a warm-up precedes each)
    BENCH_CLIENTS     concurrency levels (default 8,32)
    BENCH_DATABASES   sqlite,mariadb (default both)
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import json
import multiprocessing
import os
import platform
import secrets
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402

from keyd.client import KeydClient  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.records import service  # noqa: E402
from webapp.records.cards import parse_pan  # noqa: E402

# The production-path benchmark's Apache, certificates, gunicorn and ab (loaded by name: mypy checks
# bench/ file by file), and the test suite's keyd.
_prod: Any = importlib.import_module("bench_production_path")
_keyd: Any = importlib.import_module("tests.keyd.conftest")

SERVICE = "crm"
HOST = _prod.HOST
NEXT_YEAR = datetime.now(UTC).year + 1


def _env_list(name: str, default: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, default).split(",") if v.strip()]


def luhn_pan(n: int) -> str:
    """A Luhn-valid 16-digit Visa-shaped test number, different for each n."""
    body = f"4{n % 10**14:014d}"
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return body + str((10 - total % 10) % 10)


# --- the POST client: one process per client, one kept-alive connection each --------------------


@dataclass(frozen=True)
class Target:
    port: int
    cert: str
    key: str
    ca: str
    path: str  # "{record}" is replaced by the client's own record id
    records: tuple[int, ...]
    seconds: float


def _post_client(args: tuple[Target, int, float]) -> tuple[list[float], int]:
    """Runs in a child process: POST until the deadline; (latencies in ms, failed or non-2xx)."""
    target, index, start_at = args
    ctx = ssl.create_default_context(cafile=target.ca)
    ctx.load_cert_chain(target.cert, target.key)
    ctx.check_hostname = False
    conn = http.client.HTTPSConnection("127.0.0.1", target.port, context=ctx, timeout=30)
    path = target.path.format(record=target.records[index % len(target.records)])
    seq = index * 10_000_000 + secrets.randbelow(1_000_000)
    latencies: list[float] = []
    errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = time.monotonic() + target.seconds
    while time.monotonic() < deadline:
        seq += 1
        body = json.dumps(
            {"pan": luhn_pan(seq), "cardholder": "Ada O'Lovelace", "exp_month": 12, "exp_year": NEXT_YEAR}
        )
        headers = {
            "Host": HOST,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Idempotency-Key": f"bench-{index}-{seq}",
        }
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = 200 <= resp.status < 300
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
        except (OSError, http.client.HTTPException):
            ok = False
            conn.close()
        latencies.append((time.perf_counter() - t0) * 1000)
        errors += 0 if ok else 1
    conn.close()
    return latencies, errors


class Api:
    def __init__(self, bench: Any, tmp: Path) -> None:
        self.bench = bench
        issued = bench.ca.issue_service(SERVICE)
        self.cert, self.key = issued.write(bench.ca_file.parent, SERVICE)
        self.ab_pem = bench.ca_file.parent / "ab-service.pem"
        self.ab_pem.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        self.ab_pem.chmod(0o600)
        bench.ab_pem = self.ab_pem  # ab -E: the service certificate for every ab cell
        self.tmp = tmp

    def seed(self, env: dict[str, str], clients: int) -> tuple[int, list[int]]:
        """The service account bound to the certificate; a record with 5 cards for the masked list,
        and one record per POST client."""
        config: dict[str, Any] = {k.removeprefix("STRONGROOM_"): v for k, v in env.items()}
        config["BEHIND_PROXY"] = True
        app = create_app(config, vault=KeydClient(self.bench.keyd_socket, timeout=5.0))
        done = app.test_cli_runner().invoke(args=["services", "add", SERVICE, "--cert", str(self.cert)])
        if done.exit_code:
            raise RuntimeError(f"services add: {done.output}")
        svc = app.extensions["strongroom"]
        now = datetime.now(UTC)
        with svc.engine.begin() as conn:
            listed = int(service.add_record(conn, "C2000000", actor="bench", now=now))
            for i in range(5):
                card = service.NewCard(parse_pan(luhn_pan(i)), "Ada Lovelace", f"12/{NEXT_YEAR}")
                service.add_card(conn, svc.vault, listed, card, actor="bench", now=now)
            targets = [
                int(service.add_record(conn, f"C{3000000 + i}", actor="bench", now=now))
                for i in range(clients)
            ]
        svc.engine.dispose()
        return listed, targets

    def post_cell(
        self,
        db: str,
        app: str,
        workers: Any,
        gunicorn: Any,
        page: str,
        path: str,
        records: list[int],
        clients: int,
    ) -> Any:
        seconds = float(self.bench.seconds)
        target = Target(
            self.bench.port,
            str(self.cert),
            str(self.key),
            str(self.bench.ca_file),
            path,
            tuple(records),
            seconds,
        )
        pool = multiprocessing.get_context("fork").Pool(clients)
        try:
            warm = Target(**{**target.__dict__, "seconds": 1.0})
            pool.map(_post_client, [(warm, i, time.time() + 0.3) for i in range(clients)])
            procs = gunicorn.workers()
            apache = [
                psutil.Process(self.bench.apache.pid),
                *psutil.Process(self.bench.apache.pid).children(),
            ]
            app_cpu, apache_cpu = _prod.cpu_seconds(procs), _prod.cpu_seconds(apache)
            start = time.time() + 0.5
            results = pool.map(_post_client, [(target, i, start) for i in range(clients)])
            app_cpu = _prod.cpu_seconds(procs) - app_cpu
            apache_cpu = _prod.cpu_seconds(apache) - apache_cpu
        finally:
            pool.close()
            pool.join()
        ms = sorted(x for lat, _ in results for x in lat)
        done = len(ms)
        c = _prod.Cell(
            db=db,
            app=app,
            workers=workers,
            page=page,
            clients=clients,
            rps=done / seconds,
            p50=_prod.percentile(ms, 50),
            p99=_prod.percentile(ms, 99),
            longest=ms[-1] if ms else 0.0,
            requests=done,
            errors=sum(e for _, e in results),
            app_cpu_ms=app_cpu * 1000 / max(done, 1),
            apache_cpu_ms=apache_cpu * 1000 / max(done, 1),
        )
        self.bench.cells.append(c)
        _prod.print_row(c)
        return c

    def get_ok(self, path: str, method: str = "GET", body: bytes | None = None) -> None:
        ctx = ssl.create_default_context(cafile=str(self.bench.ca_file))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", self.bench.port, context=ctx, timeout=30)
        headers = {"Host": HOST}
        if body is not None:
            headers |= {"Content-Type": "application/json", "Idempotency-Key": secrets.token_hex(8)}
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read()[:300]
        finally:
            conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {text!r}")

    def section(self, db: str, db_url: str, workers: Any) -> None:
        print(f"\n== {db}   (load average {_prod._loadavg()})")
        clients = self.bench.clients
        env = self.bench.app_env(db_url, db)
        listed, targets = self.seed(env, max(clients))
        masked = f"/api/v1/records/{listed}/cards"
        add = "/api/v1/records/{record}/cards"
        card = json.dumps({"pan": luhn_pan(99), "cardholder": "Ada", "exp_month": 12, "exp_year": NEXT_YEAR})
        _prod.print_header()
        with self.bench.serving(env, workers, f"api-bare-{db}", "bare_api:app") as g:
            self.get_ok("/")
            self.get_ok("/api/v1/bare", "POST", card.encode())
            for n in clients:
                self.bench.cell(db, "bare", workers, g, "GET (ab)", "/", n, "")
                self.post_cell(db, "bare", workers, g, "POST", "/api/v1/bare", targets, n)
        with self.bench.serving(env, workers, f"api-{db}", None) as g:
            self.get_ok(masked)
            self.get_ok(add.format(record=targets[0]), "POST", card.encode())
            for n in clients:
                self.bench.cell(db, "strongroom", workers, g, "masked", masked, n, "")
                self.post_cell(db, "strongroom", workers, g, "add-card", add, targets, n)


def goals(cells: list[Any], db: str) -> bool:
    print(f"\n  goals, {db}: each API call >= 50 % of the bare route's req/s, p99 <= 2x the bare route's")
    met = True
    for c in cells:
        if c.db != db or c.app != "strongroom":
            continue
        bare_page = "GET (ab)" if c.page == "masked" else "POST"
        bare = next(
            (
                b
                for b in cells
                if b.db == db and b.app == "bare" and b.page == bare_page and b.clients == c.clients
            ),
            None,
        )
        if bare is None:
            continue
        ratio, p99x = c.rps / bare.rps, c.p99 / max(bare.p99, 0.001)
        ok_rate, ok_p99 = ratio >= 0.5, p99x <= 2.0
        met = met and ok_rate and ok_p99
        print(
            f"    {'met ' if ok_rate else 'MISS'}  {c.page:<9} {c.clients:>3} clients: {c.rps:7.1f} req/s = "
            f"{ratio:4.0%} of bare {bare.rps:7.1f} ({bare_page})"
        )
        print(
            f"    {'met ' if ok_p99 else 'MISS'}  {c.page:<9} {c.clients:>3} clients: p99 {c.p99:6.1f} ms = "
            f"{p99x:4.1f}x bare {bare.p99:6.1f} ms"
        )
    return met


@contextlib.contextmanager
def _killed_on_error(keyd: Any) -> Iterator[None]:
    """unsealed_keyd() stops keyd only when its body ends normally: a failed run must not leave a
    daemon holding a key behind."""
    try:
        yield
    except BaseException:
        if keyd.proc is not None:
            keyd.kill()
        raise


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("bench_api: run as root (Apache's children, keyd's peer checks), like make bench")
    if shutil.which("ab") is None:
        raise SystemExit("bench_api: ab is missing (Debian package apache2-utils: make sysdeps)")
    os.environ.setdefault("BENCH_SECONDS", "5")
    os.environ.setdefault("BENCH_CLIENTS", "8,32")
    databases = _env_list("BENCH_DATABASES", "sqlite,mariadb")
    workers = _prod.default_workers()
    model = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln), "")
    print(
        f"CRM API benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs ({model.partition(':')[2].strip()}), gunicorn {workers}, "
        f"load average {_prod._loadavg()}\n"
        f"{os.environ['BENCH_SECONDS']} s per cell; GET cells by ab -k, POST cells by one kept-alive "
        f"client process per client; CPU columns: per request, gunicorn's workers (app) and Apache"
    )
    with (
        _keyd.unsealed_keyd() as keyd,
        _killed_on_error(keyd.keyd),
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp_name,
    ):
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o711)  # noqa: S103 - Apache's children (www-data) walk to the web socket
        bench = _prod.Bench(tmp, keyd.keyd.socket)
        bench.requests = 0
        api = Api(bench, tmp)
        bench.apache.start()
        servers: list[Any] = []
        try:
            for db in databases:
                if db == "sqlite":
                    url = bench.sqlite_url()
                elif db == "mariadb":
                    url, server = bench.mariadb_url()
                    servers.append(server)
                else:
                    raise SystemExit(f"bench_api: unknown database {db!r} (sqlite, mariadb)")
                api.section(db, url, workers)
        finally:
            bench.apache.stop()
            for server in servers:
                with contextlib.suppress(Exception):
                    server.stop()
        for db in databases:
            goals(bench.cells, db)
        print(f"\n  load average at the end {_prod._loadavg()}")
        if any(c.errors for c in bench.cells):
            print("  some cells had failed or non-2xx answers (errors column)")
            raise SystemExit(1)


if __name__ == "__main__":
    main()
