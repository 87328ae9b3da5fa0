"""A REAL sshd on loopback, run from hardening/ssh/sshd_config.in (test port and private paths), and
the real OpenSSH client (tests/hardening/sshd_server.py: throwaway users and group, a private
directory under /run, alerts to an aiosmtpd sink on 127.0.0.1 through the hook's "smtp" transport).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from tests.hardening.sshd_server import Server, hardened_sshd, run, wait_for_port
from tests.support import free_port, need_binary, stop_process
from tests.webapp.smtpsink import Sink, smtp_server

MARKER = "s3cret-c0mmand-marker"  # appears in commands; must never appear in a mail


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    """admin: in the allowed group, two keys: one with KEYHOLDER, one without; outsider: a valid key,
    not in the allowed group; root: a valid key."""
    need_binary("sftp")
    tag = secrets.token_hex(3)
    group, admin, outsider = f"srtg{tag}", f"srta{tag}", f"srto{tag}"

    def authorized_keys(pub: Mapping[str, str]) -> dict[str, str]:
        return {
            admin: f'environment="KEYHOLDER=alice" {pub["alice"]}\n{pub["unknown"]}\n',
            outsider: f'environment="KEYHOLDER=alice" {pub["alice"]}\n',
            "root": f'environment="KEYHOLDER=alice" {pub["root"]}\n',
        }

    with hardened_sshd(
        prefix="strongroom-sshd-",
        group=group,
        admin=admin,
        outsider=outsider,
        root_in_group=True,
        client_keys=("alice", "unknown", "root"),
        authorized_keys=authorized_keys,
    ) as server:
        yield server


@pytest.fixture
def sink(server: Server) -> Sink:
    with server.sink.lock:
        server.sink.messages.clear()
    return server.sink


def _bodies(sink: Sink) -> list[str]:
    return [m.message.get_content() for m in sink.messages]


def test_key_with_keyholder_gets_a_session_and_no_alert(server: Server, sink: Sink) -> None:
    out = server.ssh(server.admin, "alice", f"echo hello-{MARKER}; echo holder=$KEYHOLDER")
    assert out.returncode == 0, out.stderr
    assert f"hello-{MARKER}" in out.stdout
    assert "holder=alice" in out.stdout
    assert sink.messages == []


def test_key_without_keyholder_gets_a_session_and_an_alert(server: Server, sink: Sink) -> None:
    out = server.ssh(server.admin, "unknown", f"echo hello-{MARKER}")
    assert out.returncode == 0, out.stderr
    assert f"hello-{MARKER}" in out.stdout
    assert len(sink.messages) == 1
    mail = sink.messages[0]
    assert mail.rcpt_tos == ["security@example.org"]
    body = mail.message.get_content()
    assert server.fingerprint("unknown") in body
    assert f"user: {server.admin}" in body
    assert "session: command" in body
    assert MARKER not in mail.raw.decode()  # the command line never leaves in a mail


def test_interactive_shell_goes_through_the_hook(server: Server, sink: Sink) -> None:
    out = server.ssh(server.admin, "unknown", "-tt", stdin="echo shell-$((6*7)) $0\nexit\n")
    assert out.returncode == 0, out.stderr
    assert "shell-42 -bash" in out.stdout  # a login bash, exec'd by the hook
    assert len(sink.messages) == 1
    assert "session: shell" in _bodies(sink)[0]


@pytest.mark.parametrize(("key", "alerts"), [("alice", 0), ("unknown", 1)])
def test_sftp_goes_through_the_hook(server: Server, sink: Sink, key: str, alerts: int) -> None:
    out = server.sftp(server.admin, key, f"ls {server.base}/keys\n")
    assert out.returncode == 0, out.stderr
    assert server.admin in out.stdout
    assert len(sink.messages) == alerts
    if alerts:
        assert "session: sftp" in _bodies(sink)[0]
        assert server.fingerprint(key) in _bodies(sink)[0]


# Files a user can write in their own home, each planted to silence or fool the hook. The .bashrc
# still ends the command (the hook execs bash for it, which reads ~/.bashrc under sshd), but only
# AFTER the hook has sent its alert: with bash as the login shell it would run before the hook.
PLANTED = [
    (".ssh/environment", "KEYHOLDER=alice\n", True),  # sshd reads it (PermitUserEnvironment KEYHOLDER)
    (".bashrc", "exit 0\n", False),
    (".profile", "exit 0\n", True),
    (".pam_environment", "KEYHOLDER=alice\nLD_PRELOAD=/nonexistent/evil.so\n", True),  # PAM is off
    (".ssh/rc", "exit 0\n", True),
]


@pytest.mark.parametrize(("name", "content", "runs"), PLANTED, ids=[p[0] for p in PLANTED])
def test_user_files_cannot_spoof_or_skip_the_hook(
    server: Server, sink: Sink, name: str, content: str, runs: bool
) -> None:
    home = server.base / "home" / server.admin
    path = home / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(content)
    shutil.chown(path, server.admin, server.admin)
    try:
        out = server.ssh(server.admin, "unknown", "echo ran; echo holder=$KEYHOLDER; echo pre=$LD_PRELOAD")
        assert len(sink.messages) == 1, out.stderr
        if runs:
            assert "ran\n" in out.stdout, out.stderr
            assert "pre=\n" in out.stdout
    finally:
        path.unlink()


def test_keyholder_spoofed_by_environment_file_is_named_in_the_alert(server: Server, sink: Sink) -> None:
    ssh_dir = server.base / "home" / server.admin / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    env_file = ssh_dir / "environment"
    env_file.write_text("KEYHOLDER=mallory\n")
    try:
        # Even the right key: the session's KEYHOLDER no longer matches the key's line.
        out = server.ssh(server.admin, "alice", "echo holder=$KEYHOLDER")
        assert "holder=mallory" in out.stdout
        assert len(sink.messages) == 1
        assert "differs" in _bodies(sink)[0]
    finally:
        env_file.unlink()


def test_login_without_a_session_is_in_sshd_log_for_the_watchdog(server: Server, sink: Sink) -> None:
    # `ssh -N` opens no session, so no hook runs: the watchdog reads this line from sshd's log.
    seen = len(server.log.read_text())
    child = subprocess.Popen(
        server.ssh_argv(server.admin, "unknown", "-N"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        expected = f"Accepted publickey for {server.admin} from 127.0.0.1"
        deadline = time.monotonic() + 10
        while expected not in server.log.read_text()[seen:] and time.monotonic() < deadline:
            time.sleep(0.05)
        line = next(ln for ln in server.log.read_text()[seen:].splitlines() if expected in ln)
        assert server.fingerprint("unknown") in line
    finally:
        stop_process(child)
    assert sink.messages == []


def _askpass(server: Server, password: str) -> dict[str, str]:
    script = server.base / "etc" / f"askpass-{secrets.token_hex(3)}"
    script.write_text(f"#!/bin/sh\necho '{password}'\n")
    script.chmod(0o700)
    return {**os.environ, "SSH_ASKPASS": str(script), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}


@pytest.mark.parametrize("method", ["password", "keyboard-interactive"])
def test_password_and_keyboard_interactive_are_refused(server: Server, sink: Sink, method: str) -> None:
    password = "Correct-Horse-Battery-" + secrets.token_hex(4)
    subprocess.run(["chpasswd"], input=f"{server.admin}:{password}", text=True, check=True)
    try:
        out = server.ssh(
            server.admin,
            None,
            "-v",
            "echo in",
            env=_askpass(server, password),
            options=(
                f"PreferredAuthentications={method}",
                "PubkeyAuthentication=no",
                "NumberOfPasswordPrompts=1",
            ),
        )
    finally:
        run("usermod", "-p", "*", server.admin)
    assert out.returncode == 255
    assert "in\n" not in out.stdout
    assert "Permission denied (publickey)" in out.stderr
    assert "Authentications that can continue: publickey\n" in out.stderr
    assert sink.messages == []


def test_password_probe_logs_in_when_a_config_allows_it(server: Server, sink: Sink) -> None:
    """Control for the test above: the same askpass probe DOES get in through an sshd whose config
    allows passwords, so the refusal above is the config's doing, not a broken probe. (Should
    passwords ever be switched on, the hook still reports such a login: no key, no KEYHOLDER.)"""
    sshd = need_binary("sshd")
    weak = server.base / "etc" / "sshd_config.weak"
    text = (server.base / "etc" / "sshd_config").read_text()
    port = free_port()
    text = text.replace(f"Port {server.port}", f"Port {port}")
    text = text.replace("AuthenticationMethods publickey", "AuthenticationMethods any")
    text = text.replace("PasswordAuthentication no", "PasswordAuthentication yes")
    text = text.replace(f"PidFile {server.base}/sshd.pid", f"PidFile {server.base}/sshd-weak.pid")
    weak.write_text(text)
    password = "Correct-Horse-Battery-" + secrets.token_hex(4)
    subprocess.run(["chpasswd"], input=f"{server.admin}:{password}", text=True, check=True)
    log = server.base / "sshd-weak.log"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(weak)], stderr=log_fh)
    try:
        wait_for_port(port, proc, log)
        probe = Server(server.base, port, server.sink, server.admin, server.outsider, server.keys)
        out = probe.ssh(
            server.admin,
            None,
            "echo in",
            env=_askpass(server, password),
            options=(
                "PreferredAuthentications=password",
                "PubkeyAuthentication=no",
                "NumberOfPasswordPrompts=1",
            ),
        )
        assert out.stdout == "in\n", out.stderr
        assert len(sink.messages) == 1
        assert "not a login with exactly one public key" in _bodies(sink)[0]
    finally:
        stop_process(proc)
        run("usermod", "-p", "*", server.admin)


@pytest.mark.parametrize(
    ("user", "key", "logged"),
    [
        ("root", "root", "ROOT LOGIN REFUSED"),
        ("outsider", "alice", "not allowed because none of user's groups"),
    ],
)
def test_root_and_users_outside_the_group_are_refused(
    server: Server, sink: Sink, user: str, key: str, logged: str
) -> None:
    name = server.outsider if user == "outsider" else "root"
    seen = len(server.log.read_text())
    out = server.ssh(name, key, "echo in")
    assert out.returncode == 255
    assert "in\n" not in out.stdout
    assert "Permission denied" in out.stderr
    assert logged in server.log.read_text()[seen:]  # refused for this reason, not another
    assert sink.messages == []


@pytest.fixture
def target() -> Iterator[int]:
    """A loopback TCP listener that forwarding would reach if sshd allowed it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


