"""keyd benchmark: the in-process ceiling, keyd single-field round trips, batches, and SoftHSM2 mode.

Run as root from the repo root: `.venv/bin/python bench/bench_keyd.py` (or `make bench`). It starts its
own keyd daemons and SoftHSM2 token in a temp dir and takes about a minute. Not a test: nothing here
fails on a slow machine; the targets are printed next to the figures.

"One core" rows pin keyd and the benchmark to CPU 0. On this VM a wake-up that crosses cores costs
tens of microseconds, so a strictly sequential ping-pong is much faster when both ends share a core;
the "2 cores" rows use the default scheduler, and the concurrent row runs several client processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from keyd.client import Context, KeydClient  # noqa: E402

SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "bench-pin-0000"
FIELD = b"4111111111111111"  # a card number
AAD = b"\x01\x00\x00\x00\x01\x08cust-123\x03pan"
BIG = [f"--budget={s}.{w}=1000000000" for s in ("employee", "global") for w in ("minute", "hour", "day")]


# The transport floor: a plain threading Unix-socket server answering 4-byte-length + JSON/base64
# requests with a canned answer, no crypto, no validation (about 44k requests/s on one core of this
# machine kind, measured before keyd was written).
ECHO_SERVER = """
import json, os, socket, struct, sys, threading
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(8)
def serve(conn):
    while True:
        head = conn.recv(4)
        if len(head) < 4:
            return
        body = conn.recv(struct.unpack(">I", head)[0])
        req = json.loads(body)
        out = json.dumps({"ok": True, "data": req["data"]}).encode()
        conn.sendall(struct.pack(">I", len(out)) + out)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


