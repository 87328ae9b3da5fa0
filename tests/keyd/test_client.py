"""The client on its own: timeouts, the import boundary, and forks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from keyd.client import KeydClient
from keyd.errors import Unavailable
from tests.keyd.conftest import ROOT, Running


def test_client_imports_no_key_handling_code() -> None:
    code = (
        "import sys, keyd.client; "
        "print(sorted(m for m in sys.modules if m.startswith(('keyd', 'cryptography', 'pkcs11'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == str(
        [
            "keyd",
            "keyd.client",
            "keyd.envelope",
            "keyd.errors",
            "keyd.protocol",
            "keyd.protocol.request",
            "keyd.protocol.response",
        ]
    )


def test_a_silent_keyd_times_out(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True).start()
    try:
        with KeydClient(path, timeout=0.3) as c:
            start = time.monotonic()
            with pytest.raises(Unavailable, match="did not answer"):
                c.status()
            assert time.monotonic() - start < 2
    finally:
        for s in held:
            s.close()
        server.close()


def test_no_socket_is_unavailable(tmp_path: Path) -> None:
    with (
        KeydClient(tmp_path / "none.sock", timeout=0.5) as c,
        pytest.raises(Unavailable, match="cannot reach"),
    ):
        c.status()


def test_closed_client_refuses(running: Running) -> None:
    c = running.keyd.client()
    c.status()
    c.close()
    with pytest.raises(Unavailable):
        c.status()


def test_forked_child_gets_its_own_connection(running: Running) -> None:
    with running.keyd.client() as c:
        c.status()  # a pooled connection now exists in the parent
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            try:
                ok = all(not c.status().sealed for _ in range(50))
            except BaseException:  # noqa: BLE001 - the exit code carries the verdict
                ok = False
            os._exit(0 if ok else 1)
        for _ in range(50):
            assert c.status().sealed is False
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_a_vanished_keyd_is_unavailable_not_sigpipe(tmp_path: Path) -> None:
    """Even with SIGPIPE at its default (fatal) action, writing to a closed keyd raises Unavailable."""
    path = tmp_path / "closing.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)

    def close_everything() -> None:
        # Accept and drop every connection until the test shuts the listener down. The client may
        # connect once or retry; a fixed count left this thread blocked in accept() on a socket the
        # test then closed, and its OSError surfaced in a later, unrelated test.
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    closer = threading.Thread(target=close_everything, daemon=True)
    closer.start()
    code = f"""
import signal
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
from keyd.client import Context, KeydClient
from keyd.errors import Unavailable
items = [(Context("r%d" % i, "f"), b"x" * 16000) for i in range(60)]
with KeydClient({str(path)!r}, timeout=2) as c:
    try:
        c.encrypt_batch(items, actor="a", purpose="p")
    except Unavailable:
        print("unavailable")
"""
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() with an error
        server.close()
        closer.join(timeout=5)
    assert not closer.is_alive()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "unavailable"
