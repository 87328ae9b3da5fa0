"""A two-web-node Strongroom deployment on a three-node Galera cluster, behind HAProxy, on one LAN of
network namespaces (tests/cluster/lan.py): what docs/scaling.md tells an operator to build.

    db1 db2 db3   MariaDB Galera (tests/cluster/galera.py), TLS between the nodes and to the clients
    lb            HAProxy running deploy/balancer/haproxy.cfg.in: :443 TLS passthrough with the PROXY
                  protocol to the web nodes (health: TCP + the node's health agent), :3306 to one
                  Galera node at a time
    web1 web2     each: Apache (the shipped vhost, PROXY protocol on) -> gunicorn -> the app, its own
                  keyd (one key state, copied; unsealed by the same key), the health agent, an sshd
                  that accepts only the CA's CRL push
    ca            the CA host: pushes the CRL to both web nodes
    client        the employees

Every process runs in its host's namespace, in its own session, and is killed with its whole process
group on stop: `kill_web("web1")` is a crash of that machine's services, `start_web` brings them
back (keyd sealed until `unseal`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.apache.stack import GUNICORN, production_settings, traversable_dir
from tests.cluster.galera import Galera
from tests.cluster.lan import Lan
from tests.fixtures.pki import Issued, TestCA
from tests.fixtures.sshd import keygen, root_sshd_config
from tests.keyd.conftest import Keyd, copy_state, make_keyd, raw_key
from tests.support import component_missing, need_binary, need_root
from webapp.db import migrate
from webapp.db.engine import make_engine

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_TEMPLATE = ROOT / "deploy" / "balancer" / "haproxy.cfg.in"
GRANTS = ROOT / "webapp" / "db" / "grants.sql"
DBS = ("db1", "db2", "db3")
WEBS = ("web1", "web2")
HOSTS = (*DBS, "lb", *WEBS, "ca", "client")
AGENT_PORT = 9707
DATABASE = "strongroom"
APP_USER = "strongroom"
SERVER_NAME = "localhost"  # the name in the TestCA's server certificates


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, step: float = 0.1) -> float:
    """Seconds until `predicate()` held; AssertionError naming `what` after `timeout`."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(step)
    return time.monotonic() - start


@dataclass
class WebNode:
    name: str
    address: str
    dir: Path
    keyd: Keyd
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def web_socket(self) -> Path:
        return self.dir / "web" / "gunicorn.sock"

    @property
    def apache_dir(self) -> Path:
        return self.dir / "apache"


