"""The remote log on the whole server: what the server forwards reaches the log host over RELP/TLS, the
remote-copy unit pulls the log host's copy back over read-only SFTP, and the watchdog's `remote` check
rings when the two differ (docs/monitoring.md, "Remote logging and the comparison").

The log host is tests/system/loghost.py (rsyslog and sshd in the `loghost` namespace). The scenarios:
an intruder edits a line of the server's local copy -> `ops.remote_log_mismatch` mailed; the log host's
rsyslog down -> the server's disk queue holds the lines and delivers every one after it returns; the
log host's sshd down -> the fetch fails, the copy ages -> `ops.remote_copy_stale` mailed.

Two watch.toml values are shortened for this module (restored afterwards, as shipped: 120 and 900 s),
so that the test waits seconds, not minutes: `remote_grace_seconds` (how old a line must be before the
comparison holds it against the log host) and `remote_copy_max_age_seconds` (the copy's age that is
`ops.remote_copy_stale`). The timer's 5-minute cadence is replaced by starting its service, as the
timer would, and the watchdog's pass by starting strongroom-watch.service (tests/system/operator.py).
"""

from __future__ import annotations

import email.message
import re
import secrets
import time
from collections.abc import Callable, Iterator

import pytest

from tests.system import operator
from tests.system.container import Container
from tests.system.loghost import LogHost, record_timing, wait_until
from tests.system.server import Server

LOCAL = "/var/log/strongroom/forwarded.log"
COPY = "/var/lib/strongroom-watch/remote/forwarded.log"
WATCH_TOML = "/etc/strongroom/watch.toml"
REMOTE_COPY_TOML = "/etc/strongroom/remote-copy.toml"
FETCH = "strongroom-remote-copy.service"
ADMINS = ("alice", "bob")
GRACE = 10  # shipped: 120
MAX_AGE = 30  # shipped: 900
DELIVERY = 30  # seconds a forwarded line may take to reach the log host


def _log(c: Container, text: str) -> None:
    """A syslog line on the server, as any of its programs would write one."""
    c.run(["logger", "-t", "sshd", "-p", "authpriv.info", text])


def _local(c: Container) -> str:
    return c.read_file(LOCAL).decode(errors="replace")


def _lines_with(text: str, marker: str) -> list[str]:
    return [line for line in text.splitlines() if marker in line]


def _sender(c: Container) -> str:
    """The host name the server puts in its messages: the log host files them under it."""
    for line in _local(c).splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:
            return parts[1]
    raise AssertionError(f"{LOCAL} holds no line")


def _fetch(c: Container) -> int:
    """What strongroom-remote-copy.timer does: start its oneshot service; its exit status."""
    return c.run(["systemctl", "start", FETCH], check=False, timeout=120).returncode


def _mail_counts(c: Container) -> dict[str, int]:
    return {user: len(c.mails(user)) for user in ADMINS}


def _subject_is(event: str) -> Callable[[email.message.EmailMessage], bool]:
    def match(message: email.message.EmailMessage) -> bool:
        return str(message["Subject"]) == f"Strongroom: {event}"

    return match


def _wait_bare_mail(c: Container, event: str, before: dict[str, int], secrets_: list[str]) -> float:
    """Both admins get the alert; it names the event and nothing of what was found. Slowest seconds."""
    slowest = 0.0
    for user in ADMINS:
        message, seconds = c.wait_for_mail(user, after=before[user], match=_subject_is(event), timeout=180)
        body = message.get_body(preferencelist=("plain",))
        text = (body.get_content() if body is not None else "") + str(message["Subject"])
        for secret in secrets_:
            assert secret not in text, f"the {event} mail shows {secret!r}"
        slowest = max(slowest, seconds)
    return slowest


@pytest.fixture(scope="module")
def remote(alerting: Server, loghost: LogHost) -> Iterator[tuple[Server, LogHost]]:
    """The alerting server and its log host, watch.toml's two remote bounds shortened (restored after)."""
    c = alerting.container
    if c.run(["test", "-f", REMOTE_COPY_TOML], check=False).returncode != 0:
        pytest.fail(f"the install wrote no {REMOTE_COPY_TOML}: nothing fetches the log host's copy")
    shipped = c.read_file(WATCH_TOML).decode()
    tuned = re.sub(r"(?m)^remote_grace_seconds = \d+$", f"remote_grace_seconds = {GRACE}", shipped)
    tuned = re.sub(
        r"(?m)^remote_copy_max_age_seconds = \d+$", f"remote_copy_max_age_seconds = {MAX_AGE}", tuned
    )
    assert f"remote_grace_seconds = {GRACE}\n" in tuned, shipped
    assert f"remote_copy_max_age_seconds = {MAX_AGE}\n" in tuned, shipped
    # `cat >` keeps the file's inode, owner and mode: only the two values change.
    c.run(["sh", "-c", f"cat > {WATCH_TOML}"], input=tuned)
    try:
        yield alerting, loghost
    finally:
        c.run(["sh", "-c", f"cat > {WATCH_TOML}"], input=shipped)


