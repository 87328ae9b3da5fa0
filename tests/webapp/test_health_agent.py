"""`flask --app webapp health --agent ADDR:PORT` (webapp/health_agent.py): the real command as a
subprocess on loopback, with a real keyd (sealed, stopped, unsealed again) and a real database
(SQLite and a private MariaDB) made to refuse writes; hostile --agent values and hostile clients; and
a real HAProxy 2.6 that takes the node out of its pool and back on the agent's word."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.keyd.conftest import Running, unsealed_keyd
from tests.support import free_port, need_binary, stop_process
from tests.webapp.helpers import mariadb_read_only, refuse_audit_inserts
from webapp.cli import UsageFailure
from webapp.health_agent import CACHE_SECONDS, WORKERS, CachedCheck, Grace, Verdict, parse_grace, parse_listen

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = "e.g. 192.0.2.11:9700 or [2001:db8::11]:9700"


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Seconds until `predicate()` held; fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class Agent:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def ask(self, send: bytes = b"", *, timeout: float = 5.0) -> bytes:
        """Connect, send `send` (if any), read until the agent closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            if send:
                s.sendall(send)
            data = b""
            while chunk := s.recv(256):
                data += chunk
            return data

    def says(self, line: bytes) -> Callable[[], bool]:
        return lambda: self.ask() == line

    def log(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_agent(
    tmp_path: Path, *, database_url: str, keyd_socket: Path, grace: str | None = None
) -> Iterator[Agent]:
    """The real command, configured by its environment alone (as systemd would run it); `grace` is
    its --database-grace (left out: the default)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(
        STRONGROOM_SECRET_KEY=secrets.token_urlsafe(40),
        STRONGROOM_DATABASE_URL=database_url,
        STRONGROOM_KEYD_SOCKET=str(keyd_socket),
        STRONGROOM_INSTANCE_PATH=str(tmp_path / "instance"),
    )
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "flask", "--app", "webapp", "health", "--agent", f"127.0.0.1:{port}"),
                *(() if grace is None else ("--database-grace", grace)),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    agent = Agent(proc, port, log_path)
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the agent exited with {proc.returncode}: {agent.log()}")
            return "health agent listening on 127.0.0.1:" + str(port) in agent.log()

        wait_until(listening, timeout=30, what="the agent to listen")
        yield agent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def keyd() -> Iterator[Running]:
    with unsealed_keyd() as running:
        yield running


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "strongroom.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


def test_follows_keyd_sealed_stopped_and_unsealed_and_logs_only_changes(
    tmp_path: Path, keyd: Running, sqlite_url: str
) -> None:
    k = keyd.keyd
    with running_agent(tmp_path, database_url=sqlite_url, keyd_socket=k.socket) as agent:
        assert agent.ask() == b"up\n"
        for _ in range(20):  # a burst: answered from the cache, and not logged
            assert agent.ask() == b"up\n"

        k.cli("seal")
        took = wait_until(agent.says(b"down #sealed\n"), timeout=10, what="down #sealed")
        assert took <= CACHE_SECONDS + 1.0, took  # stale by at most the cache, plus a probe

        k.stop()
        took = wait_until(agent.says(b"down #keyd\n"), timeout=10, what="down #keyd")
        assert took <= CACHE_SECONDS + 1.0, took  # stale by at most the cache, plus a probe

        k.start()  # a restarted keyd is sealed until the next drop
        wait_until(agent.says(b"down #sealed\n"), timeout=10, what="down #sealed after the restart")
        k.unseal(keyd.key)
        took = wait_until(agent.says(b"up\n"), timeout=10, what="up after the unseal")
        assert took <= CACHE_SECONDS + 1.0, took  # stale by at most the cache, plus a probe
        for _ in range(10):
            assert agent.ask() == b"up\n"

        assert agent.stop() == 0
    assert agent.log() == [
        f"health agent listening on 127.0.0.1:{agent.port}",
        "health agent: up",
        "health agent: now down: vault is sealed",
        "health agent: now down: keyd unavailable (Unavailable)",
        "health agent: now down: vault is sealed",
        "health agent: now up",
        "health agent stopped",
    ]


def test_a_database_that_refuses_the_audit_append_is_down(
    tmp_path: Path, keyd: Running, db_url: str, owner_engine: sa.Engine, request: pytest.FixtureRequest
) -> None:
    with running_agent(tmp_path, database_url=db_url, keyd_socket=keyd.keyd.socket, grace="0") as agent:
        assert agent.ask() == b"up\n"

        refuse_audit_inserts(owner_engine)
        took = wait_until(agent.says(b"down #database\n"), timeout=10, what="down #database")
        assert took <= CACHE_SECONDS + 1.0, took  # stale by at most the cache, plus a probe
        with owner_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER audit_refuses")
        wait_until(agent.says(b"up\n"), timeout=10, what="up once the trigger is gone")

        if db_url.startswith("mysql"):  # the server's read_only: every write of the app refused
            with mariadb_read_only(request):
                wait_until(agent.says(b"down #database\n"), timeout=10, what="down #database (read-only)")
            wait_until(agent.says(b"up\n"), timeout=10, what="up once writable")

        keyd.keyd.cli("seal")  # both at once: one word each
        refuse_audit_inserts(owner_engine)
        wait_until(agent.says(b"down #database sealed\n"), timeout=10, what="both parts down")
        assert agent.stop() == 0
    log = agent.log()
    assert log[1] == "health agent: up"
    assert re.fullmatch(r"health agent: now down: database (write failed|unavailable) \(\w+\)", log[2]), log
    assert re.fullmatch(r"health agent: now down: database .*; vault is sealed", log[-2]), log
    # What the agent logs (and says) names classes and reasons, never a database's error text.
    assert not any("audit_refuses" in line or "45000" in line or "'no'" in line for line in log), log


def answers_during(agent: Agent, seconds: float) -> set[bytes]:
    """Every answer the agent gives while asked over and over for `seconds`."""
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(agent.ask())
        time.sleep(0.05)
    return seen


GRACE = 2.0


def test_a_database_outage_is_told_only_once_it_outlasts_the_grace(
    tmp_path: Path, keyd: Running, db_url: str, owner_engine: sa.Engine
) -> None:
    """What a Galera fail-over needs: every node stays in while the database stalls briefly; keyd's
    trouble, the node's own, takes it out at once even then; a recovery starts the grace again."""
    k = keyd.keyd
    with running_agent(tmp_path, database_url=db_url, keyd_socket=k.socket, grace=f"{GRACE:g}") as agent:
        assert agent.ask() == b"up\n"

        # The grace starts when the agent first finds the problem, never before the trigger exists:
        # every answer within GRACE of it is up, and down #database follows within a cache and a probe.
        refuse_audit_inserts(owner_engine)
        assert answers_during(agent, GRACE - 0.3) == {b"up\n"}
        took = wait_until(agent.says(b"down #database\n"), timeout=10, what="down #database after the grace")
        assert took <= 0.3 + CACHE_SECONDS + 1.0, took
        # ... while the log had it at once, noting the grace, and says when the balancer was told.
        found = r"health agent: now down: database (write failed|unavailable) \(\w+\)"
        note = rf" \(the balancer is told of the database only once this has lasted {GRACE:g} s\)"
        told = f"health agent: told the balancer 'down #database': the database trouble lasted {GRACE:g} s"
        log = agent.log()
        assert re.fullmatch(found + note, log[2]), log
        assert log[3] == told, log

        # Recovered, then refused again: a whole new grace (a flap is not the old outage going on).
        with owner_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER audit_refuses")
        wait_until(agent.says(b"up\n"), timeout=10, what="up once the trigger is gone")
        refuse_audit_inserts(owner_engine)
        assert answers_during(agent, GRACE - 0.3) == {b"up\n"}
        wait_until(agent.says(b"down #database\n"), timeout=10, what="down #database after the new grace")

        # Sealed during a database grace: down #sealed at once, the database word only after the grace.
        with owner_engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER audit_refuses")
        wait_until(agent.says(b"up\n"), timeout=10, what="up once the trigger is gone again")
        refused_at = time.monotonic()  # the grace cannot start before this
        refuse_audit_inserts(owner_engine)
        k.cli("seal")
        took = wait_until(agent.says(b"down #sealed\n"), timeout=10, what="down #sealed during the grace")
        assert took <= CACHE_SECONDS + 1.0, took
        left = GRACE - (time.monotonic() - refused_at) - 0.1
        if left > 0:
            assert answers_during(agent, left) == {b"down #sealed\n"}
        wait_until(agent.says(b"down #database sealed\n"), timeout=10, what="both words after the grace")

        k.unseal(keyd.key)  # the node-local trouble gone, the database's (past its grace) still told
        wait_until(agent.says(b"down #database\n"), timeout=10, what="down #database after the unseal")
        assert agent.stop() == 0
    log = agent.log()
    assert sum(line.startswith("health agent: told the balancer") for line in log) == 3, log
    assert not any("audit_refuses" in line or "45000" in line or "'no'" in line for line in log), log


def test_a_sealed_node_is_out_at_once_with_the_default_grace(
    tmp_path: Path, keyd: Running, sqlite_url: str
) -> None:
    k = keyd.keyd
    with running_agent(tmp_path, database_url=sqlite_url, keyd_socket=k.socket) as agent:
        assert agent.ask() == b"up\n"
        k.cli("seal")
        took = wait_until(agent.says(b"down #sealed\n"), timeout=10, what="down #sealed")
        assert took <= CACHE_SECONDS + 1.0, took


# --- the grace (a fake clock) ----------------------------------------------------------------------

DB = Verdict(("database",), ("database write failed (OperationalError)",))
LATE = Verdict(("timeout",), ("the health check did not finish within 1.5 s",))
SEALED = Verdict(("sealed",), ("vault is sealed",))
KEYD = Verdict(("keyd",), ("keyd unavailable (Unavailable)",))
DB_SEALED = Verdict(("database", "sealed"), ("database write failed (OperationalError)", "vault is sealed"))
BROKEN = Verdict(("error",), ("the health check itself failed",))


def graced(seconds: float) -> tuple[Grace, Clock, list[bytes]]:
    clock, released = Clock(), []
    grace = Grace(seconds, on_release=lambda v: released.append(v.line()), clock=clock)
    return grace, clock, released


def test_the_database_is_told_only_once_it_has_lasted_the_grace() -> None:
    grace, clock, released = graced(15)
    assert grace.told(Verdict()).line() == b"up\n"
    assert grace.told(DB).line() == b"up\n"
    clock.now += 14.9
    assert grace.told(DB).line() == b"up\n"
    assert released == []
    clock.now += 0.1
    assert grace.told(DB).line() == b"down #database\n"
    assert grace.told(DB).line() == b"down #database\n"
    assert released == [b"down #database\n"]  # once, when the grace ran out


def test_a_stall_then_errors_is_one_outage() -> None:
    grace, clock, _ = graced(15)
    assert grace.told(LATE).line() == b"up\n"  # the probe hangs while Galera notices the dead node
    clock.now += 8
    assert grace.told(DB).line() == b"up\n"  # then the writes fail: the same trouble
    clock.now += 7
    assert grace.told(DB).line() == b"down #database\n"
    assert grace.told(LATE).line() == b"down #timeout\n"


@pytest.mark.parametrize("local", [SEALED, KEYD, BROKEN], ids=["sealed", "keyd", "error"])
def test_node_local_words_are_told_at_once(local: Verdict) -> None:
    grace, clock, released = graced(15)
    assert grace.told(local) == local
    both = Verdict(("database", *local.words), ("database write failed (OperationalError)", *local.problems))
    assert grace.told(both).line() == local.line()  # the local word alone while the database waits
    clock.now += 15
    assert grace.told(both).line() == both.line()
    assert released == [both.line()]


def test_a_recovery_starts_the_grace_again() -> None:
    grace, clock, _ = graced(15)
    grace.told(DB)
    clock.now += 10
    assert grace.told(Verdict()).line() == b"up\n"
    clock.now += 1
    assert grace.told(DB).line() == b"up\n"
    clock.now += 14
    assert grace.told(DB).line() == b"up\n"  # 25 s of trouble, but not 15 s in one piece
    clock.now += 1
    assert grace.told(DB).line() == b"down #database\n"
    # Recovered after being told: the next outage waits out a grace too.
    assert grace.told(SEALED).line() == b"down #sealed\n"  # the database recovered; keyd did not
    assert grace.told(DB_SEALED).line() == b"down #sealed\n"
    clock.now += 15
    assert grace.told(DB_SEALED).line() == b"down #database sealed\n"


def test_no_grace_tells_at_once_and_announces_nothing() -> None:
    grace, _, released = graced(0)
    assert grace.told(DB).line() == b"down #database\n"
    assert grace.told(LATE).line() == b"down #timeout\n"
    assert released == []


def test_many_threads_see_one_grace_and_one_release() -> None:
    grace, clock, released = graced(15)
    with ThreadPoolExecutor(max_workers=16) as pool:
        assert set(pool.map(lambda _: grace.told(DB).line(), range(200))) == {b"up\n"}
        clock.now += 15
        assert set(pool.map(lambda _: grace.told(DB).line(), range(200))) == {b"down #database\n"}
    assert released == [b"down #database\n"]


# --- the cache (a fake clock and a check that counts its calls) ---------------------------------------


UP = Verdict()


class Probe:
    def __init__(self, verdict: Verdict | Exception = UP) -> None:
        self.verdict = verdict
        self.calls = 0
        self.release = threading.Event()
        self.release.set()
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self) -> Verdict:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.release.wait(10)
            if isinstance(self.verdict, Exception):
                raise self.verdict
            return self.verdict
        finally:
            with self._lock:
                self.running -= 1


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def cached(
    probe: Probe, clock: Callable[[], float] = time.monotonic, **kw: float
) -> tuple[CachedCheck, list[str]]:
    changes: list[str] = []
    check = CachedCheck(
        probe,
        on_change=lambda old, new: changes.append(f"{old and old.describe()} -> {new.describe()}"),
        clock=clock,
        **kw,
    )
    return check, changes


