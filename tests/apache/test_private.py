"""apache/private.py and the site file without the app: the rendered httpd.conf, `apache2 -t` on
the production vhost with its production paths overridden, the module list, the fail-closed CRS
canary, and the `python -m apache.private run` CLI that `make run` uses."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from apache.crs_redact import CRS_RULES, generate
from apache.private import SITE, PrivateApache, Settings, modules, render
from tests.apache.stack import traversable_dir
from tests.fixtures.pki import Issued, TestCA
from tests.support import component_missing, free_port, need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
# The contract with the deploy script and docs/apache.md: production defaults of the site file.
PRODUCTION_DEFAULTS = {
    "STRONGROOM_SERVER_NAME": "vault.example.internal",
    "STRONGROOM_LISTEN_ADDRESS": "*",  # IPv4 and IPv6; the firewall decides who reaches it
    "STRONGROOM_LISTEN_PORT": "443",
    "STRONGROOM_TLS_CERT": "/etc/apache2/strongroom/server.crt.pem",
    "STRONGROOM_TLS_KEY": "/etc/apache2/strongroom/server.key.pem",
    "STRONGROOM_CLIENT_CA": "/var/lib/strongroom-ca/publish/chain.pem",
    "STRONGROOM_CRL": "/var/lib/strongroom-ca/publish/crl.pem",
    "STRONGROOM_WEB_SOCKET": "/run/strongroom-web/gunicorn.sock",
    "STRONGROOM_LOG_DIR": "${APACHE_LOG_DIR}",
    "STRONGROOM_CONF_DIR": "/etc/apache2/strongroom",
    "STRONGROOM_MODSEC_DATA_DIR": "/var/cache/modsecurity",
    "STRONGROOM_MODSEC_TMP_DIR": "/var/cache/modsecurity/strongroom-tmp",
    "STRONGROOM_MODSEC_AUDIT_LOG": "${APACHE_LOG_DIR}/modsecurity/strongroom-audit.log",
    "STRONGROOM_PYTHON": "/usr/bin/python3",
    "STRONGROOM_LOG_FILTER": "/etc/apache2/strongroom/logfilter.py",
}


@dataclass
class Files:
    dir: Path
    ca: TestCA
    settings: Settings
    alice: tuple[Path, Path]
    alice_cert: Issued


@pytest.fixture
def files() -> Iterator[Files]:
    need_root()
    need_binary("apache2")
    with traversable_dir("apache-private-") as d:
        ca = TestCA("Private Apache Test CA")
        (d / "ca.pem").write_bytes(ca.pem)
        (d / "crl.pem").write_bytes(ca.crl_pem())
        cert, key = ca.issue("localhost", server=True).write(d, "server")
        alice_cert = ca.issue("alice")
        alice = alice_cert.write(d, "alice")
        settings = Settings(
            run_dir=d / "apache",
            port=free_port(),
            web_socket=d / "web" / "gunicorn.sock",
            tls_cert=cert,
            tls_key=key,
            client_ca=d / "ca.pem",
            crl=d / "crl.pem",
        )
        yield Files(d, ca, settings, alice, alice_cert)


def test_the_site_file_declares_the_documented_production_defaults() -> None:
    found = dict(
        re.findall(r"<IfDefine !(\w+)>\s*(?:#[^\n]*\n\s*)*Define \1 (\S+)\s*</IfDefine>", SITE.read_text())
    )
    assert found == PRODUCTION_DEFAULTS


def test_render_defines_every_site_variable(files: Files) -> None:
    conf = render(files.settings)
    defined = dict(re.findall(r"^Define (\w+) (\S+)$", conf, re.MULTILINE))
    assert set(defined) == set(PRODUCTION_DEFAULTS)
    assert not any(v.startswith(("/etc/", "/var/", "/run/")) for v in defined.values() if v != str(ROOT))
    assert "User www-data" in conf
    assert "Group www-data" in conf
    loaded = re.findall(r"^LoadModule (\w+)_module ", conf, re.MULTILINE)
    assert loaded == modules()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("server_name", "localhost\nInclude /etc/shadow"),
        ("server_name", "local host"),
        ("user", 'www-data"'),
        ("group", "${APACHE_RUN_GROUP}"),
        ("tls_cert", Path("/tmp/a b.pem")),
        ("crl", Path("/tmp/crl.pem>")),
        ("web_socket", Path("/tmp/x|http://evil/")),
        ("listen_address", "127.0.0.1 0.0.0.0"),
        ("port", 0),
        ("port", 70000),
    ],
)
def test_render_refuses_values_that_could_inject_directives(files: Files, field: str, value: object) -> None:
    changed: Any = {field: value}
    with pytest.raises(ValueError, match=r"plain path or name|out of range"):
        render(replace(files.settings, **changed))


def test_production_site_passes_apache2_t_with_its_paths_overridden(files: Files) -> None:
    apache = PrivateApache(files.settings)
    apache.prepare()
    apache.config_test()  # raises ApacheError with apache2's message


def test_only_the_listed_modules_are_loaded(files: Files) -> None:
    apache = PrivateApache(files.settings)
    apache.prepare()
    done = subprocess.run(
        ["apache2", "-d", str(files.settings.run_dir), "-f", str(files.settings.conf), "-M"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    loaded = set(re.findall(r"^ (\w+)_module \((?:shared|static)\)$", done.stdout, re.MULTILINE))
    compiled_in = {"core", "so", "watchdog", "http", "log_config", "logio", "version", "unixd"}
    assert loaded == compiled_in | set(modules())
    # What must never be there: listings, content negotiation (MultiViews), status pages, CGI, DAV.
    assert not loaded & {"autoindex", "negotiation", "status", "info", "cgi", "cgid", "userdir", "dav"}
    # ModSecurity fails open without mod_unique_id (measured: config test passes, SQL injection gets 200).
    assert {"security2", "unique_id", "ssl", "allowmethods", "headers"} <= loaded


def _get_status(port: int, ctx: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(b"GET /login HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n\r\n")
        head = s.recv(64).decode()
    return int(head.split()[1])


def _alice(files: Files) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files.dir / "ca.pem"))
    ctx.load_cert_chain(str(files.alice[0]), str(files.alice[1]))
    return ctx


def test_without_the_crs_every_request_is_refused(files: Files) -> None:
    # A lost CRS include must not leave ModSecurity on with no rules: the vhost's canary denies.
    with PrivateApache(replace(files.settings, crs_load=None)) as apache:
        assert _get_status(apache.settings.port, _alice(files)) == 503
        time.sleep(0.2)
        assert "OWASP CRS is not loaded" in apache.settings.error_log.read_text()


def test_with_the_crs_a_request_reaches_the_proxy(files: Files) -> None:
    # No gunicorn behind it: the proxy's 503, after ModSecurity let the request through.
    with PrivateApache(files.settings) as apache:
        assert _get_status(apache.settings.port, _alice(files)) == 503
        time.sleep(0.2)
        log = apache.settings.error_log.read_text()
        assert "OWASP CRS is not loaded" not in log
        assert "AH01114" in log or "AH02454" in log  # the proxy could not reach the socket


def test_the_cli_runs_reloads_and_stops(files: Files) -> None:
    s = files.settings
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "apache.private",
            "run",
            "--port",
            str(s.port),
            "--run-dir",
            str(s.run_dir),
            "--web-socket",
            str(s.web_socket),
            "--tls-cert",
            str(s.tls_cert),
            "--tls-key",
            str(s.tls_key),
            "--client-ca",
            str(s.client_ca),
            "--crl",
            str(s.crl),
            "--user",
            "www-data",
            "--group",
            "www-data",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"apache listening on https://127.0.0.1:{s.port}")
        assert _get_status(s.port, _alice(files)) == 503
        # A revocation, then SIGHUP (what a reload hook can send the launcher): alice is refused.
        files.ca.revoke(files.alice_cert)
        s.crl.write_bytes(files.ca.crl_pem())
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        refused = False
        while time.monotonic() < deadline and not refused:
            try:
                _get_status(s.port, _alice(files))
                time.sleep(0.1)
            except (ssl.SSLError, ConnectionError, OSError):
                refused = True
        assert refused
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", s.port), timeout=1).close()
        assert not s.pid_file.exists() or not _alive(int(s.pid_file.read_text()))
    finally:
        if proc.poll() is None:
            proc.kill()  # Apache follows it (PR_SET_PDEATHSIG in apache/private.py)
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_a_killed_launcher_takes_apache_down(files: Files) -> None:
    s = files.settings
    proc = subprocess.Popen(
        [sys.executable, "-m", "apache.private", "run", "--port", str(s.port), "--run-dir", str(s.run_dir),
         "--web-socket", str(s.web_socket), "--tls-cert", str(s.tls_cert), "--tls-key", str(s.tls_key),
         "--client-ca", str(s.client_ca), "--crl", str(s.crl)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("apache listening")
        _wait(lambda: s.pid_file.exists() and s.pid_file.read_text().strip() != "", "the pid file")
        apache_pid = int(s.pid_file.read_text())
        assert _alive(apache_pid)
    finally:
        proc.kill()  # no chance to stop Apache itself
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
    _wait(lambda: not _alive(apache_pid), "Apache to follow its launcher")


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_committed_crs_redaction_matches_the_installed_crs() -> None:
    # A CRS upgrade with new value-logging rules must not silently log values again.
    if not CRS_RULES.is_dir():
        component_missing("modsecurity-crs is not installed")
    committed = (ROOT / "apache" / "modsecurity-crs-redact.conf").read_text()
    assert committed == generate(), "run: python -m apache.crs_redact > apache/modsecurity-crs-redact.conf"
    assert committed.count("SecRuleUpdateActionById") > 200
