"""keyd started the way strongroom-keyd.service starts it: no root phase at all, as its own uid with
the clients group as primary group (User=/Group=/SupplementaryGroups=), in a runtime directory and a
state directory that "systemd" (the test, as root) made and handed to it, with or without
LimitMEMLOCK=infinity. The unit cannot run under systemd here (no systemd in this container), so the
test reproduces what systemd does before exec: ids, groups, rlimits, umask, directories.

What it shows: keyd needs no privilege to serve (the socket gets the clients group through the
primary gid, not a chown); the web app's uid, a member of that group, reaches it and unseals it
through the drop file; a uid outside the group cannot even reach the socket; mlockall works
unprivileged only with the raised memlock limit (else `hardening_degraded`).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from keyd.client import KeydClient
from keyd.config import Config
from keyd.errors import KeydError
from keyd.server import serve
from tests.apparmor.policy import compiled_file_rules, decide
from tests.deploy.syscalls import (
    PROC_MOVES,
    allowed_syscalls,
    file_accesses,
    read_trace,
    syscall_groups,
    translate,
)
from tests.deploy.test_units import options
from tests.support import need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
# Numeric ids no account uses here (setresuid does not need passwd entries).
KEYD_UID, CLIENTS_GID, KEYD_GID, WEB_UID, WEB_GID, OTHER_UID = 47101, 47102, 47103, 47104, 47105, 47106


EXEC_MARKER = "/strongroom-test-exec-marker"


def _traced(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line for line in status.splitlines() if line.startswith("TracerPid:")).split()[1] != "0"


@dataclass
class Unit:
    base: Path
    pid: int

    @property
    def socket(self) -> Path:
        return self.base / "run/strongroom-keyd/keyd.sock"

    @property
    def state(self) -> Path:
        return self.base / "lib/strongroom-keyd"

    @property
    def shm(self) -> Path:
        return self.base / "shm"

    def events(self) -> list[str]:
        path = self.state / "events.jsonl"
        return [json.loads(line)["event"] for line in path.read_text().splitlines()] if path.exists() else []

    def log(self) -> str:
        path = self.base / "keyd.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _as(uid: int, gid: int, groups: list[int]) -> None:
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def ask_status(sock: Path, uid: int, gid: int, groups: list[int]) -> str:
    """`status` from a forked child running as uid/gid/groups: 'sealed', 'unsealed' or the error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        answer = "?"
        try:
            os.close(r)
            _as(uid, gid, groups)
            with KeydClient(sock, timeout=2.0) as client:
                answer = "sealed" if client.status().sealed else "unsealed"
        except KeydError as exc:
            answer = f"{type(exc).__name__}:{exc.reason}"
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            answer = f"crash:{type(exc).__name__}"
        finally:
            os.write(w, answer.encode())
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    return answer


