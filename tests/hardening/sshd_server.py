"""A REAL hardened sshd on loopback for the hardening tests, run from hardening/ssh/sshd_config.in
(test port and private paths), and the real OpenSSH client to talk to it.

`hardened_sshd` creates throwaway system users and a group (sshd needs real accounts: it looks them
up with getpwnam and drops to their uid) and removes them afterwards. Everything lives in a private
directory under /run, not /tmp: StrictModes refuses key files below a world-writable directory,
and the production layout (root-owned /etc/ssh/authorized_keys) is what is tested. Alerts go to an
aiosmtpd sink on 127.0.0.1 through the session hook's "smtp" transport.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hardening.ssh import HOOK, CrlPush, SshdSettings, render
from tests.support import free_port, need_binary, need_root, stop_process
from tests.webapp.smtpsink import Sink, smtp_server

CLIENT_TIMEOUT = 20


@dataclass
class Server:
    base: Path
    port: int
    sink: Sink
    admin: str  # in the allowed group
    outsider: str  # not in the allowed group
    keys: dict[str, Path] = field(default_factory=dict)
    log: Path = Path()
    hook_config: Path = Path()

    def ssh(
        self,
        user: str,
        key: str | None,
        *args: str,
        stdin: str = "",
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = ("BatchMode=yes",),
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.ssh_argv(user, key, *args, options=options),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            env=env,
            check=False,
        )

    def ssh_argv(
        self, user: str, key: str | None, *args: str, options: tuple[str, ...] = ("BatchMode=yes",)
    ) -> list[str]:
        return [
            need_binary("ssh"),
            *self._common(key, options),
            "-p",
            str(self.port),
            f"{user}@127.0.0.1",
            *args,
        ]

    def sftp(self, user: str, key: str, batch: str) -> subprocess.CompletedProcess[str]:
        argv = [need_binary("sftp"), *self._common(key, ("BatchMode=yes",)), "-P", str(self.port), "-b", "-"]
        return subprocess.run(
            [*argv, f"{user}@127.0.0.1"],
            input=batch,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )

    def _common(self, key: str | None, options: tuple[str, ...]) -> list[str]:
        argv = ["-F", "/dev/null"]
        for option in options:  # first: in ssh the first value given wins
            argv += ["-o", option]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]
        if key is not None:
            argv += ["-i", str(self.keys[key]), "-o", "IdentitiesOnly=yes"]
        return argv

    def fingerprint(self, key: str) -> str:
        out = subprocess.run(
            ["ssh-keygen", "-lf", str(self.keys[key]) + ".pub"], capture_output=True, text=True, check=True
        ).stdout
        return out.split()[1]


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def keygen(path: Path) -> Path:
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path))
    return path


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("sshd did not listen in time")


@contextmanager
def hardened_sshd(
    *,
    prefix: str,
    group: str,
    admin: str,
    outsider: str,
    client_keys: Sequence[str],
    authorized_keys: Callable[[Mapping[str, str]], Mapping[str, str]],
    outsider_useradd: Sequence[str] = (),
    root_in_group: bool = False,
    files: Mapping[str, str] | None = None,
    crl_push: Callable[[Path], CrlPush] | None = None,
) -> Iterator[Server]:
    """The production sshd_config with private paths, listening on 127.0.0.1 until the block ends.

    `group` is the one allowed group; `admin` is made in it, `outsider` outside it with
    `outsider_useradd` as more useradd arguments. `client_keys` names the client key pairs made
    (Server.keys); `authorized_keys` gets their public keys by name and gives each user's file text.
    `files` are executables to write into the private etc directory, by name; `crl_push` gets that
    directory and gives the [crl_push] settings.
    """
    need_root()
    sshd = need_binary("sshd")
    need_binary("ssh")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/run"))
    base.chmod(0o755)
    made_users: list[str] = []
    made_group = False
    proc: subprocess.Popen[bytes] | None = None
    sink = Sink()
    try:
        run("groupadd", "--system", group)
        made_group = True
        for user, extra in ((admin, ["-G", group]), (outsider, [*outsider_useradd])):
            # /bin/sh (dash) as the login shell: sshd runs the ForceCommand through it, and unlike bash
            # it reads no user file first (bash sources ~/.bashrc there: measured).
            run("useradd", "--system", "-M", "-d", str(base / "home" / user), "-s", "/bin/sh", *extra, user)
            made_users.append(user)
            run("usermod", "-p", "*", user)  # not locked ("!"), no password either
            home = base / "home" / user
            home.mkdir(parents=True)
            shutil.chown(home, user, user)
        if root_in_group:
            # root joins the throwaway group (gone with it at the end), so that only PermitRootLogin,
            # not AllowGroups, stands between root's valid key and a session.
            run("gpasswd", "-a", "root", group)
        (base / "keys").mkdir(mode=0o755)
        etc = base / "etc"
        etc.mkdir(mode=0o755)
        keys = {name: keygen(etc / f"client-{name}") for name in client_keys}
        host_key = keygen(etc / "host_ed25519")
        pub = {name: path.with_suffix(".pub").read_text().strip() for name, path in keys.items()}
        for user, text in authorized_keys(pub).items():
            path = base / "keys" / user
            path.write_text(text)
            path.chmod(0o644)
        for name, text in (files or {}).items():
            (etc / name).write_text(text)
            (etc / name).chmod(0o755)
        hook = etc / "ssh-session-hook"
        shutil.copyfile(HOOK, hook)
        hook.chmod(0o755)
        with smtp_server(sink) as smtp_port:
            hook_config = etc / "ssh-alert.toml"
            hook_config.write_text(
                f'authorized_keys = "{base}/keys/%u"\nsession_shell = "/bin/bash"\n'
                f'[mail]\nfrom = "ssh@localhost"\nto = ["security@example.org"]\n'
                f'transport = "smtp"\nsmtp_host = "127.0.0.1"\nsmtp_port = {smtp_port}\n'
            )
            hook_config.chmod(0o644)
            port = free_port()
            config = etc / "sshd_config"
            config.write_text(
                render(
                    SshdSettings(
                        port=port,
                        listen=("127.0.0.1",),
                        host_keys=(str(host_key),),
                        pid_file=str(base / "sshd.pid"),
                        allow_groups=(group,),
                        authorized_keys=f"{base}/keys/%u",
                        hook=(str(hook), "--config", str(hook_config)),
                        crl_push=None if crl_push is None else crl_push(etc),
                    )
                )
            )
            run(sshd, "-t", "-f", str(config))
            log = base / "sshd.log"
            with log.open("wb") as log_fh:
                proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=log_fh)
            wait_for_port(port, proc, log)
            yield Server(base, port, sink, admin, outsider, keys, log, hook_config)
    finally:
        if proc is not None:
            stop_process(proc)
        for user in made_users:
            subprocess.run(["pkill", "-KILL", "-u", user], check=False, capture_output=True)
            subprocess.run(["userdel", user], check=False, capture_output=True)
        # userdel removed a user's own group (useradd --user-group) with it; the allowed group is ours
        # to remove.
        if made_group:
            subprocess.run(["groupdel", group], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
