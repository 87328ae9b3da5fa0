"""The log host of the whole-server test: a private rsyslogd receiver and a private sshd, on the host,
inside the test's `loghost` network namespace (198.51.100.2 and 2001:db8:4::2 there, nowhere else).

- rsyslogd runs the project's own receiver config (`ops.rsyslog.Receiver`, the text the log host ships),
  RELP over mutual TLS on port 6514 with a certificate for loghost.example.org from the test CA, and
  accepts only the server's certificate name. It writes `<base>/remote/HOST/forwarded.log`, which is
  /var/log/remote on a real log host.
- sshd on port 22 serves the read-only pull account `strongroom-logpull` exactly as docs/monitoring.md
  configures it (`ForceCommand internal-sftp -R`, chrooted to the log directory), with the host key the
  server's settings pin (`loghost.ssh_host_key`, made before the install: tests/system/server.py).

The account is a throwaway system user on the host (no home, no password, not locked: sshd refuses a
locked account's keys when it does not use PAM), shared by test sessions running in parallel (the
name is fixed: the server's remote-copy.toml names it) and removed with the last of them. Everything
else lives under /run/strongroom-loghost-PID (root's, 0755: sshd refuses a chroot or key path others
can write, and /tmp is one). `close()` stops both daemons and removes the directory (and the account);
a run killed outright is reaped by the next one (`reap_stale`), like the containers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ops.rsyslog import Receiver
from tests.support import need_binary
from tests.system.images import cache_dir
from tests.system.network import Network
from tests.system.server import FQDN, LOGHOST_NAME, REPO, TestCa

PULL_USER = "strongroom-logpull"
MARKER = "strongroom system test log host"  # the throwaway account's GECOS: ours to remove
RELP_PORT = 6514
SSH_PORT = 22
RUN_PREFIX = "strongroom-loghost-"
TIMINGS = REPO / "test-artifacts" / "system" / "timings.json"
REMOTE_COPY_PUBLIC_KEY = "/etc/strongroom/remote-copy/ssh_ed25519.pub"  # written by the install


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str, step: float = 0.2) -> float:
    """Seconds until `predicate()` held; AssertionError naming `what` after `timeout`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - started


