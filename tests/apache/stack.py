"""The whole production path on one machine: a private Apache running the shipped vhost in front of
the real web app under gunicorn (proxy mode, on a Unix socket only Apache's group can reach), with
a real keyd unsealed through its drop file, a throwaway CA and a SQLite database.

    with running_stack(tmp_dir) as stack:
        stack.add_user("alice", "clerk", PASSWORD)      # issues alice's certificate and binds it
        stack.add_service("crm")                         # a service account bound to a service certificate
        cert, key = stack.client("alice")
        ctx = stack.ssl_context("alice")                 # or None for no client certificate
        ...
        stack.revoke("alice")                            # new CRL + graceful reload of Apache

Must run as root (Apache's children switch to www-data). `tmp_dir` must be traversable by
www-data: `traversable_dir()` makes one.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

from apache.private import PrivateApache, Settings
from tests.fixtures.pki import Issued, TestCA
from tests.keyd.conftest import Keyd, unsealed_keyd
from tests.support import component_missing, free_port, need_binary, need_root
from webapp import create_app
from webapp.db import migrate

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
SECRET = "apache-stack-secret-" + "s" * 40
# Cheap password hashing: the stack is about the front door, not argon2's cost.
CHEAP_ARGON2 = {"ARGON2_TIME_COST": 1, "ARGON2_MEMORY_COST": 8, "ARGON2_PARALLELISM": 1}
WEB_GROUP = "www-data"


@contextlib.contextmanager
def traversable_dir(prefix: str = "apache-stack-") -> Iterator[Path]:
    """A fresh tmp dir that www-data can traverse (pytest's tmp dirs are 0700: Apache's children
    could not reach gunicorn's socket inside one)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(path, 0o711)  # noqa: S103 - traversable, not listable
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Stack:
    """A running stack. Certificates are issued per name; `add_user` also binds them."""

    dir: Path
    port: int
    ca: TestCA
    ca_file: Path
    crl_file: Path
    apache: PrivateApache
    db_url: str
    app_env: dict[str, str]
    issued: dict[str, Issued] = field(default_factory=dict)

    @property
    def apache_log_dir(self) -> Path:
        return self.apache.settings.log_dir

    @property
    def apache_error_log(self) -> Path:
        """The vhost's error log (405s, ModSecurity denials): the one the watchdog reads."""
        return self.apache.settings.error_log

    @property
    def review_log(self) -> Path:
        return self.apache.settings.review_log

    @property
    def modsec_audit_log(self) -> Path:
        return self.apache.settings.modsec_audit_log

    @property
    def gunicorn_log(self) -> Path:
        return self.dir / "gunicorn.log"

    @property
    def certs_dir(self) -> Path:
        return self.dir / "certs"

    def client(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) PEM files of `name`'s employee certificate, issued on first use."""
        if name not in self.issued:
            self.issued[name] = self.ca.issue(name)
            self.issued[name].write(self.certs_dir, name)
        return self.certs_dir / f"{name}.pem", self.certs_dir / f"{name}.key"

    def service_client(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) PEM files of `name`'s SERVICE certificate (ca/pki.py's service profile:
        OU=Services and the service policy, as `python -m ca service NAME` issues it), issued on first
        use; `ssl_context`, `connection`, `revoke` then take `name` as for an employee's."""
        if name not in self.issued:
            self.issued[name] = self.ca.issue_service(name)
            self.issued[name].write(self.certs_dir, name)
        return self.certs_dir / f"{name}.pem", self.certs_dir / f"{name}.key"

    def add_service(self, name: str, role: str = "crm") -> tuple[Path, Path]:
        """Create a service account (the CRM) bound to `name`'s service certificate, as an admin
        would (`flask services add NAME --role ROLE --cert FILE`)."""
        cert, key = self.service_client(name)
        self.admin_cli("services", "add", name, "--role", role, "--cert", str(cert))
        return cert, key

    def admin_cli(self, *args: str, stdin: str | None = None) -> str:
        """Run an admin command (`flask ARGS...`) on the stack's database; its output."""
        app = self.admin_app()
        try:
            done = app.test_cli_runner().invoke(args=list(args), input=stdin)
        finally:
            app.extensions["strongroom"].engine.dispose()
        if done.exit_code:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.output}")
        return str(done.output)

    def cert_pem(self, name: str) -> bytes:
        self.client(name)
        return self.issued[name].pem

    def admin_app(self) -> Any:
        """An in-process app on the same database, for admin commands (users, certificate bindings)."""
        return create_app({k.removeprefix("STRONGROOM_"): _typed(v) for k, v in self.app_env.items()})

    def add_user(self, username: str, role: str, password: str) -> tuple[Path, Path]:
        """Create a web app user and bind `username`'s certificate to it, as an admin would."""
        cert, key = self.client(username)
        app = self.admin_app()
        runner = app.test_cli_runner()
        added = runner.invoke(
            args=["users", "add", username, "--role", role, "--password-stdin"], input=password + "\n"
        )
        bound = runner.invoke(args=["certs", "bind", username, str(cert)])
        app.extensions["strongroom"].engine.dispose()
        if added.exit_code or bound.exit_code:
            raise RuntimeError(f"could not add {username}: {added.output} {bound.output}")
        return cert, key

    def revoke(self, name: str, timeout: float = 10.0) -> None:
        """Revoke `name`'s certificate in a new CRL and reload Apache gracefully, as ca/'s hook does;
        returns once Apache refuses the certificate."""
        self.client(name)
        self.ca.revoke(self.issued[name])
        self.crl_file.write_bytes(self.ca.crl_pem())
        self.apache.reload()
        deadline = time.monotonic() + timeout
        while self.handshake_ok(name):
            if time.monotonic() > deadline:
                raise AssertionError(f"Apache still accepts {name}'s revoked certificate")
            time.sleep(0.1)

    def ssl_context(self, name: str | None) -> ssl.SSLContext:
        """A client context trusting the stack's CA, presenting `name`'s certificate (None: none)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if name is not None:
            cert, key = self.client(name)
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    def connection(self, name: str | None, timeout: float = 10.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ssl_context(name), timeout=timeout
        )

    def handshake_ok(self, name: str | None) -> bool:
        """True when a request with `name`'s certificate gets any HTTP answer (TLS 1.3 reports a
        refused client certificate only at the first read)."""
        conn = self.connection(name, timeout=5)
        try:
            conn.request("HEAD", "/login")
            conn.getresponse().read()
        except (ssl.SSLError, ConnectionError, OSError):
            return False
        finally:
            conn.close()
        return True

    def apache_children(self) -> list[int]:
        """Pids of the Apache parent's children (the processes that serve requests)."""
        return [p.pid for p in psutil.Process(self.apache.pid).children()]