def test_forwarded_lines_reach_the_log_host_over_tls_from_the_servers_address(
    remote: tuple[Server, LogHost],
) -> None:
    server, loghost = remote
    c = server.container
    marker = f"remote-log-probe-{secrets.token_hex(6)}"
    started = time.monotonic()
    _log(c, f"{marker} forwarded")
    host = _sender(c)
    seconds = wait_until(
        lambda: bool(_lines_with(loghost.read(host), marker)),
        timeout=DELIVERY, what=f"the probe line at the log host ({loghost.hosts()})",
    )  # fmt: skip
    record_timing("remote_log.line_to_log_host", time.monotonic() - started)
    assert seconds < DELIVERY
    # Byte-identical on both sides (the StrongroomExact template): the comparison can work line by line.
    assert _lines_with(loghost.read(host), marker) == _lines_with(_local(c), marker)
    # The one peer of the receiver (RELP over mutual TLS only: the receiver has no plain input) is
    # the server's address on the log host's network.
    assert set(loghost.relp_peers()) == {server.address("loghost")}
    # Files for the pull account's group only (the receiver's modes): readable by it, by nobody else.
    st = loghost.log(host).stat()
    assert oct(st.st_mode & 0o777) == "0o640"


def test_the_remote_copy_is_fetched_and_the_remote_check_is_quiet(remote: tuple[Server, LogHost]) -> None:
    server, loghost = remote
    c = server.container
    assert c.run(["systemctl", "is-enabled", "strongroom-remote-copy.timer"], check=False).stdout.strip() == (
        "enabled"
    )
    marker = f"remote-copy-probe-{secrets.token_hex(6)}"
    _log(c, marker)
    host = _sender(c)
    wait_until(lambda: bool(_lines_with(loghost.read(host), marker)), timeout=DELIVERY, what="the probe line")
    started = time.monotonic()
    assert _fetch(c) == 0, c.journal(FETCH)[-3000:] + loghost.sshd_log()
    record_timing("remote_log.fetch", time.monotonic() - started)
    copy = c.read_file(COPY).decode(errors="replace")
    assert _lines_with(copy, marker) == _lines_with(loghost.read(host), marker)
    # Pulled by the pull account, from the server's address on the log host's network (that the
    # account can only read is tests/ops/test_remote_copy.py's, against the same sshd_config block).
    assert f"Accepted publickey for strongroom-logpull from {server.address('loghost')}" in loghost.sshd_log()
    time.sleep(GRACE + 1)  # the probe line inside the compared window
    assert _fetch(c) == 0
    out = operator.watch(c, "run", "--check", "remote").stdout
    assert not [line for line in out.splitlines() if line.startswith(("ALERT", "ongoing"))], out


def test_an_edited_line_on_the_server_rings_remote_log_mismatch(remote: tuple[Server, LogHost]) -> None:
    server, loghost = remote
    c = server.container
    # What an intruder wants gone: the trace of their login (no secret in it: a made-up address).
    marker = f"session-{secrets.token_hex(4)}"
    _log(c, f"Accepted publickey for mallory from 203.0.113.9 port 50022 ssh2 {marker}")
    host = _sender(c)
    wait_until(lambda: bool(_lines_with(loghost.read(host), marker)), timeout=DELIVERY, what="the login line")
    assert _fetch(c) == 0  # the log host's copy, with the line, is here before the edit
    time.sleep(GRACE + 1)
    # The intruder edits the line in place (same file, same length: rsyslog keeps appending to it).
    text = c.read_file(LOCAL)
    offset = text.index(b"for mallory from", text.index(b"Accepted publickey"))
    while marker.encode() not in text[offset : text.index(b"\n", offset)]:
        offset = text.index(b"for mallory from", offset + 1)
    before = _mail_counts(c)
    started = time.monotonic()
    _pwrite(c, LOCAL, offset, b"for cronjob from")
    try:
        assert _fetch(c) == 0, c.journal(FETCH)[-3000:]
        _watch_pass(c)
        _wait_bare_mail(c, "ops.remote_log_mismatch", before, ["mallory", "cronjob", marker, "203.0.113.9"])
        record_timing("remote_log.mismatch_to_mail", time.monotonic() - started)
    finally:
        _pwrite(c, LOCAL, offset, b"for mallory from")  # the rest of the session compares equal copies
    assert b"for mallory from" in c.read_file(LOCAL)[offset : offset + 16]


