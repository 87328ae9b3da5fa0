"""`make run APACHE=1`: the demo in the production layout. The script brings up keyd, the CA, gunicorn
on a Unix socket with STRONGROOM_BEHIND_PROXY and a private Apache (apache/private.py: mod_ssl with
a required client certificate and the CRL, ModSecurity + CRS) in front of it. Each printed bundle
and password (one user per role) logs in through Apache to its own pages, whose Server header names
no version; a revocation through the CA reloads Apache, which then refuses the certificate in the
handshake; Ctrl-C stops every process, Apache's children included, and so does SIGTERM however a
service manager sends it, with the same clean-up (run dir removed, Apache's logs kept)."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.e2e.test_demo import (
    PY,
    ROLES,
    SCRIPT,
    Demo,
    _answers,
    _field,
    _get,
    check_own_pages,
    start_demo,
    unpack_all,
)
from tests.fixtures.pki import unpack_bundle
from tests.support import component_missing, free_port, need_binary, need_root


def _front_run(output: str) -> Path:
    found = re.search(r"Apache's in (\S+)/apache/logs", output)
    assert found, f"the banner does not say where Apache runs:\n{output}"
    return Path(found.group(1))


def _pgid_members(pgid: int) -> list[str]:
    """Every live process of a process group (the demo's, Apache's children included)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"{entry.name}: {cmdline[:120]}")
    return members


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    need_binary("openssl")
    need_binary("apache2")
    need_root()  # Apache's children run as www-data, as in production
    if not PY.exists():
        pytest.fail(".venv is missing: run the suite through `make test`")
    demo_dir = tmp_path_factory.mktemp("demo-apache")
    port = free_port()
    proc, output = start_demo(demo_dir, port, DEMO_APACHE="1")
    client = unpack_bundle(Path(_field(output, "bundle")), _field(output, "bundle password"), demo_dir)
    running = Demo(proc, demo_dir, port, output, client, unpack_all(output, demo_dir))
    try:
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        # Killed, the script could not remove its run dir under /run (with the app's socket).
        digest = hashlib.sha256(str(demo_dir).encode()).hexdigest()[:12]
        shutil.rmtree(f"/run/strongroom-demo-{digest}", ignore_errors=True)


def test_the_banner_names_apache_as_the_front_door(demo: Demo) -> None:
    assert "Front door:         behind Apache + ModSecurity" in demo.output
    front = _front_run(demo.output)
    assert (front / "apache" / "run" / "apache2.pid").is_file()