def record_timing(name: str, seconds: float) -> None:
    """Trigger-to-mail (or -to-effect) seconds of a scenario, merged into the run's timings file."""
    print(f"timing {name}: {seconds:.1f} s")
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    with open(TIMINGS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other test processes write the same file
        data = json.loads(TIMINGS.read_text()) if TIMINGS.exists() else {}
        data[name] = round(seconds, 1)
        TIMINGS.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def _ours(pid: int, base: Path) -> bool:
    """The pid is a daemon of that log host (pids get reused): its command line names the base dir."""
    try:
        return any(str(base) in arg for arg in psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _remove_user() -> None:
    try:
        entry = pwd.getpwnam(PULL_USER)
    except KeyError:
        return
    if entry.pw_gecos != MARKER:
        # Not made by this harness (a real log host's account?): never delete it.
        raise AssertionError(f"a user {PULL_USER} exists on this host that the test did not make")
    _run("userdel", PULL_USER, check=False)
    with contextlib.suppress(subprocess.SubprocessError):
        _run("groupdel", PULL_USER, check=False)


@contextlib.contextmanager
def _users_lock() -> Iterator[None]:
    """One test process at a time adds, shares or removes the account (parallel sessions share it)."""
    with open(cache_dir() / "loghost-users.lock", "w") as lock:  # the test cache's, which stays anyway
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _live_runs() -> list[Path]:
    return [
        base
        for base in Path("/run").glob(f"{RUN_PREFIX}*")
        if (named := re.fullmatch(rf"{RUN_PREFIX}(\d+)", base.name))
        and psutil.pid_exists(int(named.group(1)))
    ]


def reap_stale() -> list[str]:
    """Remove what log hosts of runs killed outright left (their owner pid, in the name, is dead).

    The caller holds `_users_lock`."""
    reaped = []
    for base in Path("/run").glob(f"{RUN_PREFIX}*"):
        named = re.fullmatch(rf"{RUN_PREFIX}(\d+)", base.name)
        if not named or psutil.pid_exists(int(named.group(1))):
            continue
        for pidfile in (base / "rsyslogd.pid", base / "sshd.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().split()[0])
                if _ours(pid, base):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(base, ignore_errors=True)
        reaped.append(base.name)
    if not _live_runs():
        _remove_user()  # a killed run's account: no live log host uses it
    return reaped


@dataclass
class LogHost:
    network: Network
    ca: TestCa
    ssh_host_key: Path  # private half; the server's settings pin its public half
    sender: str = FQDN  # the server's certificate name: the one peer the receiver accepts
    base: Path = field(default_factory=lambda: Path("/run") / f"{RUN_PREFIX}{os.getpid()}")
    rsyslogd: subprocess.Popen[bytes] | None = None
    sshd: subprocess.Popen[bytes] | None = None
    _made_user: bool = False

    @property
    def netns(self) -> str:
        return self.network.subnets["loghost"].netns

    @property
    def address(self) -> str:
        return self.network.subnets["loghost"].client_v4

    @property
    def remote_dir(self) -> Path:
        """rsyslog's per-host directories (a real log host's /var/log/remote), the pull account's chroot."""
        return self.base / "remote"

    def log(self, host: str) -> Path:
        return self.remote_dir / host / "forwarded.log"

    def hosts(self) -> list[str]:
        """The sending host names rsyslog made a directory for."""
        return sorted(p.name for p in self.remote_dir.iterdir() if p.is_dir())

    def read(self, host: str) -> str:
        path = self.log(host)
        return path.read_text(errors="replace") if path.exists() else ""

    # -- setting up --------------------------------------------------------------------------------

    def setup(self) -> LogHost:
        self.rsyslogd_bin = need_binary("rsyslogd")
        self.sshd_bin = need_binary("sshd")
        need_binary("useradd")
        try:
            with _users_lock():
                reap_stale()
                self.base.mkdir(mode=0o755)  # registers this run: the account is not removed under it
                self._add_user()
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _add_user(self) -> None:
        try:
            entry = pwd.getpwnam(PULL_USER)
        except KeyError:
            # A system user with its own group (rsyslog gives the logs that group), no home, no shell,
            # password field "*": no password, and not locked ("!"), which sshd without PAM refuses.
            _run("useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                 "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", MARKER, "--password", "*",
                 PULL_USER)  # fmt: skip
        else:
            if entry.pw_gecos != MARKER:
                raise AssertionError(f"a user {PULL_USER} exists on this host that the test did not make")
            # Another test session's log host made it: shared (each has its own keys file and chroot).
        self._made_user = True

    def _setup(self) -> None:
        os.chmod(self.base, 0o755)  # noqa: S103 - sshd's rule: a chroot's parents are root's, not writable by others
        for sub, mode in (("etc", 0o700), ("spool", 0o700), ("keys", 0o755), ("remote", 0o755)):
            (self.base / sub).mkdir(mode=mode)
            os.chmod(self.base / sub, mode)
        etc = self.base / "etc"
        cert, key = self.ca.server_cert(LOGHOST_NAME, self.address)
        for src, name in ((cert, "loghost.pem"), (key, "loghost.key"), (self.ca.chain, "ca.pem")):
            shutil.copyfile(src, etc / name)
            os.chmod(etc / name, 0o600)
        shutil.copyfile(self.ssh_host_key, etc / "ssh_host_ed25519")
        os.chmod(etc / "ssh_host_ed25519", 0o600)
        body = Receiver(
            port=RELP_PORT,
            permitted_peer=self.sender,
            ca_file=str(etc / "ca.pem"),
            cert_file=str(etc / "loghost.pem"),
            key_file=str(etc / "loghost.key"),
            directory=str(self.remote_dir),
            reader_group=PULL_USER,
        ).render()
        # The test's own lines: its work directory, its name, and no DNS (the namespace has none; the
        # receiver names files after the host the sender names in its messages).
        pre = f'global(workDirectory="{self.base / "spool"}" localHostName="loghost" net.enableDNS="off")\n'
        (etc / "rsyslog.conf").write_text(pre + body)
        checked = _run(self.rsyslogd_bin, "-N1", "-f", str(etc / "rsyslog.conf"), check=False)
        assert checked.returncode == 0, checked.stderr
        (self.base / "keys" / PULL_USER).write_text("")
        os.chmod(self.base / "keys" / PULL_USER, 0o644)
        (etc / "sshd_config").write_text(self._sshd_config())
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        _run(self.sshd_bin, "-t", "-f", str(etc / "sshd_config"))
        self.start_rsyslog()
        self.start_sshd()

    def _sshd_config(self) -> str:
        # The pull account's block is docs/monitoring.md's, with this log host's log directory.
        return f"""Port {SSH_PORT}
ListenAddress {self.address}
HostKey {self.base / "etc" / "ssh_host_ed25519"}
PidFile {self.base / "sshd.pid"}
AuthorizedKeysFile {self.base / "keys"}/%u
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers {PULL_USER}
LogLevel VERBOSE
Subsystem sftp internal-sftp

Match User {PULL_USER}
    ForceCommand internal-sftp -R
    ChrootDirectory {self.remote_dir}
    DisableForwarding yes
    PermitTTY no
"""

    def authorize(self, public_key: str) -> None:
        """Let the server's remote-copy key (its public line) into the pull account."""
        line = " ".join(public_key.split()[:2])
        if not re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/]+={0,2}", line):
            raise AssertionError(f"not an ed25519 public key: {public_key[:80]!r}")
        (self.base / "keys" / PULL_USER).write_text(line + "\n")

    # -- the daemons ---------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # `ip netns exec` execs the daemon itself: the Popen's pid is the daemon's.
        with (self.base / f"{name}.out").open("ab") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def _listening(self, port: int) -> bool:
        out = self.network.client("loghost", ["ss", "-Hltn", f"sport = :{port}"], check=False)
        return bool(out.stdout.strip())

    def _wait_listening(self, proc: subprocess.Popen[bytes], port: int, name: str) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited ({proc.returncode}): {self.output(name)}")
            return self._listening(port)

        wait_until(up, timeout=20, what=f"{name} listening on {self.address}:{port}")

    def output(self, name: str) -> str:
        path = self.base / f"{name}.out"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start_rsyslog(self) -> None:
        conf, pid = self.base / "etc" / "rsyslog.conf", self.base / "rsyslogd.pid"
        self.rsyslogd = self._spawn("rsyslogd", [self.rsyslogd_bin, "-n", "-f", str(conf), "-i", str(pid)])
        self._wait_listening(self.rsyslogd, RELP_PORT, "rsyslogd")

    def stop_rsyslog(self) -> None:
        _stop(self.rsyslogd)
        self.rsyslogd = None

    def start_sshd(self) -> None:
        conf = self.base / "etc" / "sshd_config"
        log = self.base / "sshd.log"
        self.sshd = self._spawn("sshd", [self.sshd_bin, "-D", "-f", str(conf), "-E", str(log)])
        self._wait_listening(self.sshd, SSH_PORT, "sshd")

    def stop_sshd(self) -> None:
        """Stop sshd and its per-connection children (a fetch in progress would outlive the master)."""
        if self.sshd is not None and self.sshd.poll() is None:
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(self.sshd.pid).children(recursive=True)
                for child in children:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                psutil.wait_procs(children, timeout=10)
        _stop(self.sshd)
        self.sshd = None

    def sshd_log(self) -> str:
        path = self.base / "sshd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def relp_peers(self) -> list[str]:
        """The addresses of the established RELP connections to the receiver."""
        out = self.network.client(
            "loghost", ["ss", "-Htn", "state", "established", f"sport = :{RELP_PORT}"], check=False
        )
        return [line.split()[-1].rsplit(":", 1)[0].strip("[]") for line in out.stdout.splitlines() if line]

    # -- the end ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop both daemons, remove the account and every file. Safe to call twice."""
        try:
            self.stop_sshd()
            self.stop_rsyslog()
        finally:
            with _users_lock():
                shutil.rmtree(self.base, ignore_errors=True)
                if self._made_user and not _live_runs():
                    _remove_user()  # the last log host on this machine: the account goes too
                self._made_user = False

    def leftovers(self) -> list[str]:
        """What `close` should have removed and did not (the teardown test's view)."""
        left = []
        if self.base.exists():
            left.append(str(self.base))
        with contextlib.suppress(KeyError):
            pwd.getpwnam(PULL_USER)
            left.append(f"user {PULL_USER}")
        for proc in (self.rsyslogd, self.sshd):
            if proc is not None and proc.poll() is None:
                left.append(f"pid {proc.pid}")
        return left
