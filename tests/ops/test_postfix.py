"""Root's mail: a real private postfix with the shipped main.cf/master.cf/virtual (only paths, the
relay address and TLS to the relay overridden: the test relay is an aiosmtpd sink on loopback without
TLS). Mail for root leaves for the admins' address; postfix listens on no TCP port at all."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from aiosmtpd.controller import Controller

from tests.ops.rsyslog_harness import free_port, wait_for
from tests.support import need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "ops" / "postfix"


class Sink:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))  # type: ignore[attr-defined]
        return "250 OK"


def _postconf(postconf: str, conf: Path, *settings: str) -> None:
    subprocess.run([postconf, "-c", str(conf), "-e", *settings], check=True, capture_output=True)


def test_shipped_main_cf_has_no_network_listener_settings() -> None:
    postconf = need_binary("postconf")
    out = subprocess.run(
        [postconf, "-c", str(SHIPPED), "-h", "inet_interfaces", "master_service_disable", "mydestination"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == ["loopback-only", "inet", ""]
    assert " inet " not in "\n".join(
        ln for ln in (SHIPPED / "master.cf").read_text().splitlines() if not ln.startswith("#")
    )


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def traversable() -> Iterator[Path]:
    # postfix's daemons run as the postfix user: pytest's 0700 tmp dirs would stop them at the door.
    base = Path(tempfile.mkdtemp(prefix="ops-postfix-"))
    os.chmod(base, 0o711)  # noqa: S103 - traversable, not listable
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_root_mail_is_relayed_to_the_admins_and_nothing_listens(
    traversable: Path, sink: tuple[Sink, int]
) -> None:
    need_root()
    tmp_path = traversable
    postfix, postconf, postmap, sendmail = (
        need_binary(b) for b in ("postfix", "postconf", "postmap", "sendmail")
    )
    handler, port = sink
    conf = tmp_path / "etc"
    conf.mkdir()
    for name in ("main.cf", "master.cf", "virtual"):
        shutil.copy(SHIPPED / name, conf / name)
    queue, data = tmp_path / "spool", tmp_path / "lib"
    queue.mkdir()
    data.mkdir()
    shutil.chown(data, "postfix", "postfix")
    _postconf(
        postconf,
        conf,
        f"queue_directory={queue}",
        f"data_directory={data}",
        f"maillog_file={tmp_path / 'postfix.log'}",
        f"maillog_file_prefixes={tmp_path}",
        f"virtual_alias_maps=hash:{conf / 'virtual'}",
        f"relayhost=[127.0.0.1]:{port}",
        "smtp_tls_security_level=none",
        "import_environment=MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
    )
    subprocess.run([postmap, f"hash:{conf / 'virtual'}"], check=True)
    env = {"MAIL_CONFIG": str(conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run([postfix, "-c", str(conf), "set-permissions", "create-missing"], check=True, env=env)
    started = subprocess.run([postfix, "-c", str(conf), "start"], capture_output=True, text=True, env=env)
    assert started.returncode == 0, (tmp_path / "postfix.log").read_text()
    try:
        pid = int((queue / "pid" / "master.pid").read_text().split()[0])
        master = psutil.Process(pid)
        msg = b"Subject: cron: check the server\n\nA daemon wrote to root.\n"
        subprocess.run([sendmail, "-C", str(conf), "-f", "root", "root"], input=msg, check=True, env=env)
        subprocess.run(
            [sendmail, "-C", str(conf), "-f", "www-data", "www-data"], input=msg, check=True, env=env
        )
        wait_for(lambda: len(handler.received) >= 2, timeout=30, what="relayed mail")
        rcpts = sorted(r for _, tos, _ in handler.received for r in tos)
        assert rcpts == ["admins@example.internal", "admins@example.internal"]
        # No TCP or UDP listener anywhere in postfix's process tree.
        pids = {pid, *(c.pid for c in master.children(recursive=True))}
        listening = [c for c in psutil.net_connections(kind="inet") if c.pid in pids and not c.raddr]
        assert listening == []
    finally:
        subprocess.run([postfix, "-c", str(conf), "stop"], capture_output=True, env=env)
        time.sleep(0.2)