def test_the_printed_credentials_log_in_through_apache(demo: Demo) -> None:
    conn = demo.connect(demo.client)
    conn.request("GET", "/login")
    r = conn.getresponse()
    page = r.read().decode()
    assert r.status == 200, page
    server = r.getheader("Server") or ""
    # No product version anywhere, and not the back end's banner.
    assert not re.search(r"[0-9/()]", server), server
    assert "gunicorn" not in server.lower(), server
    cookie = (r.getheader("Set-Cookie") or "").split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    form = {"csrf_token": token.group(1), "username": "admin", "password": _field(demo.output, "password")}
    conn.request(
        "POST",
        "/login",
        body=urlencode(form),
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    r = conn.getresponse()
    r.read()
    assert r.status == 302
    session = (r.getheader("Set-Cookie") or "").split(";")[0]
    status, _, page = _get(conn, "/", session)
    assert status == 200, page
    conn.close()
    # It really went through Apache: its access log has the requests, by certificate name.
    access = _front_run(demo.output) / "apache" / "logs" / "strongroom-access.log"
    assert '"admin" "POST /login HTTP/1.1" 302' in access.read_text()


@pytest.mark.parametrize("name", ROLES)
def test_each_demo_user_logs_in_to_their_own_pages_through_apache(name: str, demo: Demo) -> None:
    """Every role's pages through Apache and ModSecurity too (a rule that blocked a console page
    would show here first)."""
    check_own_pages(demo, name)
    access = _front_run(demo.output) / "apache" / "logs" / "strongroom-access.log"
    assert f'"{name}" "POST /login HTTP/1.1" 302' in access.read_text()


def test_no_client_certificate_no_connection(demo: Demo) -> None:
    conn = demo.connect(None)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # TLS 1.3 fails at read
            _get(conn, "/login")
    finally:
        conn.close()


def test_only_apaches_group_reaches_the_app_socket(demo: Demo) -> None:
    front = _front_run(demo.output)
    socket_path = front / "web" / "gunicorn.sock"
    assert stat.S_ISSOCK(socket_path.stat().st_mode)
    for d in (front, front / "web"):
        st = d.stat()
        assert stat.S_IMODE(st.st_mode) == 0o710, d
        assert (st.st_uid, st.st_gid) == (0, _gid("www-data")), d
    # Apache's children serve as www-data, not root.
    members = _pgid_members(demo.proc.pid)
    children = [m for m in members if "apache2 -d" in m]
    uids = {_uid_of(int(m.split(":")[0])) for m in children}
    assert len(children) >= 2, members
    assert uids == {0, _uid("www-data")}, members


def test_revoking_through_the_ca_reloads_apache(demo: Demo) -> None:
    done = demo.ca("revoke", "admin", "--reason", "keyCompromise")
    assert done.returncode == 0, done.stdout + done.stderr
    # Not just the web app's unbinding (a 403 page): Apache itself, reloaded by the CA's hook,
    # refuses the certificate in the TLS handshake. A graceful reload takes a moment.
    deadline = time.monotonic() + 10
    refused = None
    while refused is None and time.monotonic() < deadline:
        conn = demo.connect(demo.client)
        try:
            _get(conn, "/login")
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            refused = exc
        finally:
            conn.close()
        time.sleep(0.2)
    assert refused is not None, "Apache still accepts the revoked certificate"


def test_ctrl_c_stops_everything(demo: Demo) -> None:
    front = _front_run(demo.output)
    # Whatever ran before this test (it may run alone): the logs as they are now must be kept.
    live = {log.name: log.read_bytes() for log in (front / "apache" / "logs").iterdir() if log.is_file()}
    assert "strongroom-access.log" in live
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 5
    while _pgid_members(demo.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pgid_members(demo.proc.pid) == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", demo.port), timeout=1).close()
    assert not _answers(demo.dir / "keyd-run" / "keyd.sock")
    # The run dir with the app socket is gone; Apache's logs were kept in the demo dir.
    assert not front.exists()
    for name, content in live.items():
        assert content in (demo.dir / "apache-logs" / name).read_bytes(), name  # (shutdown lines follow)


# How a service manager stops the demo: systemd's default (KillMode=control-group) sends SIGTERM to
# every process of the unit at once; KillMode=mixed, or an operator's `kill`, sends it to the main
# process alone, which must then stop the rest itself; and under `make run`, make forwards its own
# SIGTERM to the script, which so gets a second one while it is already stopping.
SIGTERM_TO = ["every-process", "the-script-alone", "every-process-twice"]


@pytest.mark.parametrize("target", SIGTERM_TO)
def test_sigterm_stops_everything_and_cleans_up_like_ctrl_c(
    target: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    need_binary("apache2")
    need_root()
    demo_dir = tmp_path_factory.mktemp("demo-apache-term")
    port = free_port()
    proc, output = start_demo(demo_dir, port, DEMO_APACHE="1")
    try:
        front = _front_run(output)
        assert front.exists()
        live = {log.name: log.read_bytes() for log in (front / "apache" / "logs").iterdir() if log.is_file()}
        assert "strongroom-access.log" in live
        if target == "the-script-alone":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        if target == "every-process-twice":
            time.sleep(0.3)  # the script is stopping its daemons by now
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while _pgid_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pgid_members(proc.pid) == []
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        assert not _answers(demo_dir / "keyd-run" / "keyd.sock")
        # Exactly as after Ctrl-C: the run dir (the app's socket) is gone, Apache's logs are kept.
        assert not front.exists()
        for name, content in live.items():
            assert content in (demo_dir / "apache-logs" / name).read_bytes(), name
        assert "demo stopped" in (proc.stdout.read() if proc.stdout else "")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        digest = hashlib.sha256(str(demo_dir).encode()).hexdigest()[:12]
        shutil.rmtree(f"/run/strongroom-demo-{digest}", ignore_errors=True)


@pytest.mark.parametrize("value", ["2", "on", "1; touch /tmp/x", "APACHE", " 1"])
def test_an_unknown_apache_setting_is_refused_before_anything_is_made(value: str, tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    done = subprocess.run(
        [str(SCRIPT)],
        env={**os.environ, "DEMO_DIR": str(demo_dir), "DEMO_APACHE": value},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "DEMO_APACHE must be 1" in done.stderr
    assert not demo_dir.exists()


def test_without_apache_installed_it_says_so(tmp_path: Path) -> None:
    """apache2 hidden in a private mount namespace (a plain file bound over it), so the real
    check of the real script runs."""
    need_root()
    unshare = need_binary("unshare")
    if not Path("/usr/sbin/apache2").exists():
        component_missing("apache2 is really missing here: nothing to hide")
    blank = tmp_path / "not-apache"
    blank.write_text("")
    demo_dir = tmp_path / "demo"
    done = subprocess.run(
        [
            unshare,
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind {blank} /usr/sbin/apache2 && exec {SCRIPT}",
        ],
        env={**os.environ, "DEMO_DIR": str(demo_dir), "DEMO_APACHE": "1"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Apache is not installed (missing Debian packages: apache2)" in done.stderr
    assert "make sysdeps" in done.stderr
    assert not demo_dir.exists()


def test_a_demo_dir_from_before_the_apache_mode_gets_apache_reloaded(demo: Demo) -> None:
    """The CA's hook is set when the demo dir is first made; the old script's hook only HUPped
    gunicorn. Started again behind Apache, the script points the hook at Apache, and a CRL
    publication then gracefully restarts Apache (new children)."""
    assert demo.proc.poll() is not None, "runs after test_ctrl_c_stops_everything"
    config = demo.dir / "ca" / "config.toml"
    old_hook = f"sh -c 'test ! -s {demo.dir}/gunicorn.pid || kill -HUP $(cat {demo.dir}/gunicorn.pid)'"
    # A JSON list of plain strings is a TOML array too.
    hook = json.dumps(shlex.split(old_hook))
    config.write_text(re.sub(r"(?m)^reload_command = .*$", f"reload_command = {hook}", config.read_text()))
    proc, output = start_demo(demo.dir, demo.port, DEMO_APACHE="1")
    try:
        assert "CA reload hook updated" in output
        before = _apache_children(proc.pid)
        done = demo.ca("crl")
        assert done.returncode == 0, done.stdout + done.stderr
        deadline = time.monotonic() + 10
        while not (_apache_children(proc.pid) - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _apache_children(proc.pid) - before, "Apache was not reloaded"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert rc == 0


def _apache_children(pgid: int) -> set[int]:
    """The pids of Apache's serving children (www-data) in the demo's process group."""
    www = _uid("www-data")
    return {
        int(m.split(":")[0])
        for m in _pgid_members(pgid)
        if "apache2 -d" in m and _uid_of(int(m.split(":")[0])) == www
    }


def _uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def _gid(name: str) -> int:
    return grp.getgrnam(name).gr_gid


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective uid
    raise AssertionError(f"no Uid line for {pid}")
