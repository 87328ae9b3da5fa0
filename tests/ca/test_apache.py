"""The published chain and CRL in a real Apache (mod_ssl), wired as docs/ca.md says.

A private, self-contained Apache instance: an issued employee certificate gets a 200; after
`revoke` (whose reload hook sends Apache SIGUSR1, a graceful reload) the same certificate is
refused; an expired CRL locks everyone out under `SSLCARevocationCheck chain`, and `crl --if-due`
with the hook restores access. This is mod_ssl's fail-closed behaviour (docs/ca.md).
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.ca.conftest import CA
from tests.fixtures.pki import unpack_bundle
from tests.support import free_port, need_binary

MODULES = Path("/usr/lib/apache2/modules")


def _conf(ca: CA, run: Path, port: int) -> str:
    mods = ["mpm_event", "authz_core", "socache_shmcb", "ssl"]
    loads = "\n".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so" for m in mods)
    return f"""
ServerRoot {run}
ServerName localhost
Listen 127.0.0.1:{port}
PidFile {run}/apache.pid
DefaultRuntimeDir {run}
Mutex file:{run} default
ErrorLog {run}/error.log
LogLevel warn ssl:info
{loads}
SSLSessionCache shmcb:{run}/scache(512000)
DocumentRoot {run}/htdocs
<Directory {run}/htdocs>
    Require all granted
</Directory>
<VirtualHost 127.0.0.1:{port}>
    SSLEngine on
    SSLCertificateFile {ca.work}/localhost.crt.pem
    SSLCertificateKeyFile {ca.work}/localhost.key.pem
    SSLVerifyClient require
    SSLVerifyDepth 2
    SSLCACertificateFile {ca.dir}/publish/chain.pem
    SSLCARevocationFile {ca.dir}/publish/crl.pem
    SSLCARevocationCheck chain
</VirtualHost>
"""


class Apache:
    def __init__(self, ca: CA, run: Path) -> None:
        self.run, self.port = run, free_port()
        (run / "htdocs").mkdir(parents=True)
        (run / "htdocs" / "index.html").write_text("vault\n")
        (run / "httpd.conf").write_text(_conf(ca, run, self.port))
        binary = need_binary("apache2")
        check = subprocess.run([binary, "-d", str(run), "-f", str(run / "httpd.conf"), "-t"],
                               capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(
            [binary, "-d", str(run), "-f", str(run / "httpd.conf"), "-DFOREGROUND"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, (self.run / "error.log").read_text()
            time.sleep(0.05)
        raise AssertionError("apache did not start")

    def reload_command(self) -> list[str]:
        # What the demo configures: a graceful reload (SIGUSR1) through the pid file.
        return ["sh", "-c", f"kill -USR1 $(cat {self.run}/apache.pid)"]

    def wait_reloaded(self, generation_before: int) -> None:
        """A graceful reload logs 'resuming normal operations' again; wait for that line."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._generations() > generation_before:
                self._wait_listening()
                return
            time.sleep(0.05)
        raise AssertionError("apache did not reload: " + (self.run / "error.log").read_text())

    def _generations(self) -> int:
        return (self.run / "error.log").read_text().count("resuming normal operations")

    def get(self, client: tuple[Path, Path], ca: CA) -> int | str:
        """GET /index.html with the client certificate: the HTTP status, or the TLS error Apache caused."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=ca.dir / "publish" / "chain.pem")
        ctx.load_cert_chain(*client)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                head = tls.recv(64)  # TLS 1.3: a refused client certificate shows up here
        except (ssl.SSLError, OSError) as e:
            return f"refused: {e}"
        if not head:
            return "refused: connection closed"
        return int(head.split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def apache_for(tmp_path: Path) -> Iterator[Callable[[CA], Apache]]:
    started: list[Apache] = []

    def start(ca: CA) -> Apache:
        apache = Apache(ca, tmp_path / "apache")
        started.append(apache)
        return apache

    yield start
    for apache in started:
        apache.stop()


def _hook(ca: CA, apache: Apache) -> None:
    """Point the CA's reload hook at this Apache (the config is read on each run)."""
    text = (ca.dir / "config.toml").read_text()
    hook = ", ".join(f'"{a}"' for a in apache.reload_command())
    (ca.dir / "config.toml").write_text(text.replace("reload_command = []", f"reload_command = [{hook}]"))


def test_revocation_takes_effect_in_apache_at_once(
    make_ca: Callable[..., CA], apache_for: Callable[[CA], Apache], tmp_path: Path
) -> None:
    ca = make_ca()
    ca.ok("server", "localhost", "127.0.0.1", "--out-dir", str(ca.work))
    alice = unpack_bundle(*ca.issue("alice")[:2], tmp_path)
    bob = unpack_bundle(*ca.issue("bob")[:2], tmp_path)
    apache = apache_for(ca)
    _hook(ca, apache)
    assert apache.get(alice, ca) == 200
    assert apache.get(bob, ca) == 200

    generation = apache._generations()
    ca.ok("revoke", "alice", "--reason", "affiliationChanged")  # runs the hook: SIGUSR1
    apache.wait_reloaded(generation)

    assert str(apache.get(alice, ca)).startswith("refused")
    assert apache.get(bob, ca) == 200
    assert "certificate revoked" in (apache.run / "error.log").read_text()


def test_an_expired_crl_locks_everyone_out_and_the_timer_restores_access(
    make_ca: Callable[..., CA], apache_for: Callable[[CA], Apache], tmp_path: Path
) -> None:
    ca = make_ca()
    # Everything so far was made "10 days ago": the issuing CRL (7 days) has expired by now.
    ca.clock.now -= timedelta(days=10)
    ca.ok("crl")
    ca.ok("server", "localhost", "--out-dir", str(ca.work))
    alice = unpack_bundle(*ca.issue("alice")[:2], tmp_path)
    apache = apache_for(ca)
    _hook(ca, apache)
    assert str(apache.get(alice, ca)).startswith("refused")  # fail closed
    assert "CRL has expired" in (apache.run / "error.log").read_text()

    ca.clock.now += timedelta(days=10)
    generation = apache._generations()
    ca.ok("crl", "--if-due")  # what the timer runs: due, re-signed, hook reloads Apache
    apache.wait_reloaded(generation)
    assert apache.get(alice, ca) == 200
