"""A three-node MariaDB Galera cluster for tests: one mariadbd per LAN host, TLS between the nodes.

    lan = Lan.create(["db1", "db2", "db3", ...])
    with Galera(lan, ["db1", "db2", "db3"]) as cluster:   # bootstrapped, all Synced
        cluster.root("db1").cursor().execute(...)    # root over db1's Unix socket
        cluster.kill("db3"); cluster.start("db3")    # a crash, then a rejoin (IST)
        cluster.url("app", pw, "strongroom", host=lan.address("lb"))   # TLS, server verified

Every node has its own directory under `base` (data, socket, pid, error log, my.cnf) and listens on
its LAN address only: 3306 (clients, TLS offered, and required over TCP), 4567 (group communication),
4568 (IST) and 4444 (SST). Every byte between the nodes is TLS with certificates of one throwaway CA,
each naming its node's address:
- group communication and IST: Galera's `socket.ssl_*` (a peer must present a certificate of the
  cluster's CA: one of another CA, or none, is refused at the handshake);
- SST: rsync through stunnel (`[sst] ssl-mode=VERIFY_CA`: donor and joiner each check that the
  other's certificate comes from the cluster's CA). The SST script aborts rather than copy in
  the clear when stunnel is missing, so a missing package fails loudly.

Node 1 is bootstrapped (`--wsrep-new-cluster`, its data dir from mariadb-install-db, root by
unix_socket as tests/fixtures/mariadb.py); the others start empty and receive a full SST. A node
started again first recovers its position from its own InnoDB (`mariadbd --wsrep-recover`, what
Debian's unit does through galera_recovery): a crash leaves seqno -1 in grastate.dat, and a node
started without its position asks for a full SST where an IST of what it missed is enough.

The nodes run as `mysql`, as in production, not as root like tests/fixtures/mariadb.py: rsync's
daemon, started as root by the SST script, switches to `nobody` (rsyncd.conf's default for a
super-user; the script's config sets no uid) and cannot write the joiner's data dir. So `base` is
a directory `mysql` can traverse (pytest's tmp_path is under a 0700 directory): by default one of its
own under /tmp (0711), removed when the cluster stops cleanly and kept, with its error logs, after a
failure.
Each mariadbd is a child of the test, started in its namespace by `Lan.popen` through
`setpriv --pdeathsig TERM` (set after the switch to `mysql`, which would clear it), so a test run
that dies takes its databases with it.

Measured on the development machine (Debian 12, MariaDB 10.11.19, Galera 26.4.23; other test runs
sharing it): mariadb-install-db 0.7-3 s, bootstrap of the first node 0.3 s, the two joiners 8-11 s
(one full SST each, ~4.5 s apiece through stunnel; the donor serves one at a time, so the second
joiner waits): three nodes Synced in 10-13 s. A SIGKILLed node: the survivors stall every write
for ~6 s until they declare it dead (Galera's default evs.suspect_timeout of 5 s; `provider_options`
tunes it), then it rejoins by IST in ~4 s (the position recovery included).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pymysql
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.cluster.lan import Lan
from tests.fixtures.mariadb import SMALL_SERVER
from tests.fixtures.pki import TestCA
from tests.support import component_missing, need_binary

PROVIDER = Path("/usr/lib/galera/libgalera_smm.so")
CLUSTER_NAME = "strongroom-test"
PORT = 3306
USER = "mysql"  # the nodes run as mysql: see the module docstring
START_TIMEOUT = 60.0  # a joiner's SST included
STOP_TIMEOUT = 30.0


class GaleraError(Exception):
    """A node did not start, join or stop as expected; the message names its error log."""


@dataclass
class Node:
    name: str
    address: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def cnf(self) -> Path:
        return self.dir / "my.cnf"

    @property
    def datadir(self) -> Path:
        return self.dir / "data"

    @property
    def socket(self) -> Path:
        return self.dir / "mariadbd.sock"

    @property
    def error_log(self) -> Path:
        return self.dir / "error.log"


class Galera:
    """The cluster: `with Galera(lan, names, base) as cluster:` bootstraps it and always stops it."""

    def __init__(
        self,
        lan: Lan,
        names: Sequence[str],
        base: Path | None = None,
        *,
        ca: TestCA | None = None,
        extra_names: Sequence[str] = (),
        provider_options: str = "",
        peers: Sequence[str] = (),
    ) -> None:
        """`base`: a directory `mysql` can traverse (tests.apache.stack.traversable_dir; left in
        place), or by default one of its own under /tmp. `extra_names` go into every node's
        certificate besides its own name and address (a balancer's address, when clients reach a
        node through a TCP passthrough). `provider_options` is appended to wsrep_provider_options
        (`evs.suspect_timeout=PT2S;...`). `peers`: addresses of a running cluster's members that
        these nodes join instead of bootstrapping their own (entering then only prepares them:
        `start` each)."""
        self.lan = lan
        self.ca = ca or TestCA("Strongroom Galera Test CA")
        self.extra_names = tuple(extra_names)
        self.provider_options = provider_options
        self.peers = tuple(peers)
        self._mariadbd = need_binary("mariadbd")
        self._install_db = need_binary("mariadb-install-db")
        self._setpriv = need_binary("setpriv")
        for tool in ("rsync", "stunnel"):  # SST: rsync through stunnel
            need_binary(tool)
        if not PROVIDER.exists():
            component_missing(f"{PROVIDER} is missing (Debian package galera-4)")
        try:
            self._user = pwd.getpwnam(USER)
        except KeyError:
            component_missing(f"no user {USER} (Debian package mariadb-server creates it)")
        self._own_base = base is None
        self.base = Path(tempfile.mkdtemp(prefix="strongroom-galera-")) if base is None else base
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o711)  # traversable by mysql, not listable
        for parent in self.base.parents:
            if not parent.stat().st_mode & stat.S_IXOTH:
                raise GaleraError(f"mysql cannot enter {parent}: put the cluster in a traversable directory")
        self.nodes = {n: Node(n, lan.address(n), self.base / n) for n in names}
        self.ca_file = self.base / "ca.pem"
        self.timings: dict[str, float] = {}

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Galera:
        try:
            if self.peers:
                self.prepare()
            else:
                self.bootstrap()
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
        if kind is None and self._own_base:  # after a failure the logs stay, for the message naming them
            shutil.rmtree(self.base, ignore_errors=True)

    def bootstrap(self) -> None:
        """Write every node's files, bootstrap the first node, join the others (SST), wait Synced."""
        t0 = time.monotonic()
        self.prepare()
        first, *others = self.nodes
        self._install(self.nodes[first])
        t1 = time.monotonic()
        self._spawn(first, new_cluster=True)
        self.wait_synced([first], size=1)
        t2 = time.monotonic()
        for name in others:  # in parallel: a joiner waits in line when the donor is busy
            self._spawn(name)
        self.wait_synced(size=len(self.nodes))
        t3 = time.monotonic()
        self.timings.update(install=t1 - t0, bootstrap=t2 - t1, join=t3 - t2)

    def prepare(self) -> None:
        """Certificates and one my.cnf per node (the first node's data dir comes from `_install`)."""
        self.ca_file.write_bytes(self.ca.pem)
        self.ca_file.chmod(0o644)
        uid, gid = self._user.pw_uid, self._user.pw_gid
        for node in self.nodes.values():
            cert, key = node_certificate(self.ca, node.name, node.address, self.extra_names)
            node.dir.mkdir(mode=0o700)
            node.datadir.mkdir(mode=0o700)
            (node.dir / "cert.pem").write_bytes(cert)
            (node.dir / "key.pem").write_bytes(key)
            (node.dir / "key.pem").chmod(0o600)
            node.cnf.write_text(self.render(node))
            for path in (node.dir, node.datadir, node.dir / "cert.pem", node.dir / "key.pem", node.cnf):
                os.chown(path, uid, gid)

    def render(self, node: Node) -> str:
        tls = {"cert": node.dir / "cert.pem", "key": node.dir / "key.pem", "ca": self.ca_file}
        provider = ";".join(
            [
                "socket.ssl=yes",
                f"socket.ssl_cert={tls['cert']}",
                f"socket.ssl_key={tls['key']}",
                f"socket.ssl_ca={tls['ca']}",
                # The page cache IST is served from: preallocated per node, 128M by default.
                "gcache.size=32M",
                *([self.provider_options] if self.provider_options else []),
            ]
        )
        peers = ",".join([*(n.address for n in self.nodes.values()), *self.peers])
        lines = [
            "[mariadbd]",
            f"datadir={node.datadir}",
            f"socket={node.socket}",
            f"pid-file={node.dir / 'mariadbd.pid'}",
            f"log-error={node.error_log}",
            f"bind-address={node.address}",
            f"port={PORT}",
            "skip-name-resolve",
            *SMALL_SERVER,
            # What Galera requires: row-based replication, InnoDB, interleaved auto-increment locks.
            "binlog_format=ROW",
            "default_storage_engine=InnoDB",
            "innodb_autoinc_lock_mode=2",
            # Clients over TCP must use TLS (the Unix socket counts as secure).
            f"ssl_cert={tls['cert']}",
            f"ssl_key={tls['key']}",
            f"ssl_ca={tls['ca']}",
            "require_secure_transport=ON",
            "wsrep_on=ON",
            f"wsrep_provider={PROVIDER}",
            f"wsrep_cluster_name={CLUSTER_NAME}",
            f"wsrep_cluster_address=gcomm://{peers}",
            f"wsrep_node_name={node.name}",
            f"wsrep_node_address={node.address}",
            "wsrep_sst_method=rsync",
            f'wsrep_provider_options="{provider}"',
            "[sst]",
            # stunnel on both ends, each checks the other's certificate chains to the cluster's CA.
            # Not VERIFY_IDENTITY: the script turns it into stunnel's verifyPeer, which pins the
            # peer's own certificate (it must be in the CA file), and every SST fails verification.
            "ssl-mode=VERIFY_CA",
            "[client]",
            f"socket={node.socket}",
        ]
        return "\n".join(lines) + "\n"

    def _install(self, node: Node) -> None:
        done = subprocess.run(
            [
                self._install_db,
                f"--defaults-file={node.cnf}",
                f"--user={USER}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise GaleraError(f"mariadb-install-db failed for {node.name}: {done.stderr.decode()[-2000:]}")

    def _argv(self, node: Node, *args: str) -> list[str]:
        # `ip netns exec` and setpriv exec, so the pid is mariadbd's and its parent is this process;
        # the death signal is set after the switch to mysql (a change of uid clears it).
        return [
            self._setpriv, f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--pdeathsig=TERM",
            self._mariadbd, f"--defaults-file={node.cnf}", *args,
        ]  # fmt: skip

    def _spawn(self, name: str, *, new_cluster: bool = False) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            raise GaleraError(f"{name} is already running")
        if new_cluster:
            args = ["--wsrep-new-cluster"]
        elif (node.datadir / "grastate.dat").exists():
            args = [self._recover(node)]
        else:
            args = []  # a first join: an empty data dir, filled by SST
        node.proc = self.lan.popen(
            name,
            self._argv(node, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _recover(self, node: Node) -> str:
        """`--wsrep-start-position=` from the node's own InnoDB, as Debian's unit does before every
        start (galera_recovery). A crashed node's grastate.dat says seqno -1: started without its
        position it would ask for a full SST where an IST of what it missed is enough."""
        done = self.lan.run(
            node.name, self._argv(node, "--wsrep-recover", "--disable-log-error"), check=False, timeout=60
        )
        match = re.search(r"WSREP: Recovered position: (\S+)", done.stderr)
        if done.returncode != 0 or match is None:
            raise GaleraError(
                f"{node.name}: position recovery failed ({done.returncode}): {done.stderr[-1000:]}"
            )
        return f"--wsrep-start-position={match.group(1)}"

    def start(self, name: str, *, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start a stopped or crashed node (its position recovered first): it rejoins, by IST when
        a member's gcache still holds what it missed, by SST otherwise; back when Synced."""
        self._spawn(name)
        if wait:
            self.wait_synced([name], size=len(self.nodes) + len(self.peers), timeout=timeout)

    def kill(self, name: str) -> None:
        """SIGKILL: a crash (no clean shutdown, the node's saved position is lost: it recovers it)."""
        self._end(name, signal.SIGKILL)

    def stop(self, name: str) -> None:
        """SIGTERM: a clean shutdown (the node leaves the group gracefully)."""
        self._end(name, signal.SIGTERM)

    def _end(self, name: str, sig: signal.Signals) -> None:
        node = self.nodes[name]
        proc, node.proc = node.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        """Every node that runs, stopped (SIGTERM; SIGKILL after a timeout): never raises."""
        for name in reversed(self.nodes):  # the bootstrap node last: the others leave cleanly first
            self.stop(name)

    def running(self, name: str) -> bool:
        proc = self.nodes[name].proc
        return proc is not None and proc.poll() is None

    # -- observation --------------------------------------------------------------------------

    def root(self, node: str | int) -> pymysql.connections.Connection:
        """root over the node's Unix socket (unix_socket authentication; a name or an index)."""
        name = list(self.nodes)[node] if isinstance(node, int) else node
        return pymysql.connect(
            unix_socket=str(self.nodes[name].socket),
            user="root",
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=5,
        )

    def status(self, name: str) -> dict[str, str]:
        """The node's `SHOW STATUS LIKE 'wsrep%'`, name -> value."""
        with self.root(name) as conn, conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'wsrep%'")
            return {str(k): str(v) for k, v in cur.fetchall()}

    def wait_synced(
        self, names: Sequence[str] | None = None, *, size: int | None = None, timeout: float = START_TIMEOUT
    ) -> None:
        """Wait until every named node (all by default) answers, is Synced and sees `size` members
        (all the nodes by default)."""
        names = list(self.nodes) if names is None else list(names)
        size = len(self.nodes) if size is None else size
        deadline = time.monotonic() + timeout
        pending = list(names)
        last: dict[str, str] = {}
        while pending:
            name = pending[0]
            proc = self.nodes[name].proc
            if proc is None or proc.poll() is not None:
                raise GaleraError(f"{name} is not running: see {self.nodes[name].error_log}")
            # PyMySQL leaks its socket object when the connect fails: try a plain one first (a crash
            # leaves the socket file behind, refusing connections until the node listens again).
            if _listens(self.nodes[name].socket):
                try:
                    last = self.status(name)
                except pymysql.err.OperationalError:
                    last = {}
                if (
                    last.get("wsrep_local_state_comment") == "Synced"
                    and last.get("wsrep_cluster_size") == str(size)
                    and last.get("wsrep_ready") == "ON"
                ):
                    pending.pop(0)
                    continue
            if time.monotonic() > deadline:
                state = {k: last.get(k) for k in ("wsrep_local_state_comment", "wsrep_cluster_size")}
                raise GaleraError(
                    f"{name} not Synced in a cluster of {size} ({state}): see {self.nodes[name].error_log}"
                )
            time.sleep(0.1)

    def log(self, name: str) -> str:
        path = self.nodes[name].error_log
        return path.read_text(errors="replace") if path.exists() else ""

    # -- for the application -----------------------------------------------------------------

    def ssl_params(self) -> dict[str, Any]:
        """PyMySQL's `ssl=` for a client: the server's certificate checked against the cluster's CA
        and its name (connect to a node's address, or to one of `extra_names`)."""
        return {"ca": str(self.ca_file)}

    def url(self, user: str, password: str, database: str, *, host: str) -> str:
        """A SQLAlchemy URL over TLS to `host` (a node's or the balancer's address). `ssl_ca` alone
        is full verification (PyMySQL checks the chain and the name); adding ssl_verify_identity
        would make PyMySQL rebuild its TLS settings without the CA SQLAlchemy moved into `ssl`."""
        return (
            f"mysql+pymysql://{user}:{password}@{host}:{PORT}/{database}"
            f"?charset=utf8mb4&ssl_ca={self.ca_file}"
        )


def node_certificate(
    ca: TestCA, name: str, address: str, extra_names: Sequence[str] = ()
) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for a node: serverAuth and clientAuth (a Galera node is both ends
    of its links), its name and address in subjectAltName (clients, and stunnel's checkIP, check them)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(name)]
    for entry in (address, *extra_names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            sans.append(x509.DNSName(entry))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _listens(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