def wait_for(predicate: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def keyd_like_the_unit(memlock: int, key: bytes, strace_log: Path | None = None) -> Iterator[Unit]:
    need_root()
    base = Path(tempfile.mkdtemp(prefix="keyd-unit-"))
    os.chmod(base, 0o711)  # noqa: S103 - traversable for the test's uids, not listable
    try:
        for d in ("run", "lib"):
            (base / d).mkdir(mode=0o755)
        shm = base / "shm"
        shm.mkdir()
        os.chmod(shm, 0o1777)  # noqa: S103 - stands in for /dev/shm
        # keyd init runs as root (docs/keyd.md, First boot) and hands the state to keyd's user itself:
        # the unit starts unprivileged and could not read a root-owned state.json (found booting the
        # whole server, tests/system).
        state = base / "lib/strongroom-keyd"
        flags = ["--state-dir", str(state), "--drop-path", str(shm / "ekey"), "--no-syslog"]
        (shm / "ekey").write_bytes(key)
        os.chmod(shm / "ekey", 0o600)
        subprocess.run(
            [sys.executable, "-m", "keyd", "init", *flags, "--user", str(KEYD_UID), "--key-kind", "raw",
             "--wait", "10"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )  # fmt: skip
        assert {p.stat().st_uid for p in [state, *state.iterdir()]} == {KEYD_UID}
        # RuntimeDirectory=strongroom-keyd, RuntimeDirectoryMode=0750, owned by User:Group.
        run = base / "run/strongroom-keyd"
        run.mkdir(mode=0o750)
        os.chown(run, KEYD_UID, CLIENTS_GID)
        config = Config(
            socket=run / "keyd.sock",
            state_dir=state,
            drop_path=shm / "ekey",
            allowed_uids=frozenset({WEB_UID}),
            syslog=False,
            poll_interval=0.05,
        )
        log = os.open(base / "keyd.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: what systemd does, then what ExecStart= runs
            rc = 70
            try:
                os.close(go_w)
                os.read(go_r, 1)  # wait until strace (if any) is attached
                os.dup2(log, 1)
                os.dup2(log, 2)
                resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))  # LimitMEMLOCK=
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # LimitCORE=0
                os.umask(0o077)  # UMask=0077
                _as(KEYD_UID, CLIENTS_GID, [KEYD_GID])  # User=, Group=, SupplementaryGroups=
                # Here systemd would exec: the seccomp filter applies from now on (trace marker).
                with contextlib.suppress(OSError):
                    os.stat(EXEC_MARKER)
                rc = serve(config)
            except BaseException:  # noqa: BLE001 - the parent reads the log
                traceback.print_exc()
            finally:
                os._exit(rc)
        os.close(log)
        os.close(go_r)
        tracer = None
        if strace_log is not None:
            tracer = subprocess.Popen(["strace", "-f", "-qq", "-y", "-p", str(pid), "-o", str(strace_log)])
            wait_for(lambda: _traced(pid), "strace to attach")
        os.write(go_w, b"g")
        os.close(go_w)
        unit = Unit(base, pid)
        wait_for(lambda: unit.socket.exists() or os.waitpid(pid, os.WNOHANG) != (0, 0), "keyd's socket")
        assert unit.socket.exists(), unit.log()
        yield unit
        os.kill(pid, 15)
        os.waitpid(pid, 0)
        if tracer is not None:
            tracer.wait(timeout=30)
    finally:
        with contextlib.suppress(NameError, ProcessLookupError, ChildProcessError):
            os.kill(pid, 15)
            os.waitpid(pid, 0)
        shutil.rmtree(base, ignore_errors=True)


KEY = b"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
CAP_SYS_RESOURCE = 24


def can_raise_memlock() -> bool:
    """systemd (PID 1) can always apply LimitMEMLOCK=infinity; this container's root may not be able
    to (no CAP_SYS_RESOURCE, hard limit 8 MiB: docs/whole-server-test.md)."""
    if resource.getrlimit(resource.RLIMIT_MEMLOCK)[1] == resource.RLIM_INFINITY:
        return True
    status = Path("/proc/self/status").read_text()
    cap_eff = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    return bool(int(cap_eff, 16) >> CAP_SYS_RESOURCE & 1)


@pytest.fixture(scope="module")
def unit() -> Iterator[Unit]:
    memlock = (
        resource.RLIM_INFINITY if can_raise_memlock() else resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    )
    with keyd_like_the_unit(memlock, KEY) as u:
        yield u


def _fields(pid: int) -> dict[str, str]:
    status = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":", 1) for line in status.splitlines())


def test_runs_unprivileged(unit: Unit) -> None:
    fields = _fields(unit.pid)
    assert fields["Uid"].split()[:3] == [str(KEYD_UID)] * 3
    assert fields["Gid"].split()[:3] == [str(CLIENTS_GID)] * 3
    assert fields["Groups"].split() == [str(KEYD_GID)]
    assert fields["CapEff"].strip() == "0000000000000000"
    assert fields["CapPrm"].strip() == "0000000000000000"


def test_memory_is_locked_when_the_unit_limit_applies(unit: Unit) -> None:
    if can_raise_memlock():
        # LimitMEMLOCK=infinity in effect: mlockall worked without any privilege.
        assert int(_fields(unit.pid)["VmLck"].split()[0]) > 0
        assert "hardening_degraded" not in unit.events(), unit.log()
    else:
        # This container cannot grant the unit's limit: keyd must say so, not pretend.
        wait_for(lambda: "hardening_degraded" in unit.events(), "hardening_degraded")
        # The page holding the key is still mlock'd on its own (one page fits any limit): checked
        # after the unseal test below has put a key there.


def test_socket_and_directory_belong_to_the_clients_group(unit: Unit) -> None:
    d, s = unit.socket.parent.stat(), unit.socket.stat()
    assert (stat.S_IMODE(d.st_mode), d.st_uid, d.st_gid) == (0o750, KEYD_UID, CLIENTS_GID)
    assert (stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid) == (0o660, KEYD_UID, CLIENTS_GID)