def test_a_burst_costs_one_probe_and_a_stale_verdict_another() -> None:
    probe, clock = Probe(), Clock()
    check, changes = cached(probe, clock, max_age=1.0)
    assert {check.verdict().line() for _ in range(100)} == {b"up\n"}
    assert probe.calls == 1
    clock.now += 0.9
    check.verdict()
    assert probe.calls == 1
    clock.now += 0.2
    probe.verdict = Verdict(("sealed",), ("vault is sealed",))
    assert check.verdict().line() == b"down #sealed\n"
    assert probe.calls == 2
    assert changes == ["None -> up", "up -> down: vault is sealed"]


def test_many_callers_share_one_probe_at_a_time() -> None:
    probe = Probe()
    probe.release.clear()
    check, _ = cached(probe, wait=5.0)
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(check.verdict) for _ in range(16)]
        time.sleep(0.3)
        probe.release.set()
        assert {f.result().line() for f in futures} == {b"up\n"}
    assert probe.calls == 1
    assert probe.most_at_once == 1


def test_a_check_that_raises_is_down_error() -> None:
    check, changes = cached(Probe(RuntimeError("secret detail")))
    assert check.verdict().line() == b"down #error\n"
    assert changes == ["None -> down: the health check itself failed"]


def test_a_check_that_hangs_is_down_timeout_then_its_result() -> None:
    probe = Probe()
    probe.release.clear()
    check, changes = cached(probe, wait=0.2)
    assert check.verdict().line() == b"down #timeout\n"
    assert check.verdict().line() == b"down #timeout\n"  # the same probe still runs: no second one
    assert probe.calls == 1
    probe.release.set()
    wait_until(lambda: check.verdict().line() == b"up\n", timeout=5, what="the late result")
    late = "down: the health check did not finish within 0.2 s"
    assert changes == [f"None -> {late}", f"{late} -> up"]