def production_settings(
    *, db_url: str, instance: Path, keyd_socket: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The web app's STRONGROOM_* settings behind Apache, as production runs it, with cheap password
    hashing and every hour a working hour; `extra` added last (it wins)."""
    return {
        "STRONGROOM_MODE": "production",
        "STRONGROOM_SECRET_KEY": SECRET,
        "STRONGROOM_DATABASE_URL": db_url,
        "STRONGROOM_INSTANCE_PATH": str(instance),
        "STRONGROOM_KEYD_SOCKET": str(keyd_socket),
        "STRONGROOM_BEHIND_PROXY": "true",
        "STRONGROOM_WORKING_DAYS": "mon-sun",
        "STRONGROOM_WORKING_HOURS": "00:00-23:59",
        **{f"STRONGROOM_{k}": str(v) for k, v in CHEAP_ARGON2.items()},
        **(extra or {}),
    }


def log_in(conn: http.client.HTTPConnection, username: str, password: str) -> str:
    """The login form over `conn`, as a browser fills it: GET it for the CSRF token and its cookie,
    POST it (302 expected); the session cookie ("name=value")."""
    conn.request("GET", "/login")
    resp = conn.getresponse()
    page = resp.read().decode()
    cookie = (resp.getheader("Set-Cookie") or "").split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token, f"no CSRF token on /login ({resp.status})"
    form = {"csrf_token": token.group(1), "username": username, "password": password}
    headers = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    conn.request("POST", "/login", body=urlencode(form), headers=headers)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 302, f"login answered {resp.status}"
    return (resp.getheader("Set-Cookie") or "").split(";")[0]


def _typed(value: str) -> object:
    if value in ("true", "false"):
        return value == "true"
    return int(value) if value.isdigit() else value


def _web_socket_dir(path: Path) -> None:
    """root:www-data 0710: gunicorn creates its socket 0777, so the directory is the only gate, and
    only Apache's group may pass it (docs/apache.md)."""
    path.mkdir(mode=0o710)
    os.chown(path, 0, _gid(WEB_GROUP))
    os.chmod(path, 0o710)  # noqa: S103 - group traverse only, for Apache's group


def _gid(group: str) -> int:
    return grp.getgrnam(group).gr_gid


def _wait_for_socket(proc: subprocess.Popen[bytes], path: Path, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError("gunicorn exited: " + log.read_text(errors="replace"))
        if path.exists():
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(path))
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError("gunicorn did not listen: " + log.read_text(errors="replace"))
        time.sleep(0.05)


@contextlib.contextmanager
def _killed_on_error(keyd: Keyd) -> Iterator[None]:
    # unsealed_keyd() stops keyd only when its body ends normally; a failed start must not leave
    # a daemon holding a key behind.
    try:
        yield
    except BaseException:
        if keyd.proc is not None:
            keyd.kill()
        raise


@contextlib.contextmanager
def running_stack(
    tmp_dir: Path,
    *,
    workers: int = 2,
    extra_env: dict[str, str] | None = None,
    proxy_protocol: bool = False,
) -> Iterator[Stack]:
    """Start keyd (unsealed), gunicorn (proxy mode, Unix socket) and Apache; stop all on exit.

    `tmp_dir` must be traversable by www-data (see `traversable_dir`). `proxy_protocol`: Apache as a
    web node behind the balancer (every connection opens with a PROXY header; `stack.connection`
    does not write one, tests/apache/test_proxy_protocol.py does)."""
    need_root()
    apache2 = need_binary("apache2")
    if not GUNICORN.exists():
        component_missing("gunicorn is not installed in .venv")
    for required in (
        "/usr/lib/apache2/modules/mod_security2.so",
        "/usr/share/modsecurity-crs/owasp-crs.load",
    ):
        if not Path(required).exists():
            component_missing(f"{required} is missing (libapache2-mod-security2, modsecurity-crs)")
    tmp_dir.mkdir(parents=True, exist_ok=True)
    (tmp_dir / "certs").mkdir()
    ca = TestCA("Strongroom Apache Test CA")
    ca_file, crl_file = tmp_dir / "certs" / "ca.pem", tmp_dir / "certs" / "crl.pem"
    ca_file.write_bytes(ca.pem)
    crl_file.write_bytes(ca.crl_pem())
    server_cert, server_key = ca.issue("localhost", server=True).write(tmp_dir / "certs", "server")
    web_dir = tmp_dir / "web"
    _web_socket_dir(web_dir)
    web_socket = web_dir / "gunicorn.sock"
    db_url = f"sqlite:///{tmp_dir / 'strongroom.db'}"

    with unsealed_keyd() as keyd, _killed_on_error(keyd.keyd):
        app_env = production_settings(
            db_url=db_url, instance=tmp_dir / "instance", keyd_socket=keyd.keyd.socket, extra=extra_env
        )
        app = create_app({k.removeprefix("STRONGROOM_"): _typed(v) for k, v in app_env.items()})
        migrate.upgrade(app.extensions["strongroom"].engine)
        app.extensions["strongroom"].engine.dispose()

        env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | app_env
        env |= {"STRONGROOM_BIND": f"unix:{web_socket}", "STRONGROOM_WORKERS": str(workers)}
        gunicorn_log = tmp_dir / "gunicorn.log"
        with gunicorn_log.open("ab") as log:
            # webapp/gunicorn_conf.py, as production runs it: a unix: bind is its proxy mode (no TLS,
            # no trusted forwarding headers, underscore headers dropped, no access log).
            gunicorn = subprocess.Popen(
                [str(GUNICORN), "-c", str(ROOT / "webapp" / "gunicorn_conf.py")],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_socket(gunicorn, web_socket, gunicorn_log)
            settings = Settings(
                run_dir=tmp_dir / "apache",
                port=free_port(),
                web_socket=web_socket,
                tls_cert=server_cert,
                tls_key=server_key,
                client_ca=ca_file,
                crl=crl_file,
                proxy_protocol=proxy_protocol,
            )
            with PrivateApache(settings, binary=apache2) as apache:
                yield Stack(
                    dir=tmp_dir,
                    port=settings.port,
                    ca=ca,
                    ca_file=ca_file,
                    crl_file=crl_file,
                    apache=apache,
                    db_url=db_url,
                    app_env=app_env,
                )
        finally:
            gunicorn.terminate()
            try:
                gunicorn.wait(timeout=20)
            except subprocess.TimeoutExpired:
                gunicorn.kill()
                gunicorn.wait()