@pytest.mark.parametrize(
    ("who", "uid", "gid", "groups", "answer"),
    [
        ("the web app (clients group)", WEB_UID, WEB_GID, [CLIENTS_GID], "sealed"),
        ("a local user", OTHER_UID, OTHER_UID, [], "Unavailable"),
        ("Apache's www-data, not in the group", 33, 33, [33], "Unavailable"),
        (
            "in the group but not an allowed uid",
            OTHER_UID,
            OTHER_UID,
            [CLIENTS_GID],
            "Forbidden:peer_not_allowed",
        ),
        ("keyd's own group only", OTHER_UID, KEYD_GID, [KEYD_GID], "Unavailable"),
    ],
)
def test_who_reaches_keyd(unit: Unit, who: str, uid: int, gid: int, groups: list[int], answer: str) -> None:
    got = ask_status(unit.socket, uid, gid, groups)
    assert got.startswith(answer), f"{who}: {got}"


def test_unseal_through_the_drop_file_as_keyds_user(unit: Unit) -> None:
    tmp = unit.shm / "ekey-tmp"
    tmp.write_bytes(KEY)
    os.chown(tmp, KEYD_UID, KEYD_GID)
    os.chmod(tmp, 0o600)
    os.rename(tmp, unit.shm / "ekey")
    wait_for(lambda: ask_status(unit.socket, WEB_UID, WEB_GID, [CLIENTS_GID]) == "unsealed", "unseal")
    assert not (unit.shm / "ekey").exists()  # keyd, unprivileged, deleted it from the sticky dir


def test_the_key_page_is_locked_either_way(unit: Unit) -> None:
    # Runs after the unseal: keyd's LockedSecret page (or all of memory) is locked.
    assert int(_fields(unit.pid)["VmLck"].split()[0]) >= 4


def test_without_limit_memlock_hardening_degrades() -> None:
    # 8 MiB, Debian's default: what keyd would get without LimitMEMLOCK= in the unit.
    limit = min(8 * 1024 * 1024, resource.getrlimit(resource.RLIMIT_MEMLOCK)[1])
    with keyd_like_the_unit(limit, KEY) as u:
        wait_for(lambda: "hardening_degraded" in u.events(), "hardening_degraded")


def test_the_unit_filters_allow_what_keyd_does(tmp_path: Path) -> None:
    """keyd traced from the point systemd would exec it to its exit (start, unseal, a client, SIGTERM),
    against the unit's SystemCallFilter=, RestrictAddressFamilies=AF_UNIX and
    MemoryDenyWriteExecute= (what the seccomp filter would refuse)."""
    analyze = need_binary("systemd-analyze")
    need_binary("strace")
    trace_log = tmp_path / "strace.log"
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    memlock = resource.RLIM_INFINITY if can_raise_memlock() else hard
    with keyd_like_the_unit(memlock, KEY, strace_log=trace_log) as u:
        tmp = u.shm / "ekey-tmp"
        tmp.write_bytes(KEY)
        os.chown(tmp, KEYD_UID, KEYD_GID)
        os.chmod(tmp, 0o600)
        os.rename(tmp, u.shm / "ekey")
        wait_for(lambda: ask_status(u.socket, WEB_UID, WEB_GID, [CLIENTS_GID]) == "unsealed", "unseal")
        # Files keyd touched, moved to their production paths, against the compiled AppArmor profile
        # (read while the test's directories still exist).
        moves = [
            (f"{u.state}/", "/var/lib/strongroom-keyd/"),
            (f"{u.socket.parent}/", "/run/strongroom-keyd/"),
            (f"{u.shm}/", "/dev/shm/"),
            *PROC_MOVES,
        ]
        accesses = translate(file_accesses(trace_log, after=EXEC_MARKER), moves)
    rules = compiled_file_rules(need_binary("apparmor_parser"), ROOT / "apparmor" / "strongroom-keyd")
    refused = sorted((p, m) for p, m in accesses if not decide(rules, p).allows(m))
    assert refused == [], "the profile would refuse:\n" + "\n".join(f"{p} {m}" for p, m in refused)
    assert {("/var/lib/strongroom-keyd/events.jsonl", "w"), ("/dev/shm/ekey", "r")} <= accesses
    assert ("/run/strongroom-keyd/keyd.sock", "w") in accesses
    trace = read_trace(trace_log, after=EXEC_MARKER)
    opts = options("strongroom-keyd.service")
    allowed = allowed_syscalls(opts["SystemCallFilter"], syscall_groups(analyze))
    assert {"bind", "accept4", "unlink", "prctl"} <= trace.calls
    assert trace.calls - allowed == set(), "refused by SystemCallFilter= (EPERM under systemd)"
    assert trace.families == {"AF_UNIX"}
    assert trace.write_exec_maps == [], "MemoryDenyWriteExecute= would refuse these"
