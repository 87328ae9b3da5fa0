"""A private Apache instance running the production vhost unchanged (tests, `make run`).

The shipped `strongroom-site.conf` is included as-is; only the top-level httpd.conf differs from a
Debian host: every path Apache writes (pid, mutex, shared memory, logs, ModSecurity's dirs) lives
in one run dir, and the site's variables are Defined first, so its production defaults never apply.
That way the tests exercise the very text that production runs.

    python -m apache.private run --port 8443 --run-dir DIR --web-socket SOCK \
        --tls-cert CRT --tls-key KEY --client-ca CHAIN --crl CRL [--user www-data --group www-data] \
        [--proxy-protocol]

runs in the foreground until SIGTERM or SIGINT; SIGHUP/SIGUSR1 reload gracefully (a new CRL).
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

import click

HERE = Path(__file__).resolve().parent
SITE = HERE / "strongroom-site.conf"
LOG_FILTER = HERE / "logfilter.py"
MODULES_FILE = HERE / "modules.txt"
MODULE_DIR = Path("/usr/lib/apache2/modules")
# The CRS as Debian loads it server-wide (mods-available/security2.conf); the vhost adds the rest.
CRS_LOAD = Path("/usr/share/modsecurity-crs/owasp-crs.load")
# The site's switch (a Define without value) for a web node behind the balancer: PROXY protocol.
BEHIND_BALANCER = "STRONGROOM_BEHIND_BALANCER"
# Values end up unquoted in Apache directives: anything outside this set could inject directives.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._/+:@-]{1,255}$")


class ApacheError(RuntimeError):
    """The private Apache refused its configuration, did not start, or died."""


def modules() -> list[str]:
    """The module names of modules.txt (as `a2enmod` takes them)."""
    names = [ln.strip() for ln in MODULES_FILE.read_text().splitlines()]
    return [n for n in names if n and not n.startswith("#")]


@dataclass(frozen=True)
class Settings:
    """What differs between a private instance and production."""

    run_dir: Path
    port: int
    web_socket: Path
    tls_cert: Path
    tls_key: Path
    client_ca: Path
    crl: Path
    server_name: str = "localhost"
    listen_address: str = "127.0.0.1"
    user: str = "www-data"
    group: str = "www-data"
    # None only in the test proving that the vhost fails closed without the CRS.
    crs_load: Path | None = CRS_LOAD
    # Runs apache/logfilter.py (standard library only): this interpreter, as on a host /usr/bin/python3.
    python: str = sys.executable
    # A web node behind the TCP-passthrough balancer: every connection must open with a PROXY
    # protocol header naming the employee (the site's STRONGROOM_BEHIND_BALANCER, docs/apache.md).
    proxy_protocol: bool = False

    @property
    def conf(self) -> Path:
        return self.run_dir / "httpd.conf"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "apache2.pid"

    @property
    def error_log(self) -> Path:
        """The vhost's error log: 405s (AH01623), ModSecurity denials; what the watchdog reads."""
        return self.log_dir / "strongroom-error.log"

    @property
    def server_error_log(self) -> Path:
        return self.log_dir / "error.log"

    @property
    def review_log(self) -> Path:
        return self.log_dir / "strongroom-review.log"

    @property
    def access_log(self) -> Path:
        return self.log_dir / "strongroom-access.log"

    @property
    def modsec_audit_log(self) -> Path:
        return self.log_dir / "modsecurity" / "strongroom-audit.log"

    @property
    def modsec_data_dir(self) -> Path:
        return self.run_dir / "modsec" / "data"

    @property
    def modsec_tmp_dir(self) -> Path:
        return self.run_dir / "modsec" / "tmp"

    def defines(self) -> dict[str, str]:
        """The site's variables (strongroom-site.conf), all of them, so no production path is used."""
        return {
            "STRONGROOM_SERVER_NAME": self.server_name,
            "STRONGROOM_LISTEN_ADDRESS": self.listen_address,
            "STRONGROOM_LISTEN_PORT": str(self.port),
            "STRONGROOM_TLS_CERT": str(self.tls_cert),
            "STRONGROOM_TLS_KEY": str(self.tls_key),
            "STRONGROOM_CLIENT_CA": str(self.client_ca),
            "STRONGROOM_CRL": str(self.crl),
            "STRONGROOM_WEB_SOCKET": str(self.web_socket),
            "STRONGROOM_LOG_DIR": str(self.log_dir),
            "STRONGROOM_CONF_DIR": str(HERE),
            "STRONGROOM_MODSEC_DATA_DIR": str(self.modsec_data_dir),
            "STRONGROOM_MODSEC_TMP_DIR": str(self.modsec_tmp_dir),
            "STRONGROOM_MODSEC_AUDIT_LOG": str(self.modsec_audit_log),
            "STRONGROOM_PYTHON": self.python,
            "STRONGROOM_LOG_FILTER": str(LOG_FILTER),
        }


