"""`flask --app webapp health --agent ADDR:PORT`: this node's answer to the balancer's agent-check.

HAProxy passes TLS through (`mode tcp`), so it cannot ask the web app itself: every HTTPS request needs
an employee's client certificate. Instead HAProxy connects to this agent (`agent-check agent-port
PORT`), reads one line and acts on it (HAProxy 2.6 configuration.txt, "agent-check"):

    up                    requests can work (webapp.health finds no problem)
    down #sealed          keyd answers, but is sealed
    down #keyd            keyd does not answer
    down #database        the audit append (a write, rolled back) fails (told after a grace)
    down #database keyd   several at once (one word per failing part; "sealed" stands for keyd)
    down #error           the check itself failed: fail closed
    down #timeout         the check did not finish in time (told after a grace)

HAProxy shows what follows '#' on its stats page ("via agent : down (sealed)"); it is a fixed word per
part, never a problem's text, so nothing from an error reaches the balancer. The agent sends the line
without waiting for input (HAProxy's `agent-send`, or anything else a client sends, is read and thrown
away) and closes.

`database` and `timeout` (the probe is an audit append: it hangs when the database stalls) are told
only once they have lasted `--database-grace` seconds (`DATABASE_GRACE`, 0 = at once); until then the
agent says `up`, or the node-local words alone (`down #sealed` while the database part waits). Why: a
database problem is shared by every web node (they all write to the same Galera node through the
balancer), so every agent says `down #database` at the same moment and HAProxy takes ALL the nodes
out, cutting every employee's connection (`on-marked-down shutdown-sessions`). A Galera fail-over
(writes stall ~6 s while the cluster notices the dead node) would then cost every employee refused
connections instead of a slow page or one "try again". `sealed`, `keyd` and `error` are this node's
own and take it out at once: another node can serve its employees. A database problem that outlasts
the grace is told (all nodes out: nothing works anyway, and HAProxy's stats say why); so is one that
only this node has, 15 s late: the price of not cutting everyone at each fail-over.

Bounded, so that neither the balancers nor anyone else who reaches the port can make it hammer the
database or keyd, or grow without limit:
- the verdict is cached for `CACHE_SECONDS`: a burst of checks costs one probe;
- one probe at a time, in its own thread; a connection waits at most `ANSWER_SECONDS` for it and is
  then told `down #timeout` (HAProxy's agent-inter, 2 s by default, is also its timeout for the answer;
  a late answer would change nothing there);
- at most `WORKERS` connections are served at once; more wait in the kernel's listen backlog;
- each connection is closed after at most `DRAIN_SECONDS` of reading what the client sent.

Only changes of the verdict are logged (stderr: the journal under systemd), with the problem lines of
webapp.health (exception classes and refusal reasons, never an error's text), not every check. The log
shows a database problem at once (with a note that the balancer is told only after the grace), and
one more line when the grace runs out and the balancer is told.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

import click

from webapp.cli import UsageFailure
from webapp.health import SEALED, findings
from webapp.services import Services

CACHE_SECONDS = 1.0
ANSWER_SECONDS = 1.5
DRAIN_SECONDS = 0.25
DRAIN_BYTES = 64 * 1024
WORKERS = 4
BACKLOG = 16
DATABASE_GRACE = 15.0
MAX_DATABASE_GRACE = 600.0
# Problems every web node shares (the one database behind them all): told only after the grace.
SHARED = frozenset({"database", "timeout"})
_PORT = re.compile(r"[0-9]{1,5}")
_SECONDS = re.compile(r"[0-9]{1,3}(\.[0-9]{1,3})?")
_MAX_LISTEN = 100  # a bracketed scoped IPv6 address and a port fit well inside


@dataclass(frozen=True)
class Verdict:
    """What the agent says: up, or down with the failing parts (words) and the problem lines (log)."""

    words: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def up(self) -> bool:
        return not self.words

    def line(self) -> bytes:
        # The space before '#' matters: HAProxy only sees a description where a word starts, and
        # reads "down#sealed" as one unknown word ("agent reports an error"), leaving the node in.
        return b"up\n" if self.up else ("down #" + " ".join(self.words) + "\n").encode("ascii")

    def describe(self) -> str:
        return "up" if self.up else "down: " + "; ".join(self.problems)


def verdict_of(svc: Services) -> Verdict:
    """The health check (webapp.health.findings) as the agent's verdict."""
    found = findings(svc)
    words = tuple(
        "sealed" if part == "keyd" and problem == SEALED else part for part, problem in found.items()
    )
    return Verdict(words, tuple(found.values()))


FAILED = Verdict(("error",), ("the health check itself failed",))


