"""A booted Debian 12 system container: real systemd as PID 1, in a network namespace of the test's.

    container = Container(image, network, binds={"/srv/strongroom-src": REPO})
    container.start()                       # overlay mount, systemd-nspawn -b, wait for the boot
    container.run(["systemctl", "is-active", "apache2"], check=False)
    container.stop(); container.start()     # a reboot: the disk (the overlay's upper layer) stays
    container.close()                       # poweroff, unmount, delete the run directory

The per-run root is an overlay mount over the cached image (nothing writes to the image); where
overlayfs is refused it falls back to a copy (`cp --reflink=auto`). Commands run inside through
`nsenter` into every namespace of the container's PID 1, with a clean environment.

Nothing may outlive the test: every container is closed by its fixture, at interpreter exit
(atexit, also after Ctrl-C), and a run killed outright (SIGKILL) is reaped by the next run, which
finds its run directory with a dead owner pid (`reap_stale_runs`).
"""

from __future__ import annotations

import atexit
import contextlib
import email
import email.message
import email.policy
import json
import mailbox
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import count
from pathlib import Path, PurePosixPath

import psutil

from tests.system import network as netmod
from tests.system.images import HOSTNAME, cache_dir, cache_lock

CLEAN_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
    "HOME=/root",
)
BOOT_TIMEOUT = 180
STOP_TIMEOUT = 60
_counter = count(1)
_open: set[Container] = set()


class ContainerError(AssertionError):
    """The container did not boot, a command in it failed, or it would not stop."""


def mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return any(line.split()[4] == target for line in f)