def json_floor(base: Path, cpus: set[int], n: int = 30_000) -> float:
    import base64
    import json
    import socket
    import struct

    path = base / "echo.sock"
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(path)])
    try:
        while not path.exists():
            time.sleep(0.01)
        pin_process(proc.pid, cpus)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(path))
            data = base64.b64encode(FIELD).decode()

            def one() -> object:
                body = json.dumps({"op": "encrypt", "actor": "bench", "data": data}).encode()
                s.sendall(struct.pack(">I", len(body)) + body)
                head = s.recv(4)
                return json.loads(s.recv(struct.unpack(">I", head)[0]))

            for _ in range(2000):
                one()
            return rate(one, n)
    finally:
        proc.kill()
        proc.wait()
        path.unlink()


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (keyd's threads too, not just its main thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):  # a thread that just exited
            os.sched_setaffinity(int(tid), cpus)


class Daemon:
    def __init__(self, base: Path, mode: str, env: dict[str, str]) -> None:
        self.base = base
        self.mode = mode
        self.env = env
        base.mkdir()
        (base / "shm").mkdir()
        self.sock = base / "run" / "keyd.sock"
        self.flags = [
            f"--socket={self.sock}",
            f"--state-dir={base / 'state'}",
            f"--drop-path={base / 'shm' / 'ekey'}",
            "--allow-uid=0",
            f"--mode={mode}",
            "--token-label=bench",
            "--poll-interval=0.05",
            "--no-syslog",
            *BIG,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def drop(self, secret: bytes) -> None:
        tmp = self.base / "shm" / "ekey-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secret)
        os.close(fd)
        os.rename(tmp, self.base / "shm" / "ekey")

    def keyd(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        cmd = [sys.executable, "-m", "keyd", *args, *self.flags]
        return subprocess.run(cmd, cwd=ROOT, env=self.env, check=True, capture_output=True)

    def start(self, secret: bytes) -> None:
        self.drop(secret)
        self.keyd("init", "--key-kind", "raw", "--wait", "10")
        log = (self.base / "keyd.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keyd", "serve", *self.flags],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"keyd did not start: {(self.base / 'keyd.log').read_text()}")
            time.sleep(0.02)
        self.drop(secret)
        with KeydClient(self.sock) as c:
            while c.status().sealed:
                if time.monotonic() > deadline:
                    raise SystemExit(f"keyd did not unseal: {(self.base / 'keyd.log').read_text()}")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def rate(fn: Callable[[], object], n: int, runs: int = 3) -> float:
    """Best of `runs`: this machine is shared, and other load only ever makes a run slower."""
    best = 0.0
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(n // runs):
            fn()
        best = max(best, (n // runs) / (time.perf_counter() - start))
    return best


def ceiling(n: int = 300_000) -> tuple[float, float]:
    """In-process AES-256-GCM encrypts of one field: with a fresh random nonce (as keyd must), and bare."""
    gcm = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    urandom = os.urandom
    enc = gcm.encrypt
    fresh = rate(lambda: enc(urandom(12), FIELD, AAD), n)
    bare = rate(lambda: enc(nonce, FIELD, AAD), n)
    return fresh, bare


def latencies(sock: Path, op: str, n: int) -> tuple[float, list[int]]:
    ctx = Context("cust-123", "pan")
    with KeydClient(sock) as c:
        blob = c.encrypt(FIELD, context=ctx, actor="bench", purpose="bench")
        if op == "encrypt":

            def call() -> object:
                return c.encrypt(FIELD, context=ctx, actor="bench", purpose="bench")
        else:

            def call() -> object:
                return c.decrypt(blob, context=ctx, actor="bench", purpose="bench")

        for _ in range(2000):
            call()
        out = []
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(n):
            t0 = clock()
            call()
            out.append(clock() - t0)
        total = clock() - start
    return n / (total / 1e9), out


def _worker(sock: str, op: str, seconds: float, q: Any) -> None:
    ctx = Context("cust-123", "pan")
    with KeydClient(sock) as c:
        blob = c.encrypt(FIELD, context=ctx, actor="bench", purpose="bench")
        lat = []
        clock = time.perf_counter_ns
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = clock()
            if op == "encrypt":
                c.encrypt(FIELD, context=ctx, actor="bench", purpose="bench")
            else:
                c.decrypt(blob, context=ctx, actor="bench", purpose="bench")
            lat.append(clock() - t0)
    q.put(lat)


def concurrent(sock: Path, op: str, workers: int, seconds: float = 3.0) -> tuple[float, list[int]]:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(sock), op, seconds, q)) for _ in range(workers)]
    for p in procs:
        p.start()
    lats: list[int] = []
    for _ in procs:
        lats += q.get()
    for p in procs:
        p.join()
    return len(lats) / seconds, lats


def batch_rate(sock: Path, n_batches: int, size: int = 100) -> float:
    items = [(Context(f"cust-{i}", "pan"), FIELD) for i in range(size)]
    with KeydClient(sock) as c:
        for _ in range(20):
            c.encrypt_batch(items, actor="bench", purpose="bench")
        return size * rate(lambda: c.encrypt_batch(items, actor="bench", purpose="bench"), n_batches)


def _batch_worker(sock: str, seconds: float, q: Any) -> None:
    items = [(Context(f"cust-{i}", "pan"), FIELD) for i in range(100)]
    done = 0
    with KeydClient(sock) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            c.encrypt_batch(items, actor="bench", purpose="bench")
            done += 100
    q.put(done)


def concurrent_batches(sock: Path, workers: int, seconds: float = 3.0) -> float:
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_batch_worker, args=(str(sock), seconds, q)) for _ in range(workers)]
    for p in procs:
        p.start()
    total: int = sum(q.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def pct(values: list[int], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] / 1000  # ns -> µs


def raw_pkcs11(env: dict[str, str], n: int = 20_000) -> tuple[float, float]:
    """python-pkcs11 AES-GCM encrypts of one field in the token, in this process, no keyd: with a
    session key (what keyd works with: a session copy of its token key) and with a token object."""
    os.environ["SOFTHSM2_CONF"] = env["SOFTHSM2_CONF"]
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism
    from pkcs11.mechanisms import GCMParams

    lib = pkcs11.lib(SOFTHSM)
    rates = []
    token = lib.get_token(token_label="bench")  # noqa: S106 - a token's name, not a secret
    with token.open(user_pin=PIN, rw=True) as session:
        for store in (False, True):
            key: Any = session.generate_key(
                KeyType.AES,
                256,
                store=store,
                label="raw-bench",
                template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )

            def one(key: Any = key, urandom: Callable[[int], bytes] = os.urandom) -> object:
                return key.encrypt(
                    FIELD, mechanism=Mechanism.AES_GCM, mechanism_param=GCMParams(urandom(12), AAD)
                )

            for _ in range(1000):
                one()
            rates.append(rate(one, n))
    return rates[0], rates[1]


def row(label: str, value: str, target: str = "", verdict: str = "") -> None:
    print(f"  {label:<58} {value:>22}  {target:<22} {verdict}")


def main() -> int:
    if os.geteuid() != 0:
        print("bench_keyd: run as root (keyd's drop file and socket checks)", file=sys.stderr)
        return 1
    cpus = os.sched_getaffinity(0)
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "?")
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"keyd benchmark, {when}, nproc={os.cpu_count()}, {model}; load average before the run: {load}")
    base = Path(tempfile.mkdtemp(prefix="keyd-bench-"))
    daemons: list[Daemon] = []
    try:
        os.sched_setaffinity(0, {0})
        fresh, bare = ceiling()
        os.sched_setaffinity(0, cpus)
        print("\nIn-process AES-256-GCM, one 16-byte field, one core (the ceiling)")
        row("encrypt, fresh os.urandom(12) nonce per call", f"{fresh:,.0f} ops/s")
        row("encrypt, same nonce (unsafe; raw cipher speed only)", f"{bare:,.0f} ops/s")

        os.sched_setaffinity(0, {0})
        floor_one = json_floor(base, {0})
        os.sched_setaffinity(0, cpus)
        floor_two = json_floor(base, cpus)
        print("\nTransport floor: plain Unix-socket round trip, 4-byte length + JSON/base64, no crypto")
        row("one connection, server and client on one core", f"{floor_one:,.0f} req/s")
        row("one connection, 2 cores", f"{floor_two:,.0f} req/s")

        env = dict(os.environ)
        filed = Daemon(base / "file", "file", env)
        daemons.append(filed)
        filed.start(secrets.token_hex(32).encode() + b"\n")
        assert filed.proc is not None

        print("\nkeyd file mode, single-field round trips (one connection, sequential)")
        for op in ("encrypt", "decrypt"):
            pin_process(filed.proc.pid, {0})
            os.sched_setaffinity(0, {0})
            ops, lat = latencies(filed.sock, op, 30_000)
            ok = ops >= 40_000 and pct(lat, 0.99) <= 250
            row(
                f"{op}, keyd and client on one core",
                f"{ops:,.0f} ops/s",
                ">= 40,000 ops/s",
                "ok" if ok else "MISSED",
            )
            row("  latency p50 / p99", f"{pct(lat, 0.5):.0f} / {pct(lat, 0.99):.0f} µs", "p99 <= 250 µs")
            row("  / transport floor, one core", f"{ops / floor_one:.0%}")
            pin_process(filed.proc.pid, cpus)
            os.sched_setaffinity(0, cpus)
            ops, lat = latencies(filed.sock, op, 20_000)
            row(f"{op}, 2 cores, default scheduling", f"{ops:,.0f} ops/s")
            row("  latency p50 / p99", f"{pct(lat, 0.5):.0f} / {pct(lat, 0.99):.0f} µs")
            row("  / transport floor, 2 cores", f"{ops / floor_two:.0%}")

        print("\nkeyd file mode, single-field round trips, 4 client processes at once (2 cores)")
        for op in ("encrypt", "decrypt"):
            ops, lat = concurrent(filed.sock, op, 4)
            ok = ops >= 40_000 and pct(lat, 0.99) <= 250
            row(f"{op}, aggregate", f"{ops:,.0f} ops/s", ">= 40,000 ops/s", "ok" if ok else "MISSED")
            row("  latency p50 / p99", f"{pct(lat, 0.5):.0f} / {pct(lat, 0.99):.0f} µs", "p99 <= 250 µs")

        print("\nkeyd file mode, encrypt batches of 100 fields (one connection)")
        pin_process(filed.proc.pid, {0})
        os.sched_setaffinity(0, {0})
        one_core = batch_rate(filed.sock, 600)
        pin_process(filed.proc.pid, cpus)
        os.sched_setaffinity(0, cpus)
        two_core = batch_rate(filed.sock, 600)
        two_clients = concurrent_batches(filed.sock, 2)
        for label, value in (
            ("one connection, one core", one_core),
            ("one connection, 2 cores", two_core),
            ("2 client processes, 2 cores", two_clients),
        ):
            ratio = value / fresh
            row(f"batch of 100, {label}", f"{value:,.0f} fields/s")
            row(
                "  / in-process ceiling (fresh nonce)",
                f"{ratio:.0%}",
                ">= 35%",
                "ok" if ratio >= 0.35 else "MISSED",
            )
            row("  / in-process ceiling (bare cipher)", f"{value / bare:.0%}")
        filed.stop()

        print("\nSoftHSM2 mode (AES-GCM inside the token; every PKCS#11 call behind one lock)")
        tokens = base / "tokens"
        tokens.mkdir()
        conf = base / "softhsm2.conf"
        conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        env = dict(os.environ, SOFTHSM2_CONF=str(conf))
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                "bench",
                "--so-pin",
                "12345678",
                "--pin",
                PIN,
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        hsm = Daemon(base / "hsm", "pkcs11", env)
        daemons.append(hsm)
        hsm.start(PIN.encode() + b"\n")
        assert hsm.proc is not None
        os.sched_setaffinity(0, {0})
        raw, raw_token = raw_pkcs11(env)
        row("raw python-pkcs11 encrypt, session key, one core", f"{raw:,.0f} ops/s")
        row("raw python-pkcs11 encrypt, token-object key, one core", f"{raw_token:,.0f} ops/s")
        pin_process(hsm.proc.pid, {0})
        ops, lat = latencies(hsm.sock, "encrypt", 10_000)
        row("keyd single-field encrypt, one core", f"{ops:,.0f} ops/s")
        row("  / raw python-pkcs11, session key", f"{ops / raw:.0%}")
        row("  latency p50 / p99", f"{pct(lat, 0.5):.0f} / {pct(lat, 0.99):.0f} µs")
        hb = batch_rate(hsm.sock, 200)
        row("keyd batch of 100, one core", f"{hb:,.0f} fields/s")
        verdict = "ok" if hb / raw >= 0.8 else "MISSED"
        row("  / raw python-pkcs11, session key", f"{hb / raw:.0%}", ">= 80%", verdict)
        row("  / raw python-pkcs11, token-object key", f"{hb / raw_token:.0%}")
        pin_process(hsm.proc.pid, cpus)
        os.sched_setaffinity(0, cpus)
        hb2 = batch_rate(hsm.sock, 200)
        row("keyd batch of 100, 2 cores", f"{hb2:,.0f} fields/s")
        verdict = "ok" if hb2 / raw >= 0.8 else "MISSED"
        row("  / raw python-pkcs11, session key", f"{hb2 / raw:.0%}", ">= 80%", verdict)
        hsm.stop()
    finally:
        for d in daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
