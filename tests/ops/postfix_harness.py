"""A real private postfix running a rendering of ops.postfix, for the mail-path tests.

Only what a test cannot share with the host is changed after rendering: the directories (queue, data,
log, map, mailboxes) and, in relay mode, the relay (an aiosmtpd sink on loopback, without TLS). The
loopback listener's port is the rendering's own `port` (a free one: the host may run a postfix).
`sendmail(...)` runs postfix's real sendmail against this instance (MAIL_CONFIG).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from ops.postfix import Postfix
from tests.support import need_binary, need_root

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class PrivatePostfix:
    conf: Path
    base: Path
    master_pid: int
    smtp_port: int  # the loopback listener (127.0.0.1 and ::1)

    @property
    def env(self) -> dict[str, str]:
        return {"MAIL_CONFIG": str(self.conf), "PATH": PATH}

    @property
    def mail_dir(self) -> Path:
        return self.base / "mail"

    def sendmail(self, sender: str, recipient: str, message: bytes) -> None:
        subprocess.run(
            [need_binary("sendmail"), "-C", str(self.conf), "-oi", "-f", sender, recipient],
            input=message,
            check=True,
            env=self.env,
        )

    def listeners(self) -> set[tuple[str, int]]:
        """(address, port) of every TCP/UDP socket listening in postfix's process tree."""
        master = psutil.Process(self.master_pid)
        pids = {self.master_pid, *(c.pid for c in master.children(recursive=True))}
        found = set()
        for c in psutil.net_connections(kind="inet"):
            if c.pid in pids and not c.raddr and c.laddr:
                found.add((str(c.laddr.ip), int(c.laddr.port)))
        return found

    def log(self) -> str:
        path = self.base / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def private_postfix(config: Postfix, *, relay_port: int | None = None) -> Iterator[PrivatePostfix]:
    need_root()
    postfix, postconf, postmap = (need_binary(b) for b in ("postfix", "postconf", "postmap"))
    # postfix's daemons run as the postfix user (and local delivery as the recipient): pytest's 0700
    # tmp dirs would stop them at the door.
    base = Path(tempfile.mkdtemp(prefix="ops-postfix-"))
    os.chmod(base, 0o711)  # noqa: S103 - traversable, not listable
    conf, queue, data, mail = base / "etc", base / "spool", base / "lib", base / "mail"
    for d in (conf, queue, data, mail):
        d.mkdir()
    shutil.chown(data, "postfix", "postfix")
    os.chmod(mail, 0o1777)  # noqa: S103 - like /tmp: each user creates its own mailbox file
    for name, text in config.render().items():
        (conf / name).write_text(text)
    overrides = [
        f"queue_directory={queue}",
        f"data_directory={data}",
        f"maillog_file={base / 'postfix.log'}",
        f"maillog_file_prefixes={base}",
        f"virtual_alias_maps=hash:{conf / 'virtual'}",
        f"mail_spool_directory={mail}",
        "import_environment=MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
    ]
    if relay_port is not None:
        overrides += [f"relayhost=[127.0.0.1]:{relay_port}", "smtp_tls_security_level=none"]
    subprocess.run([postconf, "-c", str(conf), "-e", *overrides], check=True, capture_output=True)
    subprocess.run([postmap, f"hash:{conf / 'virtual'}"], check=True)
    env = {"MAIL_CONFIG": str(conf), "PATH": PATH}
    subprocess.run([postfix, "-c", str(conf), "set-permissions", "create-missing"], check=True, env=env)
    started = subprocess.run([postfix, "-c", str(conf), "start"], capture_output=True, text=True, env=env)
    try:
        log = base / "postfix.log"
        assert started.returncode == 0, started.stderr + (log.read_text() if log.exists() else "")
        pid = int((queue / "pid" / "master.pid").read_text().split()[0])
        yield PrivatePostfix(conf=conf, base=base, master_pid=pid, smtp_port=config.port)
    finally:
        subprocess.run([postfix, "-c", str(conf), "stop"], capture_output=True, env=env)
        time.sleep(0.2)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def local_users(*names: str) -> Iterator[None]:
    """Throwaway system users (no home, no login) that stand for the admins alice and bob."""
    need_binary("useradd")
    made: list[str] = []
    try:
        for name in names:
            subprocess.run(["useradd", "--system", "-M", "-s", "/usr/sbin/nologin", name], check=True)
            made.append(name)
        yield
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)