# --- hostile --agent values: one line, exit 2, the rule named (never the value echoed) --------------

REFUSED = [
    ("", f"--agent must be ADDR:PORT, {EXAMPLE}"),
    ("9700", f"--agent needs a port: ADDR:PORT, {EXAMPLE}"),
    ("127.0.0.1", f"--agent needs a port: ADDR:PORT, {EXAMPLE}"),
    (":9700", f"--agent needs the address to listen on before the port, {EXAMPLE}"),
    ("127.0.0.1:", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:0", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:70000", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:65536", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:-1", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:+80", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:9_700", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:0x10", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:http", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("127.0.0.1:９７００", f"--agent must be ADDR:PORT, {EXAMPLE}"),  # fullwidth digits
    ("127.0.0.1:97000000", f"--agent: the port must be a number from 1 to 65535, {EXAMPLE}"),
    ("localhost:9700", f"--agent: the address must be an IP address (not a host name), {EXAMPLE}"),
    ("web1.example:9700", f"--agent: the address must be an IP address (not a host name), {EXAMPLE}"),
    ("127.1:9700", f"--agent: the address must be an IP address (not a host name), {EXAMPLE}"),
    ("0x7f.0.0.1:9700", f"--agent: the address must be an IP address (not a host name), {EXAMPLE}"),
    ("127.000.000.001:9700", f"--agent: the address must be an IP address (not a host name), {EXAMPLE}"),
    ("256.0.0.1:9700", f"--agent: the address must be an IP address (not a host name), {EXAMPLE}"),
    ("::1:9700", f"--agent: put an IPv6 address in brackets, {EXAMPLE}"),
    ("[::1]", f"--agent: an IPv6 address in brackets needs a port after it, {EXAMPLE}"),
    ("[::1]9700", f"--agent: an IPv6 address in brackets needs a port after it, {EXAMPLE}"),
    ("[::1:9700", f"--agent: an IPv6 address in brackets needs a port after it, {EXAMPLE}"),
    ("[]:9700", f"--agent needs the address to listen on before the port, {EXAMPLE}"),
    ("[127.0.0.1]:9700", f"--agent: only an IPv6 address goes in brackets, {EXAMPLE}"),
    ("[web1]:9700", f"--agent: the address must be an IP address (not a host name), {EXAMPLE}"),
    (" 127.0.0.1:9700", f"--agent must be ADDR:PORT, {EXAMPLE}"),
    ("127.0.0.1:9700\n", f"--agent must be ADDR:PORT, {EXAMPLE}"),
    ("127.0.0.1:9700\x1b[2J", f"--agent must be ADDR:PORT, {EXAMPLE}"),
    ("1" * 101 + ":9700", f"--agent must be ADDR:PORT, {EXAMPLE}"),
    ("garbage", f"--agent needs a port: ADDR:PORT, {EXAMPLE}"),
]


@pytest.mark.parametrize(("value", "refusal"), REFUSED, ids=[repr(v)[:40] for v, _ in REFUSED])
def test_a_bad_listen_address_is_refused_with_the_rule(value: str, refusal: str) -> None:
    with pytest.raises(UsageFailure) as caught:
        parse_listen(value)
    assert caught.value.message == refusal
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:9700", ("127.0.0.1", 9700)),
        ("192.0.2.11:1", ("192.0.2.11", 1)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),  # noqa: S104 - a valid address; the firewall decides who reaches it
        ("[::1]:9700", ("::1", 9700)),
        ("[2001:db8::11]:9700", ("2001:db8::11", 9700)),
        ("[fe80::1%lo]:9700", ("fe80::1%lo", 9700)),
    ],
)
def test_a_listen_address_is_parsed(value: str, parsed: tuple[str, int]) -> None:
    assert parse_listen(value) == parsed


