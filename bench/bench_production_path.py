"""Production-path benchmark: Apache (TLS with a required client certificate and the CRL, ModSecurity
with the OWASP CRS, the shipped vhost unchanged) → gunicorn (webapp/gunicorn_conf.py, proxy mode, on a
Unix socket) → the app → a real keyd, on SQLite and on a private MariaDB, with `ab -k` (keep-alive,
the client certificate given with -E) at 1, 8 and 32 clients.

Run as root from the repo root: `.venv/bin/python bench/bench_production_path.py` (or `make bench`).
One Apache serves the whole run; gunicorn is restarted behind it on the same socket for each
configuration, and the ceiling, a bare Flask route (bench/bare_app.py) under the same gunicorn
configuration, is measured beside each database's cells. Pages, as a supervisor with a live
session: the home page, a masked record with 5 cards, a search by CRM number, a static file.

Per cell: req/s, p50/p99/max latency, failed or non-2xx answers, and the CPU time per request of
gunicorn's workers ("app") and of Apache's processes. Then the goals of docs/benchmarks.md. Not a
test: nothing fails on a slow machine; a failed or non-2xx answer is reported, and the run exits 1.

Settings (environment):
    BENCH_SECONDS     whole seconds per cell (default 3; a warm-up of 10 requests per client precedes each)
    BENCH_REQUESTS    a fixed number of requests per cell instead (the smoke test: 20)
    BENCH_CLIENTS     concurrency levels (default 1,8,32)
    BENCH_DATABASES   sqlite,mariadb (default both)
    BENCH_PAGES       home,masked,search,static (default all four)
    BENCH_MAIN        gunicorn configuration for every page (default: gunicorn_conf.py's own default)
    BENCH_COMPARE     further configurations, masked view only (default: the main model, 1 worker)
    A configuration is `sync:N` (N processes) or `gthread:NxT` (N processes of T threads).
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import os
import platform
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from apache.private import PrivateApache, Settings  # noqa: E402
from keyd.client import KeydClient  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.db import migrate  # noqa: E402
from webapp.db.engine import make_engine  # noqa: E402
from webapp.records import service  # noqa: E402
from webapp.records.cards import parse_pan  # noqa: E402

# The test suite's own fixtures (a throwaway PKI, a real keyd, a private MariaDB), loaded by name:
# mypy checks bench/, and the test packages are not part of its file list.
_pki = importlib.import_module("tests.fixtures.pki")
_keyd = importlib.import_module("tests.keyd.conftest")
_maria = importlib.import_module("tests.fixtures.mariadb")

GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
GUNICORN_CONF = ROOT / "webapp" / "gunicorn_conf.py"
GRANTS = ROOT / "webapp" / "db" / "grants.sql"
SECRET = "bench-production-path-" + "p" * 40
PASSWORD = "Saffron-Beacon-Walnut-7351"  # noqa: S105 - a throwaway benchmark user
USER = "sam"
CRM = "C1000001"
# Apache's vhost is `localhost`: an IP address as Host trips a CRS rule (and ~23 KB of audit log per request).
HOST = "localhost"
COOKIE = "__Host-strongroom"
_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
_RPS = re.compile(r"^Requests per second:\s+([\d.]+)", re.M)
_COMPLETE = re.compile(r"^Complete requests:\s+(\d+)", re.M)
_FAILED = re.compile(r"^Failed requests:\s+(\d+)", re.M)
_NON2XX = re.compile(r"^Non-2xx responses:\s+(\d+)", re.M)


def _env_list(name: str, default: str) -> list[str]:
    return [v.strip() for v in os.environ.get(name, default).split(",") if v.strip()]


@dataclass(frozen=True)
class Workers:
    """A gunicorn configuration: `sync:2`, `gthread:2x4`."""

    model: str
    processes: int
    threads: int = 1

    @classmethod
    def parse(cls, spec: str) -> Workers:
        model, _, size = spec.partition(":")
        if model == "sync" and size.isdigit():
            return cls("sync", int(size))
        procs, _, threads = size.partition("x")
        if model == "gthread" and procs.isdigit() and threads.isdigit():
            return cls("gthread", int(procs), int(threads))
        raise SystemExit(f"bench: {spec!r} is not sync:N or gthread:NxT")

    def __str__(self) -> str:
        return (
            f"sync:{self.processes}" if self.model == "sync" else f"gthread:{self.processes}x{self.threads}"
        )

    def env(self) -> dict[str, str]:
        return {
            "STRONGROOM_WORKERS": str(self.processes),
            "STRONGROOM_WORKER_CLASS": self.model,
            "STRONGROOM_THREADS": str(self.threads),
        }


@dataclass
class Cell:
    db: str
    app: str  # "strongroom" or "bare"
    workers: Workers
    page: str
    clients: int
    rps: float
    p50: float
    p99: float
    longest: float
    requests: int
    errors: int
    app_cpu_ms: float
    apache_cpu_ms: float


def default_workers() -> Workers:
    """What webapp/gunicorn_conf.py runs when the environment says nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_") and k != "WEB_CONCURRENCY"}
    conf = str(GUNICORN_CONF)
    code = f"import runpy; c = runpy.run_path({conf!r}); print(c['worker_class'], c['workers'], c['threads'])"
    env |= {"STRONGROOM_BIND": "unix:/nonexistent/x.sock", "STRONGROOM_BEHIND_PROXY": "true"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    model, procs, threads = out[0], int(out[1]), int(out[2])
    return Workers("gthread" if threads > 1 or model == "gthread" else "sync", procs, threads)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class Gunicorn:
    """gunicorn on the web socket with webapp/gunicorn_conf.py; `app` None: the Strongroom app."""

    def __init__(self, socket_path: Path, env: dict[str, str], workers: Workers, log: Path, app: str | None):
        self.socket_path, self.log = socket_path, log
        args = [str(GUNICORN), "-c", str(GUNICORN_CONF)]
        if app is not None:
            args += ["--pythonpath", str(ROOT / "bench"), app]
        full = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | env | workers.env()
        full |= {"STRONGROOM_BIND": f"unix:{socket_path}", "STRONGROOM_BEHIND_PROXY": "true"}
        full.pop("WEB_CONCURRENCY", None)
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=full, stdout=out, stderr=subprocess.STDOUT)
        self.expected = workers.processes

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + self.log.read_text(errors="replace")[-2000:])
            if self.socket_path.exists() and len(self.workers()) >= self.expected:
                with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket_path))
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not listen: " + self.log.read_text(errors="replace")[-2000:])
            time.sleep(0.05)

    def workers(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()


class Bench:
    def __init__(self, tmp: Path, keyd_socket: Path) -> None:
        self.tmp, self.keyd_socket = tmp, keyd_socket
        self.cells: list[Cell] = []
        # ab's -t takes whole seconds.
        self.seconds = max(1, int(os.environ.get("BENCH_SECONDS", "3")))
        self.requests = int(os.environ.get("BENCH_REQUESTS", "0"))
        self.clients = [int(c) for c in _env_list("BENCH_CLIENTS", "1,8,32")]
        certs = tmp / "certs"
        certs.mkdir()
        self.ca = _pki.TestCA("Strongroom Bench CA")
        self.ca_file, self.crl_file = certs / "ca.pem", certs / "crl.pem"
        self.ca_file.write_bytes(self.ca.pem)
        self.crl_file.write_bytes(self.ca.crl_pem())
        self.server_cert, self.server_key = self.ca.issue(HOST, server=True).write(certs, "server")
        self.issued = self.ca.issue(USER)
        self.user_cert, self.user_key = self.issued.write(certs, USER)
        # ab -E: the certificate and its key in one PEM file.
        self.ab_pem = certs / "ab-client.pem"
        self.ab_pem.write_bytes(self.user_cert.read_bytes() + self.user_key.read_bytes())
        self.ab_pem.chmod(0o600)
        web = tmp / "web"
        web.mkdir(mode=0o710)
        # gunicorn makes its socket 0777: the directory (Apache's group only) is the gate.
        os.chown(web, 0, _grp_gid("www-data"))
        os.chmod(web, 0o710)  # noqa: S103 - group traverse only, for Apache's group
        self.web_socket = web / "gunicorn.sock"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.apache = PrivateApache(
            Settings(
                run_dir=tmp / "apache",
                port=self.port,
                web_socket=self.web_socket,
                tls_cert=self.server_cert,
                tls_key=self.server_key,
                client_ca=self.ca_file,
                crl=self.crl_file,
            ),
            binary=shutil.which("apache2") or "/usr/sbin/apache2",
        )

    # --- the app's data and a session ---------------------------------------------------------

    def app_env(self, db_url: str, name: str) -> dict[str, str]:
        return {
            "STRONGROOM_MODE": "production",
            "STRONGROOM_SECRET_KEY": SECRET,
            "STRONGROOM_DATABASE_URL": db_url,
            "STRONGROOM_INSTANCE_PATH": str(self.tmp / f"instance-{name}"),
            "STRONGROOM_KEYD_SOCKET": str(self.keyd_socket),
            "STRONGROOM_BEHIND_PROXY": "true",
            "STRONGROOM_WORKING_DAYS": "mon-sun",
            "STRONGROOM_WORKING_HOURS": "00:00-23:59",
        }

    def seed(self, env: dict[str, str]) -> int:
        """The supervisor with the client certificate bound, and one record with 5 cards."""
        config: dict[str, Any] = {k.removeprefix("STRONGROOM_"): v for k, v in env.items()}
        config["BEHIND_PROXY"] = True
        app = create_app(config, vault=KeydClient(self.keyd_socket, timeout=5.0))
        runner = app.test_cli_runner()
        added = runner.invoke(
            args=["users", "add", USER, "--role", "supervisor", "--password-stdin"], input=PASSWORD + "\n"
        )
        bound = runner.invoke(args=["certs", "bind", USER, str(self.user_cert)])
        if added.exit_code or bound.exit_code:
            raise RuntimeError(f"could not add {USER}: {added.output} {bound.output}")
        svc = app.extensions["strongroom"]
        now = datetime.now(UTC)
        with svc.engine.begin() as conn:
            record_id = int(service.add_record(conn, CRM, actor="bench", now=now))
            for _ in range(5):
                card = service.NewCard(parse_pan("4111111111111111"), "Ada Lovelace", "12/2030")
                service.add_card(conn, svc.vault, record_id, card, actor="bench", now=now)
        svc.engine.dispose()
        return record_id

    def _request(
        self, method: str, path: str, cookie: str = "", body: str | None = None
    ) -> tuple[int, str, str]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.user_cert), str(self.user_key))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=30)
        ctx.check_hostname = False
        headers = {"Host": HOST}
        if cookie:
            headers["Cookie"] = cookie
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            text = r.read().decode(errors="replace")
            set_cookie = r.getheader("Set-Cookie") or ""
        finally:
            conn.close()
        return r.status, text, set_cookie.split(";")[0]

    def login(self) -> str:
        status, page, cookie = self._request("GET", "/login")
        m = _CSRF.search(page)
        if status != 200 or m is None:
            raise RuntimeError(f"login page: {status}")
        form = urlencode({"csrf_token": m.group(1), "username": USER, "password": PASSWORD})
        status, _, session = self._request("POST", "/login", cookie, form)
        if status != 302 or not session.startswith(COOKIE + "="):
            raise RuntimeError(f"login refused: {status}")
        return session

    def check(self, path: str, cookie: str) -> None:
        status, _, _ = self._request("GET", path, cookie)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status}, not 200")

    # --- one cell: ab against one page --------------------------------------------------------

    def ab(self, path: str, clients: int, cookie: str, seconds: int, requests: int, times: Path) -> str:
        args = ["ab", "-k", "-l", "-r", "-q", "-s", "30", "-c", str(clients), "-E", str(self.ab_pem)]
        args += ["-H", f"Host: {HOST}", "-g", str(times)]
        if cookie:
            args += ["-C", cookie]
        # -t implies -n 50000; -n after it raises that cap.
        args += ["-n", str(requests)] if requests else ["-t", str(seconds), "-n", "10000000"]
        args.append(f"https://127.0.0.1:{self.port}{path}")
        done = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120, check=False)
        if done.returncode != 0 or not _RPS.search(done.stdout):
            raise RuntimeError(f"ab failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        return done.stdout

    def cell(
        self,
        db: str,
        app: str,
        workers: Workers,
        gunicorn: Gunicorn,
        page: str,
        path: str,
        clients: int,
        cookie: str,
    ) -> Cell:
        times = self.tmp / "ab.tsv"
        if not self.requests:
            self.ab(path, clients, cookie, 0, max(50, 10 * clients), times)  # warm-up
        procs = gunicorn.workers()
        apache = [psutil.Process(self.apache.pid), *psutil.Process(self.apache.pid).children()]
        app_cpu, apache_cpu = cpu_seconds(procs), cpu_seconds(apache)
        out = self.ab(path, clients, cookie, self.seconds, self.requests, times)
        app_cpu, apache_cpu = cpu_seconds(procs) - app_cpu, cpu_seconds(apache) - apache_cpu
        done = int(_match(_COMPLETE, out))
        # ab -g: one line per request, tab-separated; `ttime` is the whole request in ms.
        lines = times.read_text().splitlines()
        col = lines[0].split("\t").index("ttime")
        ms = sorted(float(line.split("\t")[col]) for line in lines[1:] if line.strip())
        c = Cell(
            db=db,
            app=app,
            workers=workers,
            page=page,
            clients=clients,
            rps=float(_match(_RPS, out)),
            p50=percentile(ms, 50),
            p99=percentile(ms, 99),
            longest=ms[-1] if ms else 0.0,
            requests=done,
            errors=int(_match(_FAILED, out)) + int(_match(_NON2XX, out, "0")),
            app_cpu_ms=app_cpu * 1000 / max(done, 1),
            apache_cpu_ms=apache_cpu * 1000 / max(done, 1),
        )
        self.cells.append(c)
        print_row(c)
        return c

    # --- a database's section ------------------------------------------------------------------

    def section(self, db: str, db_url: str, main: Workers, compare: list[Workers]) -> None:
        print(f"\n== {db}   (load average {_loadavg()})")
        env = self.app_env(db_url, db)
        record_id = self.seed(env)
        pages = {
            "home": "/",
            "masked": f"/records/{record_id}",
            "search": f"/records/?crm_ref={CRM}",
            "static": "/static/strongroom.css",
        }
        wanted = _env_list("BENCH_PAGES", ",".join(pages))
        pages = {k: v for k, v in pages.items() if k in wanted}
        print_header()
        with self.serving(env, main, "bench-bare", "bare_app:app") as g:
            self.check("/", "")
            for n in self.clients:
                self.cell(db, "bare", main, g, "bare route", "/", n, "")
        cookie = ""
        for workers in [main, *compare]:
            with self.serving(env, workers, db, None) as g:
                cookie = cookie or self.login()
                for page, path in pages.items():
                    if workers != main and page != "masked":
                        continue
                    self.check(path, cookie)
                    for n in self.clients:
                        self.cell(db, "strongroom", workers, g, page, path, n, cookie)

    @contextlib.contextmanager
    def serving(
        self, env: dict[str, str], workers: Workers, name: str, app: str | None
    ) -> Iterator[Gunicorn]:
        g = Gunicorn(self.web_socket, env, workers, self.tmp / f"gunicorn-{name}.log", app)
        try:
            g.wait_ready()
            yield g
        finally:
            g.stop()

    def mariadb_url(self) -> tuple[str, Any]:
        server = _maria.PrivateMariaDB(self.tmp / "mariadb")
        server.install()
        server.start()
        database, user, password = "strongroom", "strongroom", secrets.token_urlsafe(18)
        conn = server.root()
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY %s", (password,))
        conn.close()
        # As production: migrations as the owner, then the app user's per-table grants.
        owner = make_engine(
            f"mysql+pymysql://root@localhost/{database}?unix_socket={server.socket}&charset=utf8mb4"
        )
        migrate.upgrade(owner)
        owner.dispose()
        server.client(database, GRANTS.read_text())
        return server.url(user, password, database), server

    def sqlite_url(self) -> str:
        db_dir = self.tmp / "sqlite"
        db_dir.mkdir()
        url = f"sqlite:///{db_dir / 'strongroom.db'}"
        engine = make_engine(url)
        migrate.upgrade(engine)
        engine.dispose()
        return url


def _grp_gid(group: str) -> int:
    import grp

    return grp.getgrnam(group).gr_gid


def _match(pattern: re.Pattern[str], text: str, default: str | None = None) -> str:
    m = pattern.search(text)
    if m is None:
        if default is not None:
            return default
        raise RuntimeError(f"ab output without {pattern.pattern!r}")
    return m.group(1)


def percentile(sorted_ms: list[float], pct: int) -> float:
    """The nearest-rank percentile: the value that pct % of the requests did not exceed."""
    if not sorted_ms:
        return 0.0
    rank = max(1, -(-pct * len(sorted_ms) // 100))
    return sorted_ms[rank - 1]


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def print_header() -> None:
    print(
        f"  {'app':<10} {'workers':<12} {'page':<11} {'clients':>7} {'req/s':>8} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>7} {'requests':>8} {'errors':>6} {'app CPU':>8} {'Apache CPU':>10}"
    )


def print_row(c: Cell) -> None:
    print(
        f"  {c.app:<10} {c.workers!s:<12} {c.page:<11} {c.clients:>7} {c.rps:>8.1f} {c.p50:>8.1f} "
        f"{c.p99:>8.1f} {c.longest:>7.0f} {c.requests:>8} {c.errors:>6} {c.app_cpu_ms:>6.2f}ms "
        f"{c.apache_cpu_ms:>8.2f}ms",
        flush=True,
    )


def _find(cells: list[Cell], **kw: Any) -> Cell | None:
    for c in cells:
        if all(getattr(c, k) == v for k, v in kw.items()):
            return c
    return None


def goals(cells: list[Cell], db: str, main: Workers, one: Workers | None) -> None:
    """The goals of docs/benchmarks.md, each with its figure and whether it is met."""
    print(f"\n  goals, {db} ({main}):")

    def line(name: str, value: str, ok: bool) -> None:
        print(f"    {'met ' if ok else 'MISS'}  {name:<44} {value}")

    masked = [c for c in cells if c.db == db and c.page == "masked" and c.workers == main]
    for c in masked:
        bare = _find(cells, db=db, app="bare", clients=c.clients)
        if bare is not None and c.clients >= 8:
            ratio = c.rps / bare.rps
            line(f"masked / bare route at {c.clients} clients >= 50 %", f"{ratio:.0%}", ratio >= 0.5)
    at32 = _find(masked, clients=32)
    if at32 is not None:
        line("masked p99 at 32 clients <= 100 ms", f"{at32.p99:.0f} ms", at32.p99 <= 100)
    if masked:
        longest = max(c.longest for c in masked)
        line("masked: no request over 500 ms", f"max {longest:.0f} ms", longest <= 500)
    if one is not None:
        for n in (8, 32):
            two, single = _find(masked, clients=n), _find(cells, db=db, page="masked", workers=one, clients=n)
            if two is not None and single is not None:
                ratio = two.rps / single.rps
                line(f"{main} / {one} at {n} clients >= 1.6x", f"{ratio:.2f}x", ratio >= 1.6)
    busy = [c for c in masked if c.clients >= 8] or masked
    if busy:
        cpu = sum(c.app_cpu_ms * c.requests for c in busy) / max(sum(c.requests for c in busy), 1)
        line("app CPU per masked view <= 2 ms", f"{cpu:.2f} ms", cpu <= 2.0)


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit(
            "bench_production_path: run as root (Apache's children, keyd's peer checks), like make bench"
        )
    if shutil.which("ab") is None:
        raise SystemExit("bench_production_path: ab is missing (Debian package apache2-utils: make sysdeps)")
    databases = _env_list("BENCH_DATABASES", "sqlite,mariadb")
    main_workers = (
        Workers.parse(os.environ["BENCH_MAIN"]) if os.environ.get("BENCH_MAIN") else default_workers()
    )
    one = Workers(main_workers.model, 1, main_workers.threads)
    compare = [Workers.parse(s) for s in _env_list("BENCH_COMPARE", str(one))]
    model = next(
        (line for line in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in line), ""
    )
    print(
        f"production-path benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs ({model.partition(':')[2].strip()}), load average {_loadavg()}\n"
        f"ab -k, {os.environ.get('BENCH_REQUESTS') or os.environ.get('BENCH_SECONDS', '3')}"
        f"{' requests' if os.environ.get('BENCH_REQUESTS') else ' s'} per cell; "
        f"CPU columns: CPU time per request of gunicorn's workers (app) and of Apache"
    )
    with _keyd.unsealed_keyd() as keyd, tempfile.TemporaryDirectory(prefix="bench-prod-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o711)  # noqa: S103 - Apache's children (www-data) walk to the web socket
        bench = Bench(tmp, keyd.keyd.socket)
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
                    raise SystemExit(f"bench: unknown database {db!r} (sqlite, mariadb)")
                bench.section(db, url, main_workers, compare)
        finally:
            bench.apache.stop()
            for server in servers:
                server.stop()
        for db in databases:
            goals(bench.cells, db, main_workers, one if one in compare else None)
        print(f"\n  load average at the end {_loadavg()}")
        if any(c.errors for c in bench.cells):
            print("  some cells had failed or non-2xx answers (errors column)")
            raise SystemExit(1)


if __name__ == "__main__":
    main()