def _watch_pass(c: Container) -> None:
    """One pass of the frequent checks, as its timer starts it."""
    passed = operator.watch_pass(c)
    if passed.returncode != 0:
        cgroup = c.run("cat /sys/fs/cgroup/system.slice/strongroom-watch.service/cgroup.procs", check=False)
        raise AssertionError(
            f"the watchdog's pass failed; left in its cgroup: {cgroup.stdout.split()}\n"
            + c.journal("strongroom-watch.service", lines=40)
        )


def _pwrite(c: Container, path: str, offset: int, data: bytes) -> None:
    """Overwrite bytes of a file inside the container in place (the same inode, no truncation)."""
    code = (
        "import os,sys\n"
        "fd=os.open(sys.argv[1],os.O_WRONLY)\n"
        "os.pwrite(fd,sys.argv[3].encode(),int(sys.argv[2]))\n"
        "os.close(fd)\n"
    )
    c.run(["python3", "-c", code, path, str(offset), data.decode()])


def test_the_log_host_down_queues_on_disk_and_loses_nothing(remote: tuple[Server, LogHost]) -> None:
    server, loghost = remote
    c = server.container
    host = _sender(c)
    loghost.stop_rsyslog()
    tag = secrets.token_hex(4)
    markers = [f"outage-{tag}-{i:02d}" for i in range(20)]
    try:
        for m in markers:
            _log(c, m)
        wait_until(lambda: all(_lines_with(_local(c), m) for m in markers), timeout=DELIVERY,
                   what="the lines in the local copy")  # fmt: skip
        time.sleep(3)  # a few of the sender's retries (every 2 s) against the closed port
        assert not _lines_with(loghost.read(host), tag)
        queue = c.run("ls /var/spool/rsyslog", check=False).stdout
        assert "strongroom_forward" in queue, f"no disk queue in /var/spool/rsyslog: {queue!r}"
    finally:
        loghost.start_rsyslog()
    started = time.monotonic()
    wait_until(lambda: all(_lines_with(loghost.read(host), m) for m in markers), timeout=90,
               what="every line at the log host after it returned")  # fmt: skip
    record_timing("remote_log.log_host_back_to_all_delivered", time.monotonic() - started)
    there, here = _lines_with(loghost.read(host), tag), _lines_with(_local(c), tag)
    assert set(there) == set(here)  # at least once, byte-identical (a duplicate is not a loss)


def test_the_log_hosts_sshd_down_makes_the_copy_stale(remote: tuple[Server, LogHost]) -> None:
    server, loghost = remote
    c = server.container
    # A fresh copy, and a pass that sees it fresh: `ops.remote_copy_stale` is alerted once while it
    # lasts, and a background timer pass may have found the copy older than the shortened bound.
    assert _fetch(c) == 0
    _watch_pass(c)
    before = _mail_counts(c)
    loghost.stop_sshd()
    started = time.monotonic()
    try:
        assert _fetch(c) != 0  # the unit fails; the previous copy stays and ages
        assert "Error: " in c.journal(FETCH, lines=20)  # the command's one-line refusal
        wait_until(lambda: _copy_age(c) > MAX_AGE, timeout=MAX_AGE + 30, what="the copy to age", step=1)
        _watch_pass(c)
        _wait_bare_mail(c, "ops.remote_copy_stale", before, [COPY, "age_seconds"])
        record_timing("remote_log.sshd_down_to_stale_mail", time.monotonic() - started)
    finally:
        loghost.start_sshd()
    assert _fetch(c) == 0  # back: a fresh copy again for the rest of the session


def _copy_age(c: Container) -> float:
    mtime = int(c.run(["stat", "-c", "%Y", COPY]).stdout.strip())
    now = int(c.run(["date", "+%s"]).stdout.strip())
    return now - mtime