GRACE_RULE = (
    "--database-grace must be seconds from 0 to 600, e.g. 15"
    " (0: tell the balancer of a database problem at once)"
)
BAD_GRACES = [
    "-1",
    "nan",
    "inf",
    "-inf",
    "601",
    "600.001",
    "",
    "1e9",
    "1e1",
    "abc",
    " 5",
    "5 ",
    "+5",
    "0x10",
    "1_0",
    "5.",
    ".5",
    "1.2345",
    "1000",
    "１５",
    "15\n",
    "15s",
]


@pytest.mark.parametrize("value", BAD_GRACES, ids=[repr(v) for v in BAD_GRACES])
def test_a_bad_database_grace_is_refused_with_the_rule(value: str) -> None:
    with pytest.raises(UsageFailure) as caught:
        parse_grace(value)
    assert caught.value.message == GRACE_RULE
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("0", 0.0), ("15", 15.0), ("2.5", 2.5), ("0.25", 0.25), ("600", 600.0), ("007", 7.0)],
)
def test_a_database_grace_is_parsed(value: str, parsed: float) -> None:
    assert parse_grace(value) == parsed


def _flask(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", "health", *args],
        cwd=ROOT,
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_command_line_refuses_in_one_line_before_reading_any_settings() -> None:
    # No settings at all: the argument is refused first, as the usage error it is.
    result = _flask("--agent", "localhost:9700")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"Error: --agent: the address must be an IP address (not a host name), {EXAMPLE}"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "refusal"),
    [
        (("--agent", "127.0.0.1:9700", "--database-grace", "nan"), GRACE_RULE),
        (("--database-grace", "-1", "--agent", "127.0.0.1:9700"), GRACE_RULE),
        (("--database-grace", "5"), "--database-grace only applies with --agent ADDR:PORT"),
    ],
    ids=["nan", "negative-first", "without-agent"],
)
def test_a_bad_database_grace_is_one_line_before_reading_any_settings(
    args: tuple[str, ...], refusal: str
) -> None:
    result = _flask(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"Error: {refusal}"]
    assert result.stdout == ""


