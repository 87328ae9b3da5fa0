"""The host's alarms (issue 13), each rung as it would really happen on the server and heard by mail.

Each scenario makes the event happen inside the container (a log line, a stray process, a changed
system file, a newer package, keyd or MariaDB stopped...), runs what the timers run (a oneshot start
of strongroom-watch or strongroom-watch-slow), and waits for the alert in both admins' local
mailboxes: a bare notification in the mailer's fixed shape, nothing of the trigger in it, timed from
the trigger. The watchdog's own journal line names what it found, so the test also knows the alert
is its trigger's and not the noise of a fresh server.

Every scenario leaves the server as it found it (processes killed, services started, keyd unsealed,
files and packages removed, AIDE's database brought up to date): other modules share the session.
The watchdog's timers are stopped while this module runs, so only the test's passes queue alerts and
"delivered exactly once" can be counted; they are started again at the end.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from collections.abc import Iterator

import pytest

from keyd import shares
from tests.system import alarms, operator
from tests.system.container import Container
from tests.system.operator import OPT, Browser, Person
from tests.system.server import Server

SLOW = "strongroom-watch-slow.service"
TIMERS = ("strongroom-watch.timer", "strongroom-watch-slow.timer")
KEYD_CONFIG = operator.KEYD_CONFIG


@pytest.fixture(scope="module")
def host(alerting: Server) -> Iterator[Server]:
    """The alerting server with the watchdog's timers paused: every pass is the test's own."""
    c = alerting.container
    c.run(["systemctl", "stop", *TIMERS])
    try:
        yield alerting
    finally:
        c.run(["systemctl", "start", *TIMERS])


def watch_pass(c: Container, unit: str = "strongroom-watch.service") -> list[tuple[str, str]]:
    """One pass as the timer runs it; it must succeed. Returns its (event, resource) alerts."""
    result = operator.watch_pass(c, unit)
    assert result.returncode == 0, c.journal(unit, lines=40)
    return alarms.pass_alerts(c, unit)


def alerted(found: list[tuple[str, str]], event: str, resource: str) -> bool:
    return any(e == event and re.fullmatch(resource, r) for e, r in found)


def background(c: Container, user: str, command: str) -> int:
    """Start `command` as `user`, detached (no root parent stays behind, as a user's own process), its pid."""
    out = c.run(
        f"setpriv --reuid={user} --regid=nogroup --clear-groups --reset-env sh -c "
        f"'exec {command}' > /dev/null 2>&1 < /dev/null & echo $!"
    )
    return int(out.stdout.strip())


def kill(c: Container, pid: int) -> None:
    c.run(["kill", str(pid)], check=False)
    deadline = time.monotonic() + 10
    while c.run(["kill", "-0", str(pid)], check=False).returncode == 0:
        assert time.monotonic() < deadline, f"pid {pid} did not end"
        time.sleep(0.2)


# -- new data in the logs that should stay quiet -----------------------------------------------------


def test_a_line_in_syslog_is_mailed_without_the_line(host: Server) -> None:
    c = host.container
    token = "canary-" + secrets.token_hex(8)
    marks = alarms.mark(host)
    started = time.monotonic()
    c.run(["logger", "-p", "user.err", "-t", "strongroom-test", f"disk error on {token}"])
    found = watch_pass(c)
    assert alerted(found, "ops.log_new", "syslog"), found
    seconds = alarms.expect_alert(host, marks, "ops.log_new", started, forbidden=[token, "disk error"])
    alarms.record_timing("log_new syslog", seconds)


def test_an_error_in_apaches_error_log_is_mailed_without_the_line(
    host: Server, people: dict[str, Person]
) -> None:
    c = host.container
    marks = alarms.mark(host)
    started = time.monotonic()
    # A method the vhost does not allow (AllowMethods): Apache refuses it and writes an error line.
    answer = Browser(host, people["carol"]).request("PROPFIND", "/records")
    assert answer.status == 405, (answer.status, answer.error)
    found = watch_pass(c)
    assert alerted(found, "ops.log_new", "apache_error"), found
    seconds = alarms.expect_alert(
        host, marks, "ops.log_new", started, forbidden=["PROPFIND", "/records", "AH0"]
    )
    alarms.record_timing("log_new apache_error", seconds)


# -- what runs and what listens -------------------------------------------------------------------


def test_an_unknown_process_is_mailed_once_and_forgotten_when_it_ends(host: Server) -> None:
    c = host.container
    name = "canary-" + secrets.token_hex(3)  # psutil's name: 15 characters at most
    c.run(["install", "-m", "0755", "/bin/sleep", f"/var/tmp/{name}"])
    marks = alarms.mark(host)
    started = time.monotonic()
    pid = background(c, "nobody", f"/var/tmp/{name} 900")
    try:
        found = watch_pass(c)
        assert alerted(found, "ops.process_unknown", re.escape(f"{name} user=nobody")), found
        seconds = alarms.expect_alert(host, marks, "ops.process_unknown", started, forbidden=[name, " 900"])
        alarms.record_timing("process_unknown", seconds)
        # Still running: ongoing, not alerted again.
        assert not alerted(watch_pass(c), "ops.process_unknown", re.escape(f"{name} user=nobody"))
    finally:
        kill(c, pid)
        c.run(["rm", "-f", f"/var/tmp/{name}"])
    watch_pass(c)  # the condition ends: its finding is closed


def test_a_new_listening_port_is_mailed_and_closed_when_it_goes(host: Server) -> None:
    c = host.container
    marks = alarms.mark(host)
    started = time.monotonic()
    pid = background(c, "nobody", "python3 -m http.server --bind 127.0.0.1 8099")
    try:
        deadline = time.monotonic() + 20
        while "127.0.0.1:8099" not in c.run(["ss", "-Hltn"]).stdout:
            assert time.monotonic() < deadline, "http.server did not listen"
            time.sleep(0.2)
        found = watch_pass(c)
        assert alerted(found, "ops.port_new", r"tcp 127\.0\.0\.1:8099 python3"), found
        seconds = alarms.expect_alert(host, marks, "ops.port_new", started, forbidden=["8099", "http.server"])
        alarms.record_timing("port_new", seconds)
    finally:
        kill(c, pid)
    watch_pass(c)


# -- the slow pass: AIDE and apt ------------------------------------------------------------------


def aide_update(c: Container) -> None:
    """docs/monitoring.md: a change the admin made is accepted by updating AIDE's database."""
    result = c.run(["aide", "--update", "--config", "/etc/strongroom/aide.conf"], check=False, timeout=600)
    assert result.returncode < 14, result.stdout[-2000:] + result.stderr[-2000:]  # 0-7: differences
    c.run(["mv", "/var/lib/aide/aide.db.new.gz", "/var/lib/aide/aide.db.gz"])


def test_aide_finding_a_changed_system_file_is_mailed(host: Server) -> None:
    c = host.container
    watch_pass(c, SLOW)  # what the server already differs in is alerted (or ongoing) before the change
    original = c.read_file("/etc/issue")
    marks = alarms.mark(host)
    started = time.monotonic()
    c.run("echo 'Authorised use only.' >> /etc/issue")
    try:
        found = watch_pass(c, SLOW)
        assert alerted(found, "ops.integrity_changed", ".*"), found
        seconds = alarms.expect_alert(
            host, marks, "ops.integrity_changed", started, forbidden=["/etc/issue", "Authorised"]
        )
        alarms.record_timing("integrity_changed", seconds)
    finally:
        c.write_file("/etc/issue", original, 0o644)
        aide_update(c)
    assert not alerted(watch_pass(c, SLOW), "ops.integrity_changed", ".*")


CANARY_REPO = "/srv/canary-repo"
CANARY_LIST = "/etc/apt/sources.list.d/strongroom-canary.list"
CANARY_BUILD = "/var/tmp/canary-build"
# Runs inside the container with its own python3: two versions of an empty package, 1.0 installed,
# 1.1 in a flat file: repository whose Packages index is written here (dpkg-dev is not installed).
_MAKE_REPO = r"""
import hashlib, pathlib, subprocess, sys
work, repo = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
repo.mkdir(parents=True, exist_ok=True)
def build(version):
    root = work / version
    (root / "DEBIAN").mkdir(parents=True, exist_ok=True)
    (root / "DEBIAN/control").write_text(
        f"Package: strongroom-canary\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: Strongroom tests <root@localhost>\nDescription: an empty package the test upgrades\n")
    deb = work / f"strongroom-canary_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True,
                   capture_output=True)
    return deb
old, new = build("1.0"), build("1.1")
subprocess.run(["dpkg", "-i", str(old)], check=True, capture_output=True)
data = new.read_bytes()
(repo / new.name).write_bytes(data)
control = subprocess.run(["dpkg-deb", "-f", str(new)], check=True, capture_output=True, text=True).stdout
(repo / "Packages").write_text(control.rstrip("\n") + f"\nFilename: ./{new.name}\nSize: {len(data)}\n"
                               f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n")
"""


def test_an_update_available_is_mailed(host: Server) -> None:
    c = host.container
    marks = alarms.mark(host)
    started = time.monotonic()
    try:
        c.run(["python3", "-c", _MAKE_REPO, CANARY_BUILD, CANARY_REPO], timeout=120)
        c.write_file(CANARY_LIST, f"deb [trusted=yes] file:{CANARY_REPO} ./\n", 0o644)
        # The container is offline: refresh this one source only, and keep the other sources' lists.
        only_canary = [f"Dir::Etc::sourcelist={CANARY_LIST}", "Dir::Etc::sourceparts=-"]
        only_canary.append("APT::Get::List-Cleanup=0")
        c.run(["apt-get", "update", *(f"-o{o}" for o in only_canary)], timeout=120)
        found = watch_pass(c, SLOW)
        assert alerted(found, "ops.updates_pending", "apt"), found
        assert not alerted(found, "ops.security_updates_pending", ".*"), found
        seconds = alarms.expect_alert(
            host, marks, "ops.updates_pending", started, forbidden=["strongroom-canary", "1.1"]
        )
        alarms.record_timing("updates_pending", seconds)
    finally:
        c.run(["dpkg", "--purge", "strongroom-canary"], check=False)
        c.run(f"rm -rf {CANARY_LIST} {CANARY_REPO} {CANARY_BUILD} /var/lib/apt/lists/_srv_canary-repo_*")
        aide_update(c)  # the package's files came and went; the server's database stays current
    assert not alerted(watch_pass(c, SLOW), "ops.updates_pending", ".*")


# -- keyd -----------------------------------------------------------------------------------------


def test_keyd_stopped_is_mailed(host: Server, custodian_shares: list[str]) -> None:
    c = host.container
    marks = alarms.mark(host)
    started = time.monotonic()
    c.run(["systemctl", "stop", "strongroom-keyd"])
    try:
        found = watch_pass(c)
        assert alerted(found, "ops.keyd_unreachable", ".*"), found
        seconds = alarms.expect_alert(host, marks, "ops.keyd_unreachable", started)
        alarms.record_timing("keyd_unreachable", seconds)
    finally:
        operator.unseal(c, [custodian_shares[2], custodian_shares[0]])
    watch_pass(c)


def test_keyd_sealed_and_a_share_of_another_key_are_mailed(host: Server, custodian_shares: list[str]) -> None:
    c = host.container
    marks = alarms.mark(host)
    started = time.monotonic()
    # The admin seals (keyd's admin uid is root's, /etc/strongroom/keyd.toml).
    c.run(f"cd {OPT} && .venv/bin/python -m keyd seal --config {KEYD_CONFIG}")
    try:
        assert operator.is_sealed(c) is True
        found = watch_pass(c)
        assert alerted(found, "ops.keyd_sealed", ".*"), found
        seconds = alarms.expect_alert(host, marks, "ops.keyd_sealed", started)
        alarms.record_timing("keyd_sealed", seconds)

        # A well-formed share with a right check value, of another key: `keyd unseal` cannot tell
        # locally, keyd refuses it (a guess or an intrusion, docs/monitoring.md).
        index, value = shares.split(os.urandom(shares.SECRET_LEN), count=3, threshold=2)[0]
        wrong = shares.format_share(index, value)
        marks = alarms.mark(host)
        started = time.monotonic()
        done = operator.deliver_share(c, wrong)
        assert done.returncode == 1, done
        assert "refused share 1" in done.stderr, done.stderr
        assert operator.is_sealed(c) is True
        assert "shares: 0 of 2 received" in operator.keyd_status(c).stdout
        found = watch_pass(c)
        assert alerted(found, "ops.keyd_share_refused", ".*"), found
        seconds = alarms.expect_alert(
            host, marks, "ops.keyd_share_refused", started, forbidden=[wrong, *custodian_shares]
        )
        alarms.record_timing("keyd_share_refused", seconds)
    finally:
        operator.unseal(c, [custodian_shares[1], custodian_shares[0]])
    watch_pass(c)


# -- the alert path's own failures ----------------------------------------------------------------

WATCH_FAILED = re.compile(r"Strongroom: watchdog failed on [a-z0-9.-]+, check the server")
WATCH_FAILED_BODY = re.compile(
    r"The watchdog could not complete a pass\.\nCheck `journalctl -u strongroom-watch` on the server\.\n?"
)


def test_mariadb_stopped_fails_the_pass_and_root_is_mailed(host: Server) -> None:
    c = host.container
    marks = alarms.mark(host)
    started = time.monotonic()
    c.run(["systemctl", "stop", "mariadb"], timeout=120)
    try:
        result = operator.watch_pass(c)
        assert result.returncode != 0, "the pass succeeded without its database"
        seconds = alarms.expect_mail(
            host, marks, started, lambda m: bool(WATCH_FAILED.fullmatch(str(m["Subject"]))),
            lambda m: WATCH_FAILED_BODY.fullmatch(alarms.body_text(m)) is not None,
        )  # fmt: skip
        alarms.record_timing("watchdog failed (mariadb stopped)", seconds)
    finally:
        c.run(["systemctl", "start", "mariadb"], timeout=120)
        c.run(["systemctl", "reset-failed", "strongroom-watch.service"], check=False)
    watch_pass(c)
    for unit in ("mariadb", "strongroom-mail", "strongroom-web"):
        assert c.unit_state(unit) == "active", (unit, c.journal(unit, lines=30))


def test_alerts_queued_while_the_mailer_is_stopped_are_each_delivered_once(host: Server) -> None:
    c = host.container
    events = ("ops.log_new", "ops.port_new")
    c.run(["systemctl", "stop", "strongroom-mail"])
    marks = alarms.mark(host)
    pid = 0
    try:
        c.run(["logger", "-p", "user.err", "-t", "strongroom-test", "while the mailer is away"])
        pid = background(c, "nobody", "python3 -m http.server --bind 127.0.0.1 8098")
        deadline = time.monotonic() + 20
        while "127.0.0.1:8098" not in c.run(["ss", "-Hltn"]).stdout:
            assert time.monotonic() < deadline, "http.server did not listen"
            time.sleep(0.2)
        found = watch_pass(c)
        assert alerted(found, "ops.log_new", "syslog"), found
        assert alerted(found, "ops.port_new", r"tcp .*:8098 .*"), found
        time.sleep(6)  # three of the mailer's passes, had it run
        for login in alarms.admins(host):
            assert not [
                s for s in alarms.new_subjects(c, login, marks[login]) if s.startswith("Strongroom: ops.")
            ]
    finally:
        returned = time.monotonic()
        c.run(["systemctl", "start", "strongroom-mail"])
        if pid:
            kill(c, pid)
    for event in events:
        seconds = alarms.expect_alert(host, marks, event, returned, forbidden=["8098", "mailer is away"])
        # Timed from the mailer's start: the queued alert was waiting for it, not for the watchdog.
        alarms.record_timing(f"{event} queued, from the mailer's return", seconds)
    time.sleep(6)  # three more passes: nothing sent twice
    for login in alarms.admins(host):
        subjects = alarms.new_subjects(c, login, marks[login])
        for event in events:
            pattern = alarms.alert_subject(event)
            assert sum(1 for s in subjects if pattern.fullmatch(s)) == 1, (login, event, subjects)
    watch_pass(c)
