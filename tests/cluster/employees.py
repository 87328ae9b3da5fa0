"""Employees' browsers in the `client` namespace, and a load of them working through the balancer.

Requests are made by threads that have joined the client's network namespace (setns(2) applies to
the calling thread only), so the test process itself is the employees' machine: no interpreter per
request, and the results come back as objects.

    with Employees(lan, "client", lb_address, ca_file) as office:
        alice = office.browser(cert, key, "alice", password)
        alice.login()
        work = office.load([alice, bob], seconds=20)      # runs in the background
        ...                                             # kill a node meanwhile
        report = work.result()

Each step of the load is one employee action (add a record, add a card, open the record, list the
records). A step answered 503, or whose connection broke, is tried once more after a pause, as a
person would: `Report.failed` counts the steps that still did not succeed, `Report.retried` those
that needed the second try.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

from tests.cluster.lan import NETNS_DIR, Lan
from tests.support import made_up_pan

CLONE_NEWNET = 0x40000000
SERVER_NAME = "localhost"
RETRY_PAUSE = 1.5  # what an employee waits before trying again
OK = (200, 302)
_CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def _join_netns(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


@dataclass
class Response:
    status: int  # 0: no answer (connection refused, reset, timed out)
    body: str = ""
    location: str = ""
    error: str = ""


@dataclass
class Browser:
    office: Employees
    cert: Path
    key: Path
    username: str
    password: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Response:
        return self.office.run(lambda: self._request(method, path, form))

    def _request(self, method: str, path: str, form: dict[str, str] | None) -> Response:
        headers = {"Host": SERVER_NAME}
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn = http.client.HTTPSConnection(SERVER_NAME, 443, timeout=30)
        try:
            # To the balancer's address, checking the certificate for the service's name.
            raw = socket.create_connection((self.office.lb, 443), timeout=30)
            conn.sock = self.office.context(self.cert, self.key).wrap_socket(raw, server_hostname=SERVER_NAME)
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            text = r.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            return Response(0, error=type(exc).__name__)
        finally:
            conn.close()
        for name, value in r.getheaders():
            if name.lower() == "set-cookie":
                key, _, val = value.split(";", 1)[0].partition("=")
                self.cookies[key.strip()] = val.strip()
        location = r.getheader("Location") or ""
        if "://" in location:
            location = "/" + location.split("://", 1)[1].split("/", 1)[-1]
        return Response(r.status, text, location)

    def csrf(self, path: str) -> str:
        page = self.request("GET", path)
        found = _CSRF.search(page.body)
        if found is None:
            raise AssertionError(f"{self.username}: no CSRF token on {path} ({page.status} {page.error})")
        return found.group(1)

    def login(self) -> Response:
        form = {"csrf_token": self.csrf("/login"), "username": self.username, "password": self.password}
        done = self.request("POST", "/login", form)
        if done.status != 302:
            raise AssertionError(f"{self.username}: login answered {done.status} {done.error}")
        return done


@dataclass
class Step:
    who: str
    what: str
    status: int
    attempts: int
    started: float
    ended: float


@dataclass
class Report:
    steps: list[Step]
    cards: dict[str, int]  # record path -> cards the employee was told were added

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.status not in OK]

    @property
    def retried(self) -> list[Step]:
        return [s for s in self.steps if s.attempts > 1]

    def per_second(self) -> float:
        if not self.steps:
            return 0.0
        span = max(s.ended for s in self.steps) - min(s.started for s in self.steps)
        return len(self.steps) / span if span > 0 else 0.0


class Employees:
    """A pool of threads inside the client namespace; every request runs on one of them."""

    def __init__(self, lan: Lan, host: str, lb: str, ca_file: Path, threads: int = 16) -> None:
        self.lb = lb
        self.ca_file = ca_file
        self._pool = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="client-ns",
            initializer=_join_netns,
            initargs=(NETNS_DIR / lan.netns(host),),
        )
        self._contexts: dict[Path, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Employees:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def context(self, cert: Path, key: Path) -> ssl.SSLContext:
        with self._lock:
            if cert not in self._contexts:
                ctx = ssl.create_default_context(cafile=str(self.ca_file))
                ctx.load_cert_chain(str(cert), str(key))
                self._contexts[cert] = ctx
            return self._contexts[cert]

    def browser(self, cert: Path, key: Path, username: str, password: str) -> Browser:
        return Browser(self, cert, key, username, password)

    def run(self, fn: Callable[[], Response]) -> Response:
        if threading.current_thread().name.startswith("client-ns"):
            return fn()  # already on a pool thread (a load's employee)
        return self._pool.submit(fn).result()

    def load(self, browsers: list[Browser], *, seconds: float, stop: threading.Event | None = None
             ) -> Future[Report]:  # fmt: skip
        """Every browser (logged in) works for `seconds` (or until `stop`), each on its own thread."""
        stop = stop or threading.Event()
        steps: list[Step] = []
        cards: dict[str, int] = {}
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def work(b: Browser) -> None:
            for step in _working_day(b):
                with lock:
                    steps.append(step)
                    if step.what.startswith("add card ") and step.status in OK:
                        record = step.what.removeprefix("add card ")
                        cards[record] = cards.get(record, 0) + 1
                if stop.is_set() or time.monotonic() > deadline:
                    return

        def everyone() -> Report:
            futures = [self._pool.submit(work, b) for b in browsers]
            for f in futures:
                f.result()
            return Report(steps, cards)

        done: Future[Report] = Future()

        def collect() -> None:
            try:
                done.set_result(everyone())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting test as is
                done.set_exception(exc)

        threading.Thread(target=collect, daemon=True).start()
        return done


def _attempt(b: Browser, what: str, method: str, path: str, form: Callable[[], dict[str, str]] | None = None
             ) -> tuple[Step, Response]:  # fmt: skip
    started = time.monotonic()
    for attempt in (1, 2):
        try:
            answer = b.request(method, path, form() if form else None)
        except AssertionError:  # no CSRF token: the page itself did not come
            answer = Response(0, error="no form")
        if answer.status not in (0, 503) or attempt == 2:
            break
        time.sleep(RETRY_PAUSE)
    return Step(b.username, what, answer.status, attempt, started, time.monotonic()), answer


def _working_day(b: Browser) -> Iterator[Step]:
    """Add a record, add cards to it, open it, list the records; again."""
    while True:
        crm_ref = "C" + "".join(secrets.choice("0123456789") for _ in range(8))

        def record_form(ref: str = crm_ref) -> dict[str, str]:
            return {"csrf_token": b.csrf("/records/"), "crm_ref": ref}

        step, added = _attempt(b, "add record", "POST", "/records/", record_form)
        yield step
        if step.status != 302 or not re.fullmatch(r"/records/\d+", added.location):
            continue
        record = added.location
        for i in range(2):
            pan = made_up_pan()
            form = {"pan": pan, "cardholder": f"Ada Lovelace {'I' * (i + 1)}", "exp_month": "12",
                    "exp_year": "2031"}  # fmt: skip

            def card_form(fields: dict[str, str] = form, page: str = record) -> dict[str, str]:
                return {"csrf_token": b.csrf(page)} | fields

            step, _ = _attempt(b, f"add card {record}", "POST", f"{record}/cards", card_form)
            yield step
        yield _attempt(b, "open record", "GET", record)[0]
        yield _attempt(b, "list records", "GET", "/records/")[0]