def test_a_port_in_use_is_one_line(tmp_path: Path, sqlite_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _flask(
            "--agent",
            f"127.0.0.1:{port}",
            env={
                "STRONGROOM_SECRET_KEY": secrets.token_urlsafe(40),
                "STRONGROOM_DATABASE_URL": sqlite_url,
                "STRONGROOM_INSTANCE_PATH": str(tmp_path / "instance"),
            },
        )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        "Error: --agent: the port is in use (EADDRINUSE) — pick another --agent port or stop what holds it"
    ]


# --- hostile clients ----------------------------------------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path, keyd: Running, sqlite_url: str) -> Iterator[Agent]:
    with running_agent(tmp_path, database_url=sqlite_url, keyd_socket=keyd.keyd.socket) as a:
        assert a.ask() == b"up\n"
        yield a


@pytest.mark.parametrize(
    "send",
    [
        b"",
        b"\n",
        b"state\n",  # what an `agent-send` might carry
        b"GET / HTTP/1.1\r\nHost: web1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(500),  # a TLS ClientHello's start
        b"PROXY TCP4 192.0.2.1 192.0.2.11 5555 9700\r\n",
        b"\x00" * 4096,
        os.urandom(32 * 1024),
    ],
    ids=["nothing", "newline", "agent-send", "http", "tls", "proxy", "nul", "random"],
)
def test_whatever_a_client_sends_it_gets_one_line(agent: Agent, send: bytes) -> None:
    assert agent.ask(send) == b"up\n"
    assert agent.ask() == b"up\n"