def test_stdio_forwarding_is_refused(server: Server, target: int) -> None:
    out = server.ssh(server.admin, "alice", "-W", f"127.0.0.1:{target}")
    assert out.returncode == 255
    assert "stdio forwarding failed" in out.stderr


def test_local_forwarding_is_refused(server: Server, target: int) -> None:
    local = free_port()
    child = subprocess.Popen(
        server.ssh_argv(
            server.admin,
            "alice",
            "-N",
            "-L",
            f"127.0.0.1:{local}:127.0.0.1:{target}",
            options=("BatchMode=yes", "LogLevel=VERBOSE"),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                conn = socket.create_connection(("127.0.0.1", local), timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("ssh -L did not listen locally")
        with conn:
            conn.settimeout(5)
            # sshd refuses the channel, so ssh closes the local side: EOF, nothing relayed.
            assert conn.recv(1) == b""
    finally:
        _, err = stop_process(child)
    assert "administratively prohibited" in err


@pytest.mark.parametrize("spec", ["0:127.0.0.1:22", "/tmp/strongroom-no-such-forward.sock:127.0.0.1:22"])
def test_remote_forwarding_is_refused(server: Server, spec: str) -> None:
    out = server.ssh(server.admin, "alice", "-o", "ExitOnForwardFailure=yes", "-R", spec, "echo in")
    assert out.returncode == 255
    assert "forwarding failed" in out.stderr


def test_agent_forwarding_is_refused(server: Server) -> None:
    agent = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for part in agent.replace("\n", ";").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            env[name] = value
    try:
        out = server.ssh(server.admin, "alice", "-A", "echo sock=$SSH_AUTH_SOCK", env=env)
        assert out.returncode == 0, out.stderr
        assert "sock=\n" in out.stdout
    finally:
        subprocess.run(["ssh-agent", "-k"], env=env, capture_output=True, check=False)


def test_unsafe_hook_config_refuses_every_session(server: Server, sink: Sink) -> None:
    mode = server.hook_config.stat().st_mode
    server.hook_config.chmod(stat.S_IMODE(mode) | 0o002)  # writable by anyone: not to be trusted
    try:
        out = server.ssh(server.admin, "alice", "echo in")
    finally:
        server.hook_config.chmod(stat.S_IMODE(mode))
    assert "in\n" not in out.stdout
    assert "misconfigured" in out.stderr
    assert sink.messages == []


def test_unknown_key_is_refused_when_the_alert_cannot_be_sent(server: Server, sink: Sink) -> None:
    original = server.hook_config.read_text()
    closed = free_port()  # nothing listens there
    server.hook_config.write_text(
        "\n".join(
            f"smtp_port = {closed}" if line.startswith("smtp_port") else line
            for line in original.splitlines()
        )
        + "\n"
    )
    try:
        unknown = server.ssh(server.admin, "unknown", "echo in")
        known = server.ssh(server.admin, "alice", "echo in")
    finally:
        server.hook_config.write_text(original)
    assert "in\n" not in unknown.stdout
    assert "could not report" in unknown.stderr
    assert known.stdout == "in\n"  # a keyholder needs no mail to get in


@pytest.fixture
def local_postfix(server: Server) -> Iterator[tuple[Path, Sink]]:
    """A real private postfix (the shipped ops/postfix config, paths and relay overridden) relaying to
    its own aiosmtpd sink. Yields a sendmail wrapper that adds `-C <private config>` (the hook's
    environment carries no MAIL_CONFIG), and the sink."""
    postfix, postconf, postmap, sendmail = (
        need_binary(b) for b in ("postfix", "postconf", "postmap", "sendmail")
    )
    base = Path(tempfile.mkdtemp(prefix="postfix-", dir=server.base))
    base.chmod(0o755)
    conf, queue, data = base / "etc", base / "spool", base / "lib"
    for d in (conf, queue, data):
        d.mkdir()
    for name in ("main.cf", "master.cf", "virtual"):
        shutil.copy(Path(__file__).resolve().parents[2] / "ops" / "postfix" / name, conf / name)
    shutil.chown(data, "postfix", "postfix")
    relay_sink = Sink()
    with smtp_server(relay_sink) as relay_port:
        subprocess.run(
            [
                postconf,
                "-c",
                str(conf),
                "-e",
                f"queue_directory={queue}",
                f"data_directory={data}",
                f"maillog_file={base / 'postfix.log'}",
                f"maillog_file_prefixes={base}",
                f"virtual_alias_maps=hash:{conf / 'virtual'}",
                f"relayhost=[127.0.0.1]:{relay_port}",
                "smtp_tls_security_level=none",
                "import_environment=MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run([postmap, f"hash:{conf / 'virtual'}"], check=True)
        env = {"MAIL_CONFIG": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run([postfix, "-c", str(conf), "set-permissions", "create-missing"], check=True, env=env)
        started = subprocess.run([postfix, "-c", str(conf), "start"], capture_output=True, text=True, env=env)
        assert started.returncode == 0, started.stderr
        wrapper = base / "sendmail"
        wrapper.write_text(f'#!/bin/sh\nexec {sendmail} -C {conf} "$@"\n')
        wrapper.chmod(0o755)
        try:
            yield wrapper, relay_sink
        finally:
            subprocess.run([postfix, "-c", str(conf), "stop"], capture_output=True, env=env)
            time.sleep(0.2)


def test_alert_through_the_local_mta(server: Server, local_postfix: tuple[Path, Sink]) -> None:
    """The "sendmail" transport through a real postfix. Postfix lets only root pick a private config
    (`sendmail -C`), so this runs the installed hook directly as root, with the environment sshd gives
    it (SSH_USER_AUTH, SSH_ORIGINAL_COMMAND, SSH_CONNECTION), instead of through sshd."""
    wrapper, relay_sink = local_postfix
    config = server.base / "etc" / "ssh-alert-sendmail.toml"
    config.write_text(
        f'authorized_keys = "{server.base}/keys/%u"\n'
        '[mail]\nfrom = "ssh@localhost"\nto = ["security@example.org"]\n'
        f'transport = "sendmail"\nsendmail = "{wrapper}"\n'
    )
    config.chmod(0o644)
    auth = server.base / "etc" / "auth-info"
    key_type, blob = server.keys["unknown"].with_suffix(".pub").read_text().split()[:2]
    auth.write_text(f"publickey {key_type} {blob}\n")
    env = {
        "PATH": "/usr/bin:/bin",
        "SSH_USER_AUTH": str(auth),
        "SSH_ORIGINAL_COMMAND": f"echo via-mta-{MARKER}",
        "SSH_CONNECTION": "127.0.0.1 40000 127.0.0.1 22",
    }
    hook = server.base / "etc" / "ssh-session-hook"
    out = subprocess.run(
        [str(hook), "--config", str(config)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout == f"via-mta-{MARKER}\n", out.stderr
    deadline = time.monotonic() + 30
    while not relay_sink.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(relay_sink.messages) == 1
    received = relay_sink.messages[0]
    assert received.rcpt_tos == ["security@example.org"]
    body = received.message.get_content()
    assert server.fingerprint("unknown") in body
    assert "user: root" in body
    assert MARKER not in received.raw.decode()


def test_key_file_owned_by_the_user_is_reported(server: Server, sink: Sink) -> None:
    """sshd's StrictModes accepts a key file owned by its user; the convention does not: a user who
    can edit the file can write any KEYHOLDER on any key."""
    keys = server.base / "keys" / server.admin
    shutil.chown(keys, server.admin, server.admin)
    try:
        out = server.ssh(server.admin, "alice", "echo in")
    finally:
        shutil.chown(keys, "root", "root")
    assert out.stdout == "in\n", out.stderr
    assert len(sink.messages) == 1
    assert "not root-owned" in _bodies(sink)[0]
