"""Requests that the database rolled back on its own are run again, inside the app.

Under MariaDB Galera (docs/scaling.md) a request's transaction can lose to a write committed on
another node (a certification conflict) or to a concurrent one on the same node (a deadlock): the
server rolls the whole transaction back and answers 1213. A node that has left the cluster's primary
component answers 1047 to every statement. Either way nothing of the request was committed, so
running it again from the start is safe, and the employee should never see the collision.

`Retry` is WSGI middleware around the Flask app. It keeps the request body (up to the app's
MAX_CONTENT_LENGTH) and runs the request; when `failures.handle` finds one of those errors it asks
`discard(environ, exc)` first: on any attempt but the last that marks the attempt, records nothing
(the attempt leaves no trace: its transaction, audit records included, is gone, and the records a
failure page would add are not written), and `Retry` throws the attempt's answer away and runs the
request again in a fresh request context, after a short jittered pause. The last attempt's failure
is an ordinary outage: the 503 "try again" page and its audit record.

Never retried:
- a lost connection (2006, 2013) or any other error: whether the COMMIT happened is unknown, and a
  second run could do the action twice. It stays the 503 page, the employee decides;
- a request whose body cannot be kept: over MAX_CONTENT_LENGTH (the app refuses it anyway) or of
  unknown length (chunked): it runs once, as before.

What a re-run repeats outside the database: keyd calls (a reveal decrypts again, and keyd's own
per-node ceiling counts it twice: the employee can reach keyd's ceiling sooner, never later; the
global budget in the database counts it once, as the failed attempt's charge was rolled back),
password hashing (CPU). Audit syslog lines and outbox deliveries follow the COMMIT, so only the
successful attempt emits them. Admin commands do not retry (docs/webapp.md, "Retried requests").
"""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from webapp.db.engine import WSREP_NOT_READY
from webapp.redact import mask_pans

# MariaDB error codes after which the server has rolled the whole transaction back and committed
# nothing of it: the one place this list is kept.
RETRYABLE = {
    1213: "deadlock or Galera certification conflict",  # ER_LOCK_DEADLOCK
    WSREP_NOT_READY: "node not ready (WSREP)",
}
ATTEMPTS = 3
BACKOFF = 0.05  # seconds before the 2nd attempt (jittered, between half and all of it); doubled after

_KEY = "strongroom.retry"  # the attempt in the WSGI environ, for discard()
log = logging.getLogger("strongroom.retry")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def retryable_code(exc: BaseException) -> int | None:
    """The MariaDB error code when `exc` says the server rolled the transaction back whole."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    args = getattr(exc.orig, "args", ())
    code = args[0] if args else None
    return code if isinstance(code, int) and code in RETRYABLE else None


class _Attempt:
    __slots__ = ("code", "discarded", "last", "number")

    def __init__(self, number: int, *, last: bool) -> None:
        self.number = number
        self.last = last
        self.code: int | None = None  # the retryable error this attempt failed with
        self.discarded = False  # its answer is thrown away and the request runs again


def discard(environ: Environ, exc: BaseException) -> bool:
    """Whether this attempt's answer will be thrown away and the request run again (then the caller
    records and logs nothing: the attempt must leave no trace). False outside `Retry`, on the last
    attempt, and for every error but the retryable ones."""
    attempt = environ.get(_KEY)
    code = retryable_code(exc)
    if not isinstance(attempt, _Attempt) or code is None:
        return False
    attempt.code = code
    attempt.discarded = not attempt.last
    return attempt.discarded


class Retry:
    """WSGI middleware: runs a request up to `attempts` times while `discard` says so."""

    def __init__(
        self,
        app: WsgiApp,
        *,
        max_body: int,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1 or max_body < 0 or backoff < 0:
            raise ValueError("attempts must be at least 1, max_body and backoff not negative")
        self.app = app
        self.max_body = max_body
        self.attempts = attempts
        self.backoff = backoff
        self._sleep = sleep
        self._lock = threading.Lock()
        self.retried = 0  # attempts thrown away and run again
        self.gave_up = 0  # requests whose every attempt failed with a retryable error

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        body = _kept_body(environ, self.max_body)
        if body is None:
            return self.app(environ, start_response)  # no attempt in its environ: discard() says no
        for number in range(1, self.attempts + 1):
            attempt = _Attempt(number, last=number == self.attempts)
            run = dict(environ)  # the original each time: an attempt's own keys do not carry over
            run["wsgi.input"] = io.BytesIO(body)
            run[_KEY] = attempt
            result = self.app(run, _unless_discarded(attempt, start_response))
            if not attempt.discarded:
                if attempt.code is not None:
                    self._count(gave_up=True)
                    log.error(
                        "request failed %d times, last with MariaDB error %d (%s): %s %s",
                        number,
                        attempt.code,
                        RETRYABLE[attempt.code],
                        environ.get("REQUEST_METHOD", "-"),
                        mask_pans(environ.get("PATH_INFO", "-"))[:200],
                    )
                return result  # passed on untouched: a streamed answer still streams
            _close(result)
            assert attempt.code is not None  # noqa: S101 - discard() sets both
            self._count(gave_up=False)
            log.warning(
                "request run again after MariaDB error %d (%s), attempt %d of %d: %s %s",
                attempt.code,
                RETRYABLE[attempt.code],
                number + 1,
                self.attempts,
                environ.get("REQUEST_METHOD", "-"),
                mask_pans(environ.get("PATH_INFO", "-"))[:200],
            )
            # Jittered, so that two requests that collided do not collide again in step.
            pause = self.backoff * 2 ** (number - 1)
            self._sleep(random.uniform(pause / 2, pause))  # noqa: S311 - timing jitter, not a secret
        raise AssertionError("unreachable: the last attempt is never discarded")

    def _count(self, *, gave_up: bool) -> None:
        with self._lock:
            if gave_up:
                self.gave_up += 1
            else:
                self.retried += 1


def _kept_body(environ: Environ, limit: int) -> bytes | None:
    """The whole request body, or None when it cannot be kept to run the request again."""
    if environ.get("HTTP_TRANSFER_ENCODING"):
        return None  # unknown length (chunked)
    raw = environ.get("CONTENT_LENGTH") or "0"
    if not raw.isdigit() or not raw.isascii():
        return None  # the app refuses it; run once
    length = int(raw)
    if length > limit:
        return None  # the app refuses it without reading it: keep nothing either
    stream = environ["wsgi.input"]
    chunks, left = [], length
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break  # the client went away: the app sees the short body and refuses it as before
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _unless_discarded(attempt: _Attempt, start_response: StartResponse) -> StartResponse:
    # discard() has decided before the answer is built, so the status line is known to be wanted
    # or not when it is started: a wanted answer goes straight to the server, nothing is buffered.
    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if attempt.discarded:
            return _ignore
        return start_response(status, headers, exc_info)

    return start


def _ignore(_data: bytes) -> None:
    return None


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()  # WSGI: a server always closes what the app returned; here that is us