def pid_alive(pid: int) -> bool:
    """The process runs (a zombie waiting for its parent to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Container:
    def __init__(
        self,
        image: Path,
        network: netmod.Network,
        *,
        binds: Mapping[str, Path] | None = None,
        cache: Path | None = None,
    ) -> None:
        self.image = image
        self.network = network
        self.binds = dict(binds or {})  # container path -> host path, all read-only
        self.name = f"strongroom-{os.getpid()}-{next(_counter)}"
        self.run_dir = (cache or cache_dir()) / "runs" / self.name
        self.root = self.run_dir / "root"
        self.overlay = True
        self.failed_units: list[str] = []
        self.boot_seconds = 0.0
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._pid1: int | None = None
        self._prepared = False

    # -- the root filesystem ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Mount (or copy) the per-run root. `start` calls it; call it earlier to write files first."""
        if self._prepared:
            return
        _open.add(self)
        self.run_dir.mkdir(parents=True, mode=0o700)
        self._write_state()
        upper, work = self.run_dir / "upper", self.run_dir / "work"
        for d in (upper, work, self.root):
            d.mkdir()
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o",
             f"lowerdir={self.image},upperdir={upper},workdir={work}", str(self.root)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            # No overlayfs (e.g. the cache is itself on overlayfs): a copy, shared blocks where possible.
            self.overlay = False
            self.root.rmdir()
            netmod.run(["cp", "-a", "--reflink=auto", str(self.image), str(self.root)], timeout=600)
        self._prepared = True

    def disk_path(self, path: str) -> Path:
        """Where the container's `path` is on its disk, symbolic links resolved inside the root.

        Only files on the disk: /run and /tmp are the container's own tmpfs (use `read_file`).
        """
        parts = [p for p in PurePosixPath(path).parts if p != "/"]
        resolved, hops = self.root, 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                resolved = resolved.parent if resolved != self.root else resolved
                continue
            candidate = resolved / part
            if candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise ContainerError(f"too many symbolic links in {path}")
                target = os.readlink(candidate)
                if target.startswith("/"):
                    resolved = self.root
                parts = [p for p in PurePosixPath(target).parts if p != "/"] + parts
            else:
                resolved = candidate
        return resolved

    def write_file(self, path: str, data: str | bytes, mode: int = 0o600) -> None:
        """Put a file on the container's disk (before boot too), owned by root."""
        target = self.disk_path(path)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chown(target, 0, 0)
        os.chmod(target, mode)

    # -- boot and stop ------------------------------------------------------------------------------

    @property
    def pid1(self) -> int:
        if self._pid1 is None:
            raise ContainerError("the container is not running")
        return self._pid1

    @property
    def running(self) -> bool:
        return self._nspawn is not None and self._nspawn.poll() is None

    def start(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Boot and wait until systemd says the system is up (running or degraded)."""
        self.prepare()
        started = time.monotonic()
        argv = [
            "nsenter", f"--net={self.network.server_netns_path}",
            "systemd-nspawn", "-D", str(self.root), "-b", "--register=no", "--keep-unit",
            "--capability=CAP_NET_ADMIN",
            "--console=read-only", "-M", self.name, f"--hostname={HOSTNAME}",
            # The container's own settings, as on a real server, not copies of the host's.
            "--resolv-conf=off", "--timezone=off", "--link-journal=no",
        ]  # fmt: skip
        argv += [f"--bind-ro={host}:{inside}" for inside, host in self.binds.items()]
        console = open(self.run_dir / "console.log", "ab")  # noqa: SIM115 (nspawn writes it until it exits)
        with console:
            self._nspawn = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=console, stderr=console, env=_nspawn_env()
            )
        self._write_state()
        self._pid1 = self._find_pid1(started + 30)
        self._write_state()
        state = self._wait_booted(started + timeout)
        self.boot_seconds = time.monotonic() - started
        if state == "degraded":
            out = self.run(["systemctl", "--failed", "--plain", "--no-legend", "--no-pager"], check=False)
            self.failed_units = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]

    def _find_pid1(self, deadline: float) -> int:
        assert self._nspawn is not None
        own_pidns = os.readlink("/proc/self/ns/pid")
        while time.monotonic() < deadline:
            if self._nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited ({self._nspawn.returncode}):\n{self.console()}")
            with contextlib.suppress(psutil.Error, OSError):
                for child in psutil.Process(self._nspawn.pid).children():
                    # nspawn's first child forks init and exits: wait for the one in a new pid namespace.
                    if os.readlink(f"/proc/{child.pid}/ns/pid") != own_pidns and child.name() == "systemd":
                        return child.pid
            time.sleep(0.1)
        raise ContainerError(f"no systemd in the container after 30 s:\n{self.console()}")

    def _wait_booted(self, deadline: float) -> str:
        state = ""
        while time.monotonic() < deadline:
            remaining = max(1.0, deadline - time.monotonic())
            try:
                result = self.run(
                    ["systemctl", "is-system-running", "--wait"], check=False, timeout=remaining
                )
            except subprocess.TimeoutExpired:
                break
            lines = (result.stdout.strip() or result.stderr.strip()).splitlines()
            state = lines[-1] if lines else ""
            if state in ("running", "degraded"):
                return state
            if self._nspawn is not None and self._nspawn.poll() is not None:
                break
            time.sleep(0.5)  # PID 1 has not opened its socket yet
        raise ContainerError(f"the container did not boot (last state {state!r}):\n{self.console()}")

    def console(self, tail: int = 6000) -> str:
        path = self.run_dir / "console.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Power off (as `systemctl poweroff` would), kill whatever is left after `timeout`.

        The disk stays: `start` again boots the same system (a reboot).
        """
        if self._nspawn is None:
            return
        if self._nspawn.poll() is None:
            with contextlib.suppress(ContainerError, subprocess.TimeoutExpired):
                self.run(["systemctl", "poweroff", "--no-block"], check=False, timeout=15)
            try:
                self._nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
        self._nspawn = None
        self._pid1 = None
        self._write_state()

    def _kill(self) -> None:
        """Kill the container's PID 1 (the kernel then kills all of its pid namespace) and nspawn."""
        assert self._nspawn is not None
        if self._pid1 is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid1, signal.SIGKILL)
        try:
            self._nspawn.wait(10)
        except subprocess.TimeoutExpired:
            self._nspawn.kill()
            self._nspawn.wait(10)

    def close(self) -> None:
        """Stop, unmount and delete this run's root. Safe to call twice and after any failure."""
        try:
            self.stop()
        finally:
            _remove_run_dir(self.run_dir)
            self._prepared = False
            _open.discard(self)

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_state(self) -> None:
        """What `reap_stale_runs` needs if this process dies without cleaning up."""
        state = {
            "owner": os.getpid(),
            "nspawn": self._nspawn.pid if self._nspawn else None,
            "pid1": self._pid1,
            "netns": self.network.namespaces(),
        }
        (self.run_dir / "state.json").write_text(json.dumps(state))

    # -- inside the container -----------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (a string goes through `sh -c`), as root or as `user`, clean environment."""
        command = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        if user is not None:
            command = ["runuser", "-u", user, "--", *command]
        full = ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "env", "-i", *CLEAN_ENV, *command]
        result = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and result.returncode != 0:
            shown = argv if isinstance(argv, str) else shlex.join(argv)
            raise ContainerError(
                f"in the container: {shown} failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        return result

    def popen(self, argv: Sequence[str] | str) -> subprocess.Popen[str]:
        """Start a command inside, as `run` does, with a pipe each way (text, line-buffered): for a
        dialogue such as keyd init's, which prints a line and reads the answer before the next.
        The caller waits for it (and kills it on a timeout)."""
        command = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        full = ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "env", "-i", *CLEAN_ENV, *command]
        return subprocess.Popen(
            full, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )

    def read_file(self, path: str) -> bytes:
        """A file as the running container sees it (its /run and /tmp too)."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "-r", "-w", "cat", "--", path],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise ContainerError(
                f"cannot read {path} in the container: {result.stderr.decode(errors='replace')}"
            )
        return result.stdout

    def journal(self, unit: str | None = None, *, lines: int | None = None, since: str | None = None) -> str:
        """The journal (of one unit), oldest first, as `journalctl -o short-iso` prints it."""
        argv = ["journalctl", "--no-pager", "-q", "-o", "short-iso"]
        if unit:
            argv += ["-u", unit]
        if lines:
            argv += ["-n", str(lines)]
        if since:
            argv += ["--since", since]
        return self.run(argv, timeout=60).stdout

    def unit_state(self, unit: str) -> str:
        return self.run(["systemctl", "is-active", unit], check=False).stdout.strip()

    # -- mail ---------------------------------------------------------------------------------------

    def mails(self, user: str) -> list[email.message.EmailMessage]:
        """Every message in /var/mail/<user> (postfix local delivery), oldest first."""
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
            raise ValueError(f"not a user name: {user!r}")
        path = self.disk_path(f"/var/mail/{user}")
        if not path.exists():
            return []
        box = mailbox.mbox(path, create=False)
        deadline = time.monotonic() + 30
        while True:  # postfix locks the same way (fcntl + dotlock): never read half a delivery
            try:
                box.lock()
                break
            except mailbox.ExternalClashError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)  # a delivery in progress
        try:
            raw = [box.get_bytes(key) for key in box.iterkeys()]
        finally:
            box.unlock()
            box.close()
        return [email.message_from_bytes(r, policy=email.policy.default) for r in raw]

    def wait_for_mail(
        self,
        user: str,
        *,
        after: int,
        match: Callable[[email.message.EmailMessage], bool] | None = None,
        timeout: float = 120,
    ) -> tuple[email.message.EmailMessage, float]:
        """The first message after the first `after` ones that `match`es, and the seconds it took."""
        started = time.monotonic()
        while True:
            for message in self.mails(user)[after:]:
                if match is None or match(message):
                    return message, time.monotonic() - started
            if time.monotonic() - started > timeout:
                subjects = [m["Subject"] for m in self.mails(user)[after:]]
                raise ContainerError(f"no matching mail for {user} within {timeout:.0f} s (new: {subjects})")
            time.sleep(0.5)


def _nspawn_env() -> dict[str, str]:
    # /proc/sys/net writable, as nspawn does for its own private networks: the server applies its
    # network sysctls to its namespace (every other sysctl stays read-only: they are the host's).
    return {**os.environ, "SYSTEMD_NSPAWN_API_VFS_WRITABLE": "network"}


def _remove_run_dir(run_dir: Path) -> None:
    root = run_dir / "root"
    if root.exists() and mounted(root):
        result = subprocess.run(["umount", str(root)], capture_output=True, timeout=30, check=False)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=30, check=False)
    if run_dir.exists():
        shutil.rmtree(run_dir)


def reap_stale_runs(cache: Path | None = None) -> list[str]:
    """Remove what runs killed outright left behind (their owner pid is dead); returns their names."""
    cache = cache or cache_dir()
    runs = cache / "runs"
    reaped: list[str] = []
    if not runs.is_dir():
        return reaped
    with cache_lock(cache):
        for run_dir in runs.iterdir():
            named = re.fullmatch(r"strongroom-(\d+)-\d+", run_dir.name)
            if not named:
                continue  # not one of ours: leave it alone
            try:
                state = json.loads((run_dir / "state.json").read_text())
            except (OSError, ValueError):
                state = {}
            if pid_alive(int(state.get("owner", named.group(1)))):
                continue
            killed = []
            for key in ("pid1", "nspawn"):
                pid = state.get(key)
                if pid and _is_ours(int(pid), run_dir):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                        killed.append(int(pid))
            deadline = time.monotonic() + 10
            while any(pid_alive(pid) for pid in killed) and time.monotonic() < deadline:
                time.sleep(0.1)  # a pid namespace dies with its init, but not instantly
            for ns in state.get("netns", []):
                if (netmod.NETNS_DIR / ns).exists():
                    netmod.run(["ip", "netns", "delete", ns], check=False)
            _remove_run_dir(run_dir)
            reaped.append(run_dir.name)
    return reaped


def _is_ours(pid: int, run_dir: Path) -> bool:
    """The pid is still the nspawn of that run or a container's systemd (pids get reused)."""
    try:
        if str(run_dir / "root") in psutil.Process(pid).cmdline():
            return True  # nspawn -D <root>
        # The container's init: its root is this run's overlay (the mount options name the upper dir).
        with open(f"/proc/{pid}/mountinfo", encoding="utf-8") as f:
            return f"upperdir={run_dir}/upper" in f.read()
    except (psutil.Error, OSError):
        return False


@atexit.register
def _close_all() -> None:
    # Ctrl-C or an error outside the fixtures: still leave nothing running or mounted.
    for container in list(_open):
        with contextlib.suppress(Exception):
            container.close()
            container.network.teardown()


@contextlib.contextmanager
def booted(image: Path, binds: Mapping[str, Path] | None = None) -> Iterator[Container]:
    """A network and a container on it, booted; both removed on exit, whatever happened."""
    net = netmod.Network()
    try:
        net.create()
        with Container(image, net, binds=binds) as container:
            container.start()
            yield container
    finally:
        net.teardown()