@dataclass
class Deployment:
    lan: Lan
    dir: Path
    galera: Galera
    ca: TestCA
    key: bytes
    app_env: dict[str, str]
    nodes: dict[str, WebNode] = field(default_factory=dict)
    haproxy: subprocess.Popen[bytes] | None = None
    issued: dict[str, Issued] = field(default_factory=dict)

    # -- paths -------------------------------------------------------------------------------------

    @property
    def certs(self) -> Path:
        return self.dir / "certs"

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.pem"

    @property
    def crl_file(self) -> Path:
        """The CRL the web nodes start with (each node keeps its own copy once started)."""
        return self.certs / "crl.pem"

    @property
    def ca_dir(self) -> Path:
        """The CA host's directory (`python -m ca --ca-dir`): its node list and publish/crl.pem."""
        return self.dir / "ca-host"

    @property
    def lb_dir(self) -> Path:
        return self.dir / "lb"

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    # -- processes ----------------------------------------------------------------------------------

    def _spawn(self, host: str, argv: list[str], log: str, env: dict[str, str] | None = None
               ) -> subprocess.Popen[bytes]:  # fmt: skip
        with self.log(log).open("ab") as out:
            return self.lan.popen(
                host, argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @staticmethod
    def _kill(procs: list[subprocess.Popen[bytes]], sig: int = signal.SIGKILL) -> None:
        """`sig` to these processes and all their descendants at once (Apache's parent leaves its
        launcher's session, so a process group would miss it), then reap them."""
        tree: list[psutil.Process] = []
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                tree += [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Orphaned descendants become zombies of whoever reaps here: gone is gone enough.
        wait_for(lambda: all(_gone(p) for p in tree), timeout=20, what="the killed processes to end")

    def served(self) -> dict[str, int]:
        """Requests each web node's Apache has logged so far."""
        counts = {}
        for name, node in self.nodes.items():
            log = node.apache_dir / "logs" / "strongroom-access.log"
            counts[name] = len(log.read_text().splitlines()) if log.exists() else 0
        return counts

    def rerun_requests(self) -> int:
        """Requests the web apps ran again after the database rolled them back (webapp/retry.py's
        log line), on every node so far."""
        logs = (self.log(f"{name}-gunicorn") for name in self.nodes)
        return sum(p.read_text(errors="replace").count("request run again") for p in logs if p.exists())

    def flask(self, node: str, *args: str, stdin: str | None = None) -> str:
        """`flask --app webapp ARGS` on `node`, as its admin would run it; its output."""
        done = subprocess.run(
            self.lan.argv(node, [sys.executable, "-m", "flask", "--app", "webapp", *args]),
            cwd=ROOT, env=self.nodes[node].env, input=stdin, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode:
            raise AssertionError(f"flask {' '.join(args[:2])} on {node}: {done.stdout}{done.stderr}")
        return done.stdout

    # -- the balancer --------------------------------------------------------------------------------

    def start_haproxy(self) -> None:
        self.lb_dir.mkdir(exist_ok=True)
        conf = self.lb_dir / "haproxy.cfg"
        conf.write_text(
            string.Template(HAPROXY_TEMPLATE.read_text()).substitute(
                run_dir=self.lb_dir,
                listen=self.lan.address("lb"),
                agent_port=AGENT_PORT,
                **{h: self.lan.address(h) for h in (*WEBS, *DBS)},
            )
        )
        haproxy = need_binary("haproxy")
        subprocess.run([haproxy, "-c", "-q", "-f", str(conf)], check=True, timeout=30)
        # -db: foreground, no daemon: the test owns the process.
        self.haproxy = self._spawn("lb", [haproxy, "-db", "-f", str(conf)], "haproxy")
        wait_for(lambda: (self.lb_dir / "haproxy.sock").exists(), timeout=15, what="haproxy's socket")

    def haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.lb_dir / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self, backend: str, fields: tuple[str, ...] = ("status",)) -> dict[str, str]:
        """{server: "UP"/"DOWN"/...} of one HAProxy backend, from its stats (other columns: `fields`)."""
        lines = self.haproxy_command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
                states[row["svname"]] = " ".join(row.get(f, "") for f in fields)
        return states

    # -- the web nodes ---------------------------------------------------------------------------------

    def firewall(self, name: str) -> None:
        """Only the balancer reaches a web node's Apache and health agent: a PROXY header from anyone
        else would claim any client address it liked (docs/scaling.md, firewall)."""
        ports = f"443,{AGENT_PORT}"
        # From the LAN only (eth0): the node's own processes reach it over lo.
        self.lan.run(name, ["iptables", "-A", "INPUT", "-i", "eth0", "-p", "tcp", "-m", "multiport",
                            "--dports", ports, "!", "-s", self.lan.address("lb"), "-j", "DROP"])  # fmt: skip

    def start_web(self, name: str) -> None:
        """Start keyd (sealed), gunicorn, Apache and the health agent on `name`."""
        node = self.nodes[name]
        # What a reboot after a crash does to /run: Apache would take a killed predecessor's pid
        # (a zombie until someone reaps it) for a running server and refuse to start.
        (node.apache_dir / "run" / "apache2.pid").unlink(missing_ok=True)
        node.keyd.start()
        node.procs["gunicorn"] = self._spawn(
            name, [str(GUNICORN), "-c", str(ROOT / "webapp" / "gunicorn_conf.py")], f"{name}-gunicorn",
            env=node.env | {"STRONGROOM_BIND": f"unix:{node.web_socket}", "STRONGROOM_WORKERS": "2"},
        )  # fmt: skip
        wait_for(node.web_socket.exists, timeout=30, what=f"{name}: gunicorn's socket")
        node.procs["apache"] = self._spawn(
            name,
            [sys.executable, "-m", "apache.private", "run", "--port", "443", "--listen-address", node.address,
             "--run-dir", str(node.apache_dir), "--web-socket", str(node.web_socket),
             "--tls-cert", str(self.certs / "server.pem"), "--tls-key", str(self.certs / "server.key"),
             "--client-ca", str(self.ca_file), "--crl", str(node.dir / "crl.pem"), "--proxy-protocol"],
            f"{name}-apache",
        )  # fmt: skip
        node.procs["agent"] = self._spawn(
            name,
            [sys.executable, "-m", "flask", "--app", "webapp", "health",
             "--agent", f"{node.address}:{AGENT_PORT}"],
            f"{name}-agent", env=node.env,
        )  # fmt: skip
        self._authorize_crl_push(node)
        sshd = [
            need_binary("sshd"),
            "-D",
            "-f",
            str(node.dir / "sshd" / "sshd_config"),
            "-E",
            str(self.log(f"{name}-sshd")),
        ]
        node.procs["sshd"] = self._spawn(name, sshd, f"{name}-sshd-out")
        for port, what in ((443, "Apache"), (AGENT_PORT, "the health agent"), (22, "sshd")):
            wait_for(lambda p=port: self._listens(name, p), timeout=30, what=f"{name}: {what}")  # type: ignore[misc]

    def _authorize_crl_push(self, node: WebNode) -> None:
        """The CA host's key may run one thing on the node: the CRL receiver, which checks the CRL
        against the node's chain, installs it and reloads this node's Apache gracefully (SIGUSR1 to
        apache.private's launcher, whose pid is new at every start)."""
        reload = f"/bin/kill -USR1 {node.procs['apache'].pid}"
        receiver = [sys.executable, "-m", "ca.crl_receive", "--crl", str(node.dir / "crl.pem"),
                    "--chain", str(self.ca_file), "--reload-command", reload]  # fmt: skip
        forced = f"cd {ROOT} && exec {shlex.join(receiver)}"
        options = f'restrict,from="{self.lan.address("ca")}",command="{forced}"'
        (node.dir / "authorized_keys").write_text(f"{options} {(self.ca_dir / 'id_ed25519.pub').read_text()}")

    def _listens(self, name: str, port: int) -> bool:
        for proc in self.nodes[name].procs.values():
            if proc.poll() is not None:
                raise AssertionError(f"{name}: a process exited ({proc.args!r}): see {self.dir / 'logs'}")
        out = self.lan.run(name, ["ss", "-Htln", f"sport = :{port}"], check=False).stdout
        return bool(out.strip())

    def kill_web(self, name: str) -> None:
        """The node's services crash at once (keyd too: its key is gone with it)."""
        node = self.nodes[name]
        procs = list(node.procs.values())
        if node.keyd.proc is not None:
            procs.append(node.keyd.proc)
            node.keyd.proc = None
            node.keyd.log.close()
        self._kill(procs)
        node.procs.clear()

    def heal(self) -> None:
        """Every web node running, unsealed and in the balancer, every database node running: what
        each test starts from, whatever the one before left behind."""
        for name, node in self.nodes.items():
            if not node.procs or any(p.poll() is not None for p in node.procs.values()):
                self.kill_web(name)
                self.start_web(name)
            if node.keyd.status()["sealed"]:
                self.unseal(name)
            self.haproxy_command(f"set server web_nodes/{name} state ready")
        for db in self.galera.nodes:
            if not self.galera.running(db):
                self.galera.start(db)
        self.wait_balanced(set(self.nodes))

    def unseal(self, name: str) -> None:
        self.nodes[name].keyd.unseal(self.key)

    def seal(self, name: str) -> None:
        """Restart only keyd: it comes back sealed (the key lives in its memory alone)."""
        keyd = self.nodes[name].keyd
        keyd.stop()
        keyd.start()

    @contextlib.contextmanager
    def only(self, node: str) -> Iterator[None]:
        """Every new connection goes to `node` meanwhile: the other web nodes are put in maintenance
        in the balancer (as an operator drains a node), and made ready again afterwards."""
        others = [n for n in self.nodes if n != node]
        for other in others:
            self.haproxy_command(f"set server web_nodes/{other} state maint")
        try:
            yield
        finally:
            for other in others:
                self.haproxy_command(f"set server web_nodes/{other} state ready")
            self.wait_balanced({n for n in self.nodes if self.nodes[n].procs})

    def database_writer(self) -> str:
        """The Galera node the balancer's stick table sends every database connection to."""
        table = self.haproxy_command("show table mariadb")
        found = re.search(r"server_id=(\d+)", table)
        if found is None:
            raise AssertionError(f"no database writer chosen yet: {table!r}")
        for line in self.haproxy_command("show servers state mariadb").splitlines()[2:]:
            fields = line.split()
            if len(fields) > 3 and fields[2] == found.group(1):
                return fields[3]
        raise AssertionError(f"server id {found.group(1)} is not in the mariadb backend")

    def wait_balanced(self, up: set[str], timeout: float = 30) -> float:
        """Seconds until HAProxy has exactly `up` of the web nodes UP."""
        try:
            return wait_for(
                lambda: {n for n, s in self.server_states("web_nodes").items() if s.startswith("UP")} == up,
                timeout=timeout, what=f"HAProxy web nodes up == {sorted(up)}",
            )  # fmt: skip
        except AssertionError as exc:
            checks = self.server_states("web_nodes", ("status", "check_status", "last_chk", "last_agt"))
            raise AssertionError(f"{exc}: {checks}") from None

    # -- employees ---------------------------------------------------------------------------------

    def certs_of(self, username: str) -> tuple[Path, Path]:
        return self.certs / f"{username}.pem", self.certs / f"{username}.key"

    def add_person(self, username: str, role: str, password: str) -> tuple[Path, Path]:
        issued = self.issued[username] = self.ca.issue(username)
        cert, key = issued.write(self.certs, username)
        os.chmod(key, 0o600)
        self.flask(
            "web1", "users", "add", username, "--role", role, "--password-stdin", stdin=f"{password}\n"
        )
        self.flask("web1", "certs", "bind", username, str(cert))
        return cert, key

    def revoke(self, username: str) -> None:
        """The CA host revokes `username`'s certificate: a new CRL in publish/, pushed to every web
        node (`python -m ca push-crl`, the CA's reload hook), from the CA host's namespace."""
        self.ca.revoke(self.issued[username])
        (self.ca_dir / "publish" / "crl.pem").write_bytes(self.ca.crl_pem())
        done = subprocess.run(
            self.lan.argv("ca", [sys.executable, "-m", "ca", "--ca-dir", str(self.ca_dir), "push-crl"]),
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode:
            raise AssertionError(f"push-crl exited {done.returncode}: {done.stdout}{done.stderr}")

    # -- the database ---------------------------------------------------------------------------------

    def sql(self, db: str, statement: str, args: object = None) -> list[tuple[object, ...]]:
        """A query as root on one Galera node (its Unix socket), in the app's database."""
        conn = self.galera.root(db)
        try:
            with conn.cursor() as cur:
                cur.execute(f"USE `{DATABASE}`")
                cur.execute(statement, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def stop(self) -> None:
        for name in self.nodes:
            with contextlib.suppress(Exception):
                self.kill_web(name)
        if self.haproxy is not None:
            self._kill([self.haproxy], signal.SIGTERM)


def _gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _app_env(base: Path, db_url: str, keyd_socket: Path, extra: dict[str, str]) -> dict[str, str]:
    app = production_settings(db_url=db_url, instance=base / "instance", keyd_socket=keyd_socket, extra=extra)
    return {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | app


def _create_database(galera: Galera, password: str) -> None:
    """As an operator would on the first database node: the database, the app user (from the LAN,
    TLS required), the schema by migration as the owner, then the per-table grants of grants.sql
    for that user. Galera replicates all of it."""
    conn = galera.root("db1")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{DATABASE}` CHARACTER SET utf8mb4")
            cur.execute(f"CREATE USER '{APP_USER}'@'192.0.2.%%' IDENTIFIED BY %s REQUIRE SSL", (password,))
    finally:
        conn.close()
    socket = galera.nodes["db1"].socket
    owner = make_engine(f"mysql+pymysql://root@localhost/{DATABASE}?unix_socket={socket}&charset=utf8mb4")
    try:
        migrate.upgrade(owner)
    finally:
        owner.dispose()
    grants = GRANTS.read_text().replace(f"'{APP_USER}'@'localhost'", f"'{APP_USER}'@'192.0.2.%'")
    statements = [s.strip() for s in _strip_comments(grants).split(";") if s.strip()]
    conn = galera.root("db1")
    try:
        with conn.cursor() as cur:
            cur.execute(f"USE `{DATABASE}`")
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def _ca_host(ca_dir: Path, crl: Path, nodes: list[tuple[str, str]]) -> None:
    """What the CA host needs to push: its key, each node pinned in its own known_hosts (filled in by
    _sshd_files), and the node list of config.toml. Root-only, as the CA insists."""
    ca_dir.mkdir(mode=0o700)
    (ca_dir / "publish").mkdir(mode=0o700)
    shutil.copy(crl, ca_dir / "publish" / "crl.pem")
    keygen(ca_dir / "id_ed25519")
    entries = ",\n    ".join(
        f'{{name = "{n}", host = "{a}", port = 22, user = "root", '
        f'known_hosts = "{ca_dir / (n + ".known_hosts")}", identity = "{ca_dir / "id_ed25519"}"}}'
        for n, a in nodes
    )
    (ca_dir / "config.toml").write_text(f"crl_nodes = [\n    {entries},\n]\n")
    for f in ca_dir.rglob("*"):
        os.chmod(f, 0o700 if f.is_dir() else 0o600)


def _sshd_files(node_dir: Path, address: str, known_hosts: Path) -> None:
    """The node's sshd: its host key (pinned at the CA host), root only by a key with a forced command."""
    (node_dir / "sshd").mkdir(mode=0o700)
    host_pub = keygen(node_dir / "sshd" / "host_ed25519")
    known_hosts.write_text(f"{address} {host_pub}\n")
    os.chmod(known_hosts, 0o600)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    root_sshd_config(
        node_dir / "sshd", port=22, address=address, root_login="forced-commands-only",
        authorized_keys=node_dir / "authorized_keys",
    )  # fmt: skip


def _strip_comments(sql: str) -> str:
    return "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))


@contextlib.contextmanager
def deployment(*, keyd_budgets: list[str], app_extra: dict[str, str] | None = None) -> Iterator[Deployment]:
    """Build and start the whole deployment; tear everything down afterwards, whatever happened."""
    need_root()
    need_binary("haproxy")
    if not GUNICORN.exists():
        component_missing("gunicorn is not installed in .venv")
    with traversable_dir("strongroom-cluster-") as base, contextlib.ExitStack() as stack:
        (base / "logs").mkdir()
        lan = Lan.create(HOSTS)
        stack.callback(lan.teardown)
        # The app reaches the database through the balancer: its address is in every node's certificate.
        galera = stack.enter_context(Galera(lan, list(DBS), base / "galera", extra_names=[lan.address("lb")]))
        password = secrets.token_urlsafe(18)
        _create_database(galera, password)

        ca = TestCA("Strongroom Cluster Test CA")
        certs = base / "certs"
        certs.mkdir()
        (certs / "ca.pem").write_bytes(ca.pem)
        (certs / "crl.pem").write_bytes(ca.crl_pem())
        ca.issue(SERVER_NAME, server=True).write(certs, "server")

        _ca_host(base / "ca-host", certs / "crl.pem", [(n, lan.address(n)) for n in WEBS])
        key = raw_key()
        db_url = galera.url(APP_USER, password, DATABASE, host=lan.address("lb"))
        d = Deployment(lan=lan, dir=base, galera=galera, ca=ca, key=key, app_env={})
        stack.callback(d.stop)
        first: Keyd | None = None
        for name in WEBS:
            node_dir = base / name
            node_dir.mkdir()
            (node_dir / "web").mkdir(mode=0o710)
            shutil.chown(node_dir / "web", "root", "www-data")
            os.chmod(node_dir / "web", 0o710)  # noqa: S103 - group traverse only, for Apache's group
            shutil.copy(certs / "crl.pem", node_dir / "crl.pem")
            _sshd_files(node_dir, lan.address(name), base / "ca-host" / f"{name}.known_hosts")
            keyd = make_keyd(node_dir / "keyd", extra=keyd_budgets)
            if first is None:
                keyd.init(key, "--key-kind", "raw")  # once, on the first node
                first = keyd
            else:
                copy_state(first, keyd)  # never `keyd init` on a second node: it would make another key
            env = _app_env(node_dir, db_url, keyd.socket, app_extra or {})
            d.nodes[name] = WebNode(name, lan.address(name), node_dir, keyd, env)
        d.app_env = d.nodes["web1"].env
        d.start_haproxy()
        for name in WEBS:
            d.firewall(name)
            d.start_web(name)
            d.unseal(name)
        d.wait_balanced(set(WEBS))
        yield d


def describe(d: Deployment) -> str:
    """One line per server of each backend, for assertion messages."""
    return json.dumps({b: d.server_states(b) for b in ("web_nodes", "mariadb")})
