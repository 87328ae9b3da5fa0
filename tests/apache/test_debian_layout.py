"""The install recipe of docs/apache.md on a copy of this host's /etc/apache2: Debian's own
apache2.conf, `a2enmod` of exactly apache/modules.txt (so Debian's security2.conf loads the CRS
and ssl.conf sets the session cache), no default sites, an empty ports.conf, our site. Only the
paths differ (a conf-enabled file Defines them first, as the site allows). The config passes
`apache2 -t`, loads only our modules, and a started instance blocks an SQL injection while a
clean request reaches the (absent) backend."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from apache.private import HERE, modules
from tests.apache.stack import traversable_dir
from tests.fixtures.pki import TestCA
from tests.support import component_missing, free_port, need_binary, need_root

ETC = Path("/etc/apache2")


@dataclass
class Host:
    confdir: Path
    env: dict[str, str]
    port: int
    ca_file: Path
    alice: tuple[Path, Path]
    log_dir: Path

    def apache2(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["apache2", "-d", str(self.confdir), "-f", str(self.confdir / "apache2.conf"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )


@pytest.fixture
def host() -> Iterator[Host]:
    need_root()
    need_binary("apache2")
    if not (ETC / "apache2.conf").exists() or not (ETC / "mods-available" / "security2.load").exists():
        component_missing("Debian's /etc/apache2 with libapache2-mod-security2 is not installed")
    with traversable_dir("apache-debian-") as d:
        conf = d / "etc-apache2"
        shutil.copytree(ETC, conf, symlinks=True)
        # a2enmod of exactly modules.txt; a2dissite 000-default default-ssl; no port 80.
        for enabled in (conf / "mods-enabled").iterdir():
            enabled.unlink()
        for name in modules():
            for ext in ("load", "conf"):
                src = conf / "mods-available" / f"{name}.{ext}"
                if src.exists():
                    (conf / "mods-enabled" / f"{name}.{ext}").symlink_to(f"../mods-available/{name}.{ext}")
        for site in (conf / "sites-enabled").iterdir():
            site.unlink()
        (conf / "conf-enabled" / "other-vhosts-access-log.conf").unlink(missing_ok=True)
        (conf / "ports.conf").write_text("")
        shutil.copy(HERE / "strongroom-site.conf", conf / "sites-available" / "strongroom.conf")
        (conf / "sites-enabled" / "strongroom.conf").symlink_to("../sites-available/strongroom.conf")
        # The host's own files at test paths.
        ca = TestCA("Debian Layout Test CA")
        (d / "ca.pem").write_bytes(ca.pem)
        (d / "crl.pem").write_bytes(ca.crl_pem())
        cert, key = ca.issue("localhost", server=True).write(d, "server")
        alice = ca.issue("alice").write(d, "alice")
        logs, run, tmp = d / "log", d / "run", d / "modsec-tmp"
        for path in (logs, run, tmp):
            path.mkdir()
        os.chown(tmp, int(_id("-u")), int(_id("-g")))
        port = free_port()
        defines = {
            "STRONGROOM_LISTEN_ADDRESS": "127.0.0.1",
            "STRONGROOM_LISTEN_PORT": str(port),
            "STRONGROOM_TLS_CERT": str(cert),
            "STRONGROOM_TLS_KEY": str(key),
            "STRONGROOM_CLIENT_CA": str(d / "ca.pem"),
            "STRONGROOM_CRL": str(d / "crl.pem"),
            "STRONGROOM_WEB_SOCKET": str(d / "web" / "gunicorn.sock"),
            "STRONGROOM_CONF_DIR": str(HERE),
            "STRONGROOM_MODSEC_TMP_DIR": str(tmp),
            # The recipe installs it into /etc/apache2/strongroom/ with the other files.
            "STRONGROOM_LOG_FILTER": str(HERE / "logfilter.py"),
        }
        (conf / "conf-enabled" / "strongroom-test-paths.conf").write_text(
            "".join(f"Define {k} {v}\n" for k, v in defines.items())
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C",
            "APACHE_RUN_USER": "www-data",
            "APACHE_RUN_GROUP": "www-data",
            "APACHE_PID_FILE": str(run / "apache2.pid"),
            "APACHE_RUN_DIR": str(run),
            "APACHE_LOCK_DIR": str(run),
            "APACHE_LOG_DIR": str(logs),
        }
        yield Host(conf, env, port, d / "ca.pem", alice, logs)


def _id(flag: str) -> str:
    return subprocess.run(["id", flag, "www-data"], capture_output=True, text=True, check=True).stdout.strip()


def _status(host: Host, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(host.ca_file))
    ctx.load_cert_chain(str(host.alice[0]), str(host.alice[1]))
    with (
        socket.create_connection(("127.0.0.1", host.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as s,
    ):
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: vault.example.internal\r\nUser-Agent: test\r\n"
            "Accept: text/html\r\nConnection: close\r\n\r\n".encode()
        )
        return int(s.recv(64).decode().split()[1])


def test_the_install_recipe_passes_apache2_t_and_loads_only_our_modules(host: Host) -> None:
    checked = host.apache2("-t")
    assert checked.returncode == 0, checked.stderr
    listed = host.apache2("-M")
    assert listed.returncode == 0, listed.stderr
    loaded = set(re.findall(r"^ (\w+)_module \((?:shared|static)\)$", listed.stdout, re.MULTILINE))
    compiled_in = {"core", "so", "watchdog", "http", "log_config", "logio", "version", "unixd"}
    assert loaded == compiled_in | set(modules())


def test_the_installed_site_blocks_attacks_and_proxies_the_rest(host: Host) -> None:
    proc = subprocess.Popen(
        ["apache2", "-d", str(host.confdir), "-f", str(host.confdir / "apache2.conf"), "-DFOREGROUND"],
        env=host.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, (host.log_dir / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", host.port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert _status(host, "/login?q=1%27%20OR%20%271%27%3D%271") == 403  # CRS loaded by Debian's conf
        assert _status(host, "/login") == 503  # ModSecurity let it through; no gunicorn here
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert (host.log_dir / "strongroom-review.log").read_text().count("\talice\t") == 2