def test_a_flood_does_not_stop_it(agent: Agent) -> None:
    # More than it drains: it may reset this connection, but it answers the next one.
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", agent.port), timeout=5) as s:
        s.sendall(os.urandom(4 * 1024 * 1024))
    assert agent.ask() == b"up\n"


def test_silent_clients_hold_at_most_a_few_threads_briefly(agent: Agent) -> None:
    """Sixty connections that send nothing and never close: served a few at a time, each released
    after a fraction of a second, and the threads stay bounded."""
    baseline = agent.threads()
    idle = [socket.create_connection(("127.0.0.1", agent.port), timeout=30) for _ in range(60)]
    try:
        seen = [agent.threads()]
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            seen.append(agent.threads())
            time.sleep(0.05)
        # main + WORKERS connection threads + one check thread (+ whatever the baseline already had)
        assert max(seen) <= max(baseline, 1 + WORKERS + 1) + 1, (baseline, max(seen))
        for s in idle:
            s.settimeout(30)
            data = b""
            while chunk := s.recv(64):
                data += chunk
            assert data == b"up\n"
    finally:
        for s in idle:
            s.close()
    start = time.monotonic()
    assert agent.ask() == b"up\n"
    assert time.monotonic() - start < 1.0
    assert agent.proc.poll() is None


