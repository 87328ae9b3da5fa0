"""What every alarm scenario checks: the mail reached each admin, it is bare, and how long it took.

    marks = alarms.mark(server)                     # the admins' mailbox sizes before the trigger
    started = time.monotonic()
    ...trigger, run the pass...
    seconds = alarms.expect_alert(server, marks, "ops.port_new", started, forbidden=["8099"])
    alarms.record_timing("port_new", seconds)

A mail is bare when its subject and body have exactly the mailer's fixed shape (webapp/mail/texts.py:
event name, count, times, "check the server") and none of the trigger's own words (a log line, a
command line, a port, a secret) nor a card number appears anywhere in the message.
"""

from __future__ import annotations

import email.message
import json
import re
import time
from collections.abc import Iterable

from tests import support
from tests.system.container import Container
from tests.system.server import REPO, Server
from webapp.redact import contains_pan

TIMINGS = REPO / "test-artifacts" / "system" / "timings.json"

# The mailer's text for the watchdog's ops.* names (webapp/mail/texts.py), and nothing else.
_WHEN = r"(?: at \d\d:\d\d UTC|, \d+ events since \d\d:\d\d UTC)"
_STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
_ALERT_BODY = (
    r"Strongroom: {event}{when}, check the (?:server|audit log on the server)\.\n\n"
    r"First event {stamp}, last {stamp}\.\n"
    r"This notification carries no details by design; they are on the server only\.\n"
)


def alert_subject(event: str) -> re.Pattern[str]:
    """`Strongroom: ops.port_new` or `Strongroom: ops.port_new (3 events)`."""
    return re.compile(rf"Strongroom: {re.escape(event)}(?: \(\d+ events\))?")


def mark(server: Server) -> dict[str, int]:
    """How many mails each admin has now: later mails are the scenario's."""
    return {login: len(server.container.mails(login)) for login in admins(server)}


def admins(server: Server) -> list[str]:
    return sorted(a.login for a in server.admins.values())


def body_text(message: email.message.EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, f"no text part in {message['Subject']!r}"
    return str(part.get_content()).replace("\r\n", "\n")


def assert_bare(message: email.message.EmailMessage, forbidden: Iterable[str] = ()) -> None:
    """No detail leaves the server: nothing of the trigger, no card number, nowhere in the message."""
    raw = message.as_string()
    for word in forbidden:
        assert word not in raw, f"{word!r} is in the mail {message['Subject']!r}"
    # The card-number detector reads what the sender wrote, not what the mail system stamps on in
    # transit: a Date, Received or Message-Id header ("20261206001502.4C12D3BA5FF@...") is digits and
    # punctuation that pass a Luhn check one time in ten.
    written = "\n".join(
        [f"{name}: {value}" for name, value in message.items() if name.lower() not in _TRANSIT]
        + [body_text(message)]
    )
    assert not contains_pan(written), f"a card number in the mail {message['Subject']!r}"


_TRANSIT = {"date", "received", "message-id", "return-path", "delivered-to", "x-original-to"}


def expect_alert(
    server: Server,
    marks: dict[str, int],
    event: str,
    started: float,
    *,
    forbidden: Iterable[str] = (),
    timeout: float = 120,
) -> float:
    """The alert mail for `event` in every admin's mailbox, in the mailer's fixed shape; the seconds
    from `started` (time.monotonic() at the trigger) until the last admin had it."""
    subject = alert_subject(event)
    body = re.compile(_ALERT_BODY.format(event=re.escape(event), when=_WHEN, stamp=_STAMP))
    return expect_mail(
        server, marks, started, lambda m: bool(subject.fullmatch(str(m["Subject"]))),
        lambda m: body.fullmatch(body_text(m)) is not None, forbidden=forbidden, timeout=timeout,
    )  # fmt: skip


def expect_mail(
    server: Server,
    marks: dict[str, int],
    started: float,
    match: object,
    shape: object,
    *,
    forbidden: Iterable[str] = (),
    timeout: float = 120,
) -> float:
    """A mail that `match`es in every admin's mailbox, whose text has the `shape` (a predicate)."""
    forbidden = list(forbidden)
    c = server.container
    deadline = started + timeout
    for login in admins(server):
        left = max(1.0, deadline - time.monotonic())
        message, _ = c.wait_for_mail(login, after=marks[login], match=match, timeout=left)  # type: ignore[arg-type]
        assert shape(message), f"not a bare notification: {message['Subject']!r}\n{body_text(message)}"  # type: ignore[operator]
        assert_bare(message, forbidden)
    return time.monotonic() - started


def new_subjects(c: Container, login: str, after: int) -> list[str]:
    return [str(m["Subject"]) for m in c.mails(login)[after:]]


def pass_alerts(c: Container, unit: str = "strongroom-watch.service") -> list[tuple[str, str]]:
    """(event, resource) of the ALERT lines the unit's last pass printed to its journal.

    The pass is told by its start on the kernel's monotonic clock, not by its invocation id: a pass
    that has exited when journald reads its buffered lines (seen under load) leaves them without
    _SYSTEMD_INVOCATION_ID, though still under the unit's name. (Seconds of wall clock would not do:
    two passes start within one second.)"""
    start = int(
        c.run(["systemctl", "show", "-P", "ExecMainStartTimestampMonotonic", unit]).stdout.strip() or 0
    )
    assert start > 0, f"{unit} has not run"
    entries = [
        json.loads(line)
        for line in c.run(["journalctl", "--no-pager", "-q", "-o", "json", "-u", unit]).stdout.splitlines()
    ]
    out = "\n".join(
        e["MESSAGE"]
        for e in entries
        if int(e["__MONOTONIC_TIMESTAMP"]) >= start and isinstance(e.get("MESSAGE"), str)
    )
    return [
        (f[1], f[2])
        for f in (line.split("\t") for line in out.splitlines())
        if len(f) >= 3 and f[0] == "ALERT"
    ]


def record_timing(name: str, seconds: float) -> None:
    """Trigger-to-mail seconds of a scenario, for docs (test-artifacts/system/timings.json)."""
    support.record_timing(TIMINGS, name, seconds)
