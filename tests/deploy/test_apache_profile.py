"""Apache, configured by deploy/install.sh (the real site, modules and ModSecurity + CRS), traced
while it starts, serves an mTLS request through the proxy, reloads gracefully (the CA's hook after a
new CRL), serves again and stops: every file it opened, mapped
or connected to must be allowed by the compiled `strongroom-apache2` AppArmor profile, with the
throwaway root's paths moved back to /. There is no AppArmor in this kernel to enforce the profile;
this checks it would not break Apache (apparmor/README.md still says: complain mode first)."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import signal
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apparmor.policy import compiled_file_rules, decide, mask_of
from tests.deploy.syscalls import PROC_MOVES, file_accesses, translate
from tests.deploy.test_install import make_root, run_install
from tests.fixtures.pki import TestCA
from tests.support import free_port, need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]


class _Backend(http.server.BaseHTTPRequestHandler):
    """Stands in for gunicorn on its Unix socket: any GET is 200."""

    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return

    def address_string(self) -> str:
        return "unix"


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _get(context: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    return answer


@pytest.fixture(scope="module")
def apache_trace() -> Iterator[tuple[set[tuple[str, str]], int]]:
    need_root()
    apache2, strace = need_binary("apache2"), need_binary("strace")
    base = Path(tempfile.mkdtemp(prefix="apache-profile-"))
    os.chmod(base, 0o711)  # noqa: S103 - Apache's children (www-data) must traverse it
    try:
        root = make_root(base)
        os.chmod(base / "root", 0o755)  # noqa: S103 - like /
        res = run_install(root)
        assert res.returncode == 0, res.stderr
        # What the Debian package and docs/ca.md put in place on a real host.
        for d in ("var/log/apache2", "run/apache2", "run/lock/apache2"):
            (root / d).mkdir(parents=True, exist_ok=True)
        ca = TestCA()
        publish = root / "var/lib/strongroom-ca/publish"
        publish.mkdir(parents=True)
        os.chmod(root / "var/lib/strongroom-ca", 0o700)
        (publish / "chain.pem").write_bytes(ca.pem)
        (publish / "crl.pem").write_bytes(ca.crl_pem())
        ca.issue("localhost", server=True).write(root / "etc/apache2/strongroom", "server")
        (root / "etc/apache2/strongroom/server.pem").rename(root / "etc/apache2/strongroom/server.crt.pem")
        (root / "etc/apache2/strongroom/server.key").rename(root / "etc/apache2/strongroom/server.key.pem")
        client_cert, client_key = ca.issue("alice").write(base, "alice")
        # gunicorn's place: its directory is strongroom-web:www-data 0710 (install.sh).
        backend_path = root / "run/strongroom-web/gunicorn.sock"
        backend = _UnixHTTPServer(str(backend_path), _Backend)
        os.chmod(backend_path, 0o777)  # noqa: S103 - as gunicorn makes it; the directory guards it
        threading.Thread(target=backend.serve_forever, daemon=True).start()

        port = free_port()
        defines = {
            "STRONGROOM_LISTEN_ADDRESS": "127.0.0.1",
            "STRONGROOM_LISTEN_PORT": str(port),
            "STRONGROOM_SERVER_NAME": "localhost",
            "STRONGROOM_CONF_DIR": root / "etc/apache2/strongroom",
            "STRONGROOM_TLS_CERT": root / "etc/apache2/strongroom/server.crt.pem",
            "STRONGROOM_TLS_KEY": root / "etc/apache2/strongroom/server.key.pem",
            "STRONGROOM_CLIENT_CA": publish / "chain.pem",
            "STRONGROOM_CRL": publish / "crl.pem",
            "STRONGROOM_WEB_SOCKET": backend_path,
            "STRONGROOM_LOG_DIR": root / "var/log/apache2",
            "STRONGROOM_MODSEC_DATA_DIR": root / "var/cache/modsecurity",
            "STRONGROOM_MODSEC_TMP_DIR": root / "var/cache/modsecurity/strongroom-tmp",
            # Where the site's defaults put them: the piped loggers (python3 running the installed
            # filter, as root) are traced too.
            "STRONGROOM_LOG_FILTER": root / "etc/apache2/strongroom/logfilter.py",
            "STRONGROOM_MODSEC_AUDIT_LOG": root / "var/log/apache2/modsecurity/strongroom-audit.log",
        }
        top = root / "etc/apache2/test-top.conf"
        top.write_text(
            "".join(f"Define {k} {v}\n" for k, v in defines.items())
            + f"ServerName localhost\nInclude {root}/etc/apache2/apache2.conf\n"
        )
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "APACHE_RUN_USER": "www-data",
            "APACHE_RUN_GROUP": "www-data",
            "APACHE_PID_FILE": str(root / "run/apache2/apache2.pid"),
            "APACHE_RUN_DIR": str(root / "run/apache2"),
            "APACHE_LOCK_DIR": str(root / "run/lock/apache2"),
            "APACHE_LOG_DIR": str(root / "var/log/apache2"),
        }
        trace_log = base / "strace.log"
        argv = [strace, "-f", "-qq", "-y", "-o", str(trace_log), apache2, "-d", str(root / "etc/apache2")]
        err = (base / "apache.stderr").open("wb")
        proc = subprocess.Popen([*argv, "-f", str(top), "-DFOREGROUND"], env=env, stderr=err)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert proc.poll() is None, (base / "apache.stderr").read_text()
                    assert time.monotonic() < deadline, "Apache did not listen"
                    time.sleep(0.1)
            context = ssl.create_default_context(cafile=str(publish / "chain.pem"))
            context.load_cert_chain(client_cert, client_key)
            first = _get(context, port)
            # What the CA's reload hook does after a new CRL (apache2ctl graceful = apache2 -k
            # graceful): that process runs in the profile too, and the master re-reads the CRL.
            graceful = [strace, "-f", "-qq", "-y", "-o", str(base / "graceful.log"), apache2]
            graceful += ["-d", str(root / "etc/apache2"), "-f", str(top), "-k", "graceful"]
            subprocess.run(graceful, env=env, check=True, capture_output=True, timeout=30)
            time.sleep(1)
            second = _get(context, port)
        finally:
            # SIGTERM to Apache (strace's child), as systemd's stop would.
            for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                os.kill(int(child), signal.SIGTERM)
            proc.wait(timeout=30)
            err.close()
            backend.shutdown()
            backend.server_close()
        for answer in (first, second):
            assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        moves = [
            (f"{root}/", "/"),
            *PROC_MOVES,
        ]
        accesses = file_accesses(trace_log) | file_accesses(base / "graceful.log")
        yield translate(accesses, moves), port
    finally:
        shutil.rmtree(base, ignore_errors=True)


# Python's site module lists the site-packages directories (and reads any .pth file in them) when
# the piped logger starts. The profile refuses them on purpose, by an explicit deny (a .pth file is
# code the root logger would run); Python carries on without them, as the logs written show.
REFUSED_ON_PURPOSE = re.compile(r"/usr/lib/python3/dist-packages/.*|/usr/local/lib/python3[^/]*/.*")


def _as_the_kernel_names_it(path: str, perm: str) -> str:
    # The kernel checks an exec against the file it runs: /usr/bin/python3 is a symbolic link. Opens
    # are traced with the file descriptor's own path already (strace -y).
    return os.path.realpath(path) if perm == "x" else path


def test_apache_needs_nothing_the_profile_refuses(apache_trace: tuple[set[tuple[str, str]], int]) -> None:
    accesses, _ = apache_trace
    rules = compiled_file_rules(need_binary("apparmor_parser"), ROOT / "apparmor" / "strongroom-apache2")
    refused = []
    for path, perm in sorted(accesses):
        # Exec'd from outside (systemd, apache2ctl): the profile attaches at this very exec.
        if (path, perm) == ("/usr/sbin/apache2", "x"):
            continue
        decision = decide(rules, _as_the_kernel_names_it(path, perm))
        if REFUSED_ON_PURPOSE.fullmatch(path):
            assert decision.denied & mask_of(perm), f"{path} {perm}: refused, but not by an explicit deny"
        elif not decision.allows(perm):
            refused.append((path, perm))
    assert refused == [], "the profile would refuse:\n" + "\n".join(f"{p} {m}" for p, m in refused)


@pytest.mark.parametrize(
    ("path", "perm"),
    [
        ("/var/lib/strongroom-ca/publish/chain.pem", "r"),
        ("/var/lib/strongroom-ca/publish/crl.pem", "r"),
        ("/etc/apache2/strongroom/server.key.pem", "r"),
        ("/etc/apache2/strongroom/modsecurity-strongroom.conf", "r"),
        ("/run/strongroom-web/gunicorn.sock", "w"),
        # The piped loggers: python3 running the installed filter, appending to both logs.
        ("/usr/bin/python3", "x"),
        ("/etc/apache2/strongroom/logfilter.py", "r"),
        ("/var/log/apache2/error.log", "w"),
        ("/var/log/apache2/modsecurity/strongroom-audit.log", "w"),
    ],
)
def test_the_trace_saw_the_sensitive_accesses(
    apache_trace: tuple[set[tuple[str, str]], int], path: str, perm: str
) -> None:
    # Proof that the comparison above covered what matters (not an empty trace).
    accesses, _ = apache_trace
    assert (path, perm) in accesses