def test_sigterm_stops_it_cleanly(agent: Agent) -> None:
    hanging = socket.create_connection(("127.0.0.1", agent.port), timeout=5)
    try:
        start = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - start < 3
    finally:
        hanging.close()
    assert agent.log()[-1] == "health agent stopped"
    with pytest.raises(ConnectionRefusedError):
        agent.ask()


# --- a real HAProxy ----------------------------------------------------------------------------------


@dataclass
class Balancer:
    proc: subprocess.Popen[bytes]
    admin: Path

    def server(self) -> dict[str, str]:
        """web1's row of `show stat`, by column name."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.admin))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("svname") == "web1":
                return row
        raise AssertionError(f"no web1 in {lines}")

    def status(self) -> str:
        return self.server()["status"]


@contextlib.contextmanager
def haproxy(tmp_path: Path, *, web_port: int, agent_port: int) -> Iterator[Balancer]:
    """HAProxy as the design runs it, on loopback: TCP passthrough to the node; the node is in the
    pool only while its agent says up, and while both its web port and its agent port accept (a dead
    agent must not leave the node in: HAProxy ignores an agent it cannot reach)."""
    binary = need_binary("haproxy")
    base = tmp_path / "haproxy"
    base.mkdir()
    admin = base / "admin.sock"
    cfg = base / "haproxy.cfg"
    server = (
        f"server web1 127.0.0.1:{web_port} check inter 200ms rise 1 fall 1"
        f" agent-check agent-port {agent_port} agent-inter 200ms"
    )
    cfg.write_text(
        f"""global
    stats socket {admin} mode 600 level admin

defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
    timeout check 1s

listen web
    bind 127.0.0.1:{free_port()}
    option tcp-check
    tcp-check connect
    tcp-check connect port {agent_port}
    {server}
"""
    )
    check = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (base / "haproxy.log").open("wb")
    proc = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(admin.exists, timeout=10, what="HAProxy's admin socket")
        yield Balancer(proc, admin)
    finally:
        stop_process(proc)
        log.close()


def test_haproxy_takes_a_sealed_node_out_and_back_on_unseal(
    tmp_path: Path, keyd: Running, sqlite_url: str
) -> None:
    k = keyd.keyd
    with (
        socket.create_server(("127.0.0.1", 0)) as web,  # stands in for Apache's :443
        running_agent(tmp_path, database_url=sqlite_url, keyd_socket=k.socket) as agent,
        haproxy(tmp_path, web_port=web.getsockname()[1], agent_port=agent.port) as lb,
    ):
        wait_until(lambda: lb.status() == "UP", timeout=10, what="web1 UP")

        k.cli("seal")
        wait_until(lambda: lb.status() == "DOWN (agent)", timeout=10, what="web1 DOWN once sealed")
        row = lb.server()
        assert row["last_agt"] == "via agent : down (sealed)"
        time.sleep(1)  # the regular check keeps passing (both ports accept): the agent alone keeps it out
        row = lb.server()
        assert (row["status"], row["check_status"]) == ("DOWN (agent)", "L4OK")

        k.unseal(keyd.key)
        took = wait_until(lambda: lb.status() == "UP", timeout=10, what="web1 UP after the unseal")
        assert took < CACHE_SECONDS + 1.5, took

        agent.stop()  # a dead agent is a node out, not a node left in on its last word
        wait_until(lambda: lb.status() == "DOWN", timeout=10, what="web1 DOWN without its agent")
        assert lb.server()["check_status"] == "L4CON"