def render(s: Settings, *, site: Path = SITE) -> str:
    """The top-level httpd.conf of a private instance; raises ValueError on unsafe values."""
    values = {
        **s.defines(),
        "run_dir": str(s.run_dir),
        "user": s.user,
        "group": s.group,
        "site": str(site),
        "crs_load": str(s.crs_load or "none"),
    }
    for name, value in values.items():
        if not _SAFE_VALUE.match(value):
            raise ValueError(f"{name}: {value!r} is not a plain path or name")
    if not 0 < s.port < 65536:
        raise ValueError(f"port {s.port} is out of range")
    loads = "\n".join(f"LoadModule {m}_module {MODULE_DIR}/mod_{m}.so" for m in modules())
    defines = "\n".join(f"Define {k} {v}" for k, v in s.defines().items())
    if s.proxy_protocol:
        defines += f"\nDefine {BEHIND_BALANCER}"
    return f"""# Generated by apache/private.py: a private instance of the Strongroom vhost.
ServerRoot {s.run_dir}
ServerName {s.server_name}
DefaultRuntimeDir {s.state_dir}
PidFile {s.pid_file}
Mutex file:{s.state_dir} default
ErrorLog {s.server_error_log}
LogLevel warn
{loads}
# Without User/Group the children would keep serving as root (measured; tests/apache checks their uid).
User {s.user}
Group {s.group}
# The event MPM's sizing and every timeout come from the site file, as in production.
# As Debian's mime.conf: mod_mime (which Debian's ssl.conf needs) refuses to start without it.
TypesConfig /etc/mime.types
SSLSessionCache shmcb:{s.state_dir}/ssl_scache(512000)
SSLSessionCacheTimeout 300
{defines}
{f"Include {s.crs_load}" if s.crs_load else "# OWASP CRS deliberately not loaded"}
Include {site}
"""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when whoever started Apache dies (a killed launcher or
    test run must not leave a root Apache listening)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class PrivateApache:
    """A running private instance: `with PrivateApache(settings) as apache: ...` (stops on exit)."""

    def __init__(self, settings: Settings, *, binary: str = "/usr/sbin/apache2") -> None:
        self.settings = settings
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        """Write httpd.conf and the dirs Apache writes to (ModSecurity's as the children's user)."""
        s = self.settings
        for d in (s.run_dir, s.state_dir, s.log_dir, s.modsec_data_dir.parent):
            d.mkdir(parents=True, exist_ok=True)
        uid = pwd.getpwnam(s.user).pw_uid if os.geteuid() == 0 else -1
        gid = grp.getgrnam(s.group).gr_gid if os.geteuid() == 0 else -1
        for d in (s.modsec_data_dir, s.modsec_tmp_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            os.chown(d, uid, gid)
        s.conf.write_text(render(s))

    def config_test(self) -> None:
        """`apache2 -t`: refuse a configuration before it is started."""
        done = subprocess.run(
            [self.binary, "-d", str(self.settings.run_dir), "-f", str(self.settings.conf), "-t"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise ApacheError(f"apache2 -t failed: {done.stderr.strip()}")

    def start(self, timeout: float = 15.0) -> None:
        """Prepare, test and start in the foreground (as a child of this process); wait until it listens."""
        if self.proc is not None:
            raise ApacheError("already started")
        self.prepare()
        self.config_test()
        s = self.settings
        self._log = (s.run_dir / "apache2.out").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "-d", str(s.run_dir), "-f", str(s.conf), "-DFOREGROUND"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # only a prctl: safe between fork and exec
        )
        deadline = time.monotonic() + timeout
        while not self._listens():
            if self.proc.poll() is not None:
                rc = self.proc.returncode
                self.proc = None
                self._log.close()
                raise ApacheError(f"apache2 exited with {rc}; see {s.server_error_log}")
            if time.monotonic() > deadline:
                self.stop()
                raise ApacheError("apache2 did not start listening")
            time.sleep(0.05)

    def _listens(self) -> bool:
        try:
            socket.create_connection((self.settings.listen_address, self.settings.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ApacheError("not running")
        return self.proc.pid

    def reload(self) -> None:
        """Graceful reload (SIGUSR1): re-reads the CRL and certificates; open connections finish."""
        os.kill(self.pid, signal.SIGUSR1)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._log.close()

    def __enter__(self) -> PrivateApache:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _default_apache2() -> str:
    return shutil.which("apache2") or "/usr/sbin/apache2"


@click.group()
def cli() -> None:
    """A private Apache instance running the production vhost unchanged (tests, `make run`)."""


@cli.command()
@click.option("--port", type=int, required=True, help="The TLS port on --listen-address.")
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Where Apache writes everything (created).",
)
@click.option("--web-socket", type=click.Path(path_type=Path), required=True, help="gunicorn's unix socket.")
@click.option(
    "--tls-cert",
    type=click.Path(path_type=Path),
    required=True,
    help="The server certificate (PEM, with the chain).",
)
@click.option(
    "--tls-key", type=click.Path(path_type=Path), required=True, help="The server key (PEM, unencrypted)."
)
@click.option(
    "--client-ca",
    type=click.Path(path_type=Path),
    required=True,
    help="The CA chain client certificates must chain to.",
)
@click.option(
    "--crl",
    type=click.Path(path_type=Path),
    required=True,
    help="The CA's CRL (reload with SIGHUP after a new one).",
)
@click.option("--server-name", default="localhost", show_default=True)
@click.option("--listen-address", default="127.0.0.1", show_default=True)
@click.option("--user", default="www-data", show_default=True, help="The children's user.")
@click.option("--group", default="www-data", show_default=True, help="The children's group.")
@click.option(
    "--proxy-protocol",
    is_flag=True,
    help="Behind the TCP-passthrough balancer: require a PROXY protocol header (v1/v2) on every connection "
    "and take the client's address from it. Only the balancer may reach the port.",
)
@click.option(
    "--apache2",
    default=_default_apache2,
    show_default="apache2 on PATH, else /usr/sbin/apache2",
    help="The apache2 binary.",
)
def run(
    port: int,
    run_dir: Path,
    web_socket: Path,
    tls_cert: Path,
    tls_key: Path,
    client_ca: Path,
    crl: Path,
    server_name: str,
    listen_address: str,
    user: str,
    group: str,
    proxy_protocol: bool,
    apache2: str,
) -> None:
    """Run a private instance in the foreground until SIGTERM (SIGHUP/SIGUSR1: graceful reload)."""
    settings = Settings(
        run_dir=run_dir.resolve(),
        port=port,
        web_socket=web_socket.resolve(),
        tls_cert=tls_cert.resolve(),
        tls_key=tls_key.resolve(),
        client_ca=client_ca.resolve(),
        crl=crl.resolve(),
        server_name=server_name,
        listen_address=listen_address,
        user=user,
        group=group,
        proxy_protocol=proxy_protocol,
    )
    apache = PrivateApache(settings, binary=apache2)
    stopping = False

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def on_reload(signum: int, frame: FrameType | None) -> None:
        apache.reload()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_reload)
    signal.signal(signal.SIGUSR1, on_reload)
    try:
        apache.start()
    except (ApacheError, ValueError, OSError, KeyError) as exc:
        # OSError: no apache2 at --apache2, an unwritable --run-dir; KeyError: no such --user/--group.
        # `apache2 -t` may answer in several lines: the error stays one line.
        reason = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise click.ClickException(
            f"{reason} — fix the options, or see {settings.server_error_log}"
        ) from None
    behind = " (PROXY protocol required)" if proxy_protocol else ""
    click.echo(f"apache listening on https://{settings.listen_address}:{settings.port}{behind}")
    try:
        while not stopping:
            if apache.proc is not None and apache.proc.poll() is not None:
                raise click.ClickException(f"apache2 died — see {settings.server_error_log}")
            time.sleep(0.2)
    finally:
        apache.stop()


def main() -> None:
    cli(prog_name="python -m apache.private")


if __name__ == "__main__":
    main()