def timed_out(seconds: float) -> Verdict:
    return Verdict(("timeout",), (f"the health check did not finish within {seconds:g} s",))


class CachedCheck:
    """The verdict of `check`, at most `max_age` seconds old, one check running at a time.

    `verdict()` never raises: an exception in the check is `down #error`, a check still running after
    `wait` seconds is `down #timeout` for that caller (the check carries on, and the next caller gets
    its result). `on_change(old, new)` is called, under the lock, whenever the verdict changes
    (`old` is None for the first)."""

    def __init__(
        self,
        check: Callable[[], Verdict],
        *,
        max_age: float = CACHE_SECONDS,
        wait: float = ANSWER_SECONDS,
        on_change: Callable[[Verdict | None, Verdict], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._max_age = max_age
        self._wait = wait
        self._on_change = on_change
        self._clock = clock
        self._cond = threading.Condition()
        self._last: Verdict | None = None  # the last verdict logged
        self._result: Verdict | None = None  # the last check's result ...
        self._at = 0.0  # ... and when it finished
        self._finished = 0  # checks finished so far
        self._running = False

    def verdict(self) -> Verdict:
        with self._cond:
            if self._result is not None and self._clock() - self._at < self._max_age:
                return self._result
            # Any check that finishes from now on will do: one already running started before we
            # came, but its result is no older than a cached one would be.
            seen = self._finished
            if not self._running:
                try:
                    self._start()
                except RuntimeError:  # no thread to be had: say so rather than nothing
                    self._running = False
                    self._record(FAILED)
                    return FAILED
            deadline = self._clock() + self._wait
            while self._finished == seen:
                left = deadline - self._clock()
                if left <= 0:
                    late = timed_out(self._wait)
                    self._record(late)
                    return late
                self._cond.wait(left)
            return self._result or FAILED  # never None here: a check finished after we came

    def _start(self) -> None:
        self._running = True
        threading.Thread(target=self._run, name="health-check", daemon=True).start()

    def _run(self) -> None:
        try:
            result = self._check()
        except Exception:  # noqa: BLE001 - any failure of the check is "down" (fail closed)
            result = FAILED
        with self._cond:
            self._result, self._at = result, self._clock()
            self._finished += 1
            self._running = False
            self._record(result)
            self._cond.notify_all()

    def _record(self, verdict: Verdict) -> None:
        if verdict != self._last:
            old, self._last = self._last, verdict
            self._on_change(old, verdict)


class Grace:
    """What the balancer is told: the verdict, with the shared words (`SHARED`) held back until some
    shared problem has lasted `seconds` without a verdict free of them in between.

    A database problem is (almost always) every node's at once: told at once, it takes every node
    out together and refuses every employee, where waiting out a fail-over would have cost them a
    slow page or one "try again". Node-local words are told at once: with both kinds present, only
    the local ones until the grace has passed. `on_release(verdict)` is called (under the lock) when
    a grace runs out and the shared words are told (not with `seconds` 0: nothing was held).
    Thread-safe: every connection asks."""

    def __init__(
        self,
        seconds: float,
        *,
        on_release: Callable[[Verdict], None] = lambda _verdict: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seconds = seconds
        self._on_release = on_release
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the shared trouble began (None: there is none)
        self._released = False  # the shared words are told

    def told(self, verdict: Verdict) -> Verdict:
        with self._lock:
            if not SHARED.intersection(verdict.words):
                self._since, self._released = None, False  # recovered: the next trouble waits again
                return verdict
            now = self._clock()
            if self._since is None:
                self._since = now
            if not self._released and now - self._since >= self._seconds:
                self._released = True
                if self._seconds > 0:  # with no grace nothing was held back: nothing to announce
                    self._on_release(verdict)
            if self._released:
                return verdict
            return Verdict(tuple(w for w in verdict.words if w not in SHARED), verdict.problems)


def parse_grace(text: str) -> float:
    """Seconds, a plain decimal number from 0 to MAX_DATABASE_GRACE (no sign, exponent, nan or inf).
    Raises `UsageFailure` naming the rule (never echoing the value)."""
    if not _SECONDS.fullmatch(text) or float(text) > MAX_DATABASE_GRACE:
        raise UsageFailure(
            f"--database-grace must be seconds from 0 to {MAX_DATABASE_GRACE:g}, e.g. 15 (0: tell the"
            " balancer of a database problem at once)"
        )
    return float(text)


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT or [IPv6]:PORT, an IP address (a name would be resolved: not what the balancer was
    told) and a port from 1 to 65535. Raises `UsageFailure` naming the rule (never echoing the value)."""
    example = "e.g. 192.0.2.11:9700 or [2001:db8::11]:9700"
    if not text or len(text) > _MAX_LISTEN or not text.isascii() or not text.isprintable() or " " in text:
        raise UsageFailure(f"--agent must be ADDR:PORT, {example}")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise UsageFailure(f"--agent: an IPv6 address in brackets needs a port after it, {example}")
        port_text = rest[1:]
        version = 6
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise UsageFailure(f"--agent needs a port: ADDR:PORT, {example}")
        if ":" in host:
            raise UsageFailure(f"--agent: put an IPv6 address in brackets, {example}")
        version = 4
    if not host:
        raise UsageFailure(f"--agent needs the address to listen on before the port, {example}")
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise UsageFailure(f"--agent: the port must be a number from 1 to 65535, {example}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UsageFailure(
            f"--agent: the address must be an IP address (not a host name), {example}"
        ) from None
    if address.version != version:
        raise UsageFailure(f"--agent: only an IPv6 address goes in brackets, {example}")
    return host, int(port_text)


def listen(host: str, port: int) -> socket.socket:
    """The agent's listening socket; `OSError` when the address cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def bind_problem(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "error")
    if exc.errno == errno.EADDRINUSE:
        return f"the port is in use ({name}) — pick another --agent port or stop what holds it"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"no interface has that address ({name}) — give one of this node's addresses"
    if exc.errno == errno.EACCES:
        return f"not allowed to listen there ({name}) — use a port above 1023"
    return f"cannot listen ({name}) — check the --agent address"


def answer(conn: socket.socket, line: Callable[[], bytes]) -> None:
    """Send one line and close, having read (and thrown away) what the client sent meanwhile.

    Closing a socket with unread input makes the kernel reset the connection, and a reset can
    overtake the line at the peer: so half-close, then drain until the client closes, for at most
    DRAIN_SECONDS and DRAIN_BYTES."""
    with conn:
        try:
            conn.settimeout(DRAIN_SECONDS)
            conn.sendall(line())
            conn.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + DRAIN_SECONDS
            drained = 0
            while drained < DRAIN_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(left)
                data = conn.recv(4096)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass  # the client went away or was too slow: nothing more is owed to it


def serve(
    listener: socket.socket,
    line: Callable[[], bytes],
    *,
    stop: threading.Event,
    workers: int = WORKERS,
) -> None:
    """Accept and answer until `stop` is set; at most `workers` connections at once."""
    listener.settimeout(0.2)  # how soon a stop is noticed
    slots = threading.BoundedSemaphore(workers)

    def release(_: object) -> None:
        slots.release()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="health-agent") as pool:
        while not stop.is_set():
            if not slots.acquire(timeout=0.2):
                continue
            try:
                conn, _peer = listener.accept()
            except TimeoutError:
                slots.release()
                continue
            except OSError:
                slots.release()  # out of file descriptors, or a connection reset before accept
                stop.wait(0.1)
                continue
            pool.submit(answer, conn, line).add_done_callback(release)


def change_logger(grace: float) -> Callable[[Verdict | None, Verdict], None]:
    """Logs each change of the verdict as found, at once, whatever the balancer is told (operators
    want to see database trouble as it starts), noting when the balancer is told only after the grace."""

    def log(old: Verdict | None, new: Verdict) -> None:
        # Only changes: HAProxy asks every couple of seconds, forever.
        prefix = "health agent: now " if old is not None else "health agent: "
        note = ""
        if grace > 0 and SHARED.intersection(new.words):
            note = f" (the balancer is told of the database only once this has lasted {grace:g} s)"
        click.echo(prefix + new.describe() + note, err=True)

    return log


def release_logger(grace: float) -> Callable[[Verdict], None]:
    def log(verdict: Verdict) -> None:
        told = verdict.line().decode("ascii").strip()
        click.echo(
            f"health agent: told the balancer {told!r}: the database trouble lasted {grace:g} s",
            err=True,
        )

    return log


def run(svc: Services, host: str, port: int, *, database_grace: float = DATABASE_GRACE) -> None:
    """Listen on host:port and answer until SIGTERM or SIGINT (then exit 0)."""
    try:
        listener = listen(host, port)
    except OSError as exc:
        raise click.ClickException(f"--agent: {bind_problem(exc)}") from None
    check = CachedCheck(lambda: verdict_of(svc), on_change=change_logger(database_grace))
    grace = Grace(database_grace, on_release=release_logger(database_grace))
    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    click.echo(f"health agent listening on {shown}", err=True)
    with listener:
        serve(listener, lambda: grace.told(check.verdict()).line(), stop=stop)
    click.echo("health agent stopped", err=True)
