"""The CRL push to several web nodes (ca/crl_push.py, ca/crl_receive.py), with real components.

Two web nodes on loopback, each a real sshd (its own host key; the CA's key restricted in
authorized_keys to the receiver as forced command) and a real private Apache running the shipped
vhost (apache/private.py) on the node's own copy of chain.pem and crl.pem. The CA's reload hook is
`python -m ca push-crl`: a revocation must reach both Apaches within a minute (measured and
printed); a node that is down makes the CA exit 3 naming it while the other node still gets the
CRL; a node whose host key does not match the pin gets nothing. The receiver's hostile inputs are
a table: each refused with one line, the installed CRL and its reload untouched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from apache.private import PrivateApache, Settings
from ca.config import Config, CrlNode, load_config, render_config
from ca.crl_receive import MAX_BYTES
from ca.errors import CAError
from tests.apache.stack import traversable_dir
from tests.ca.conftest import CA, set_config
from tests.fixtures.pki import unpack_bundle
from tests.fixtures.sshd import keygen, root_sshd_config, running_sshd
from tests.support import free_port, need_binary, need_root

ROOT = Path(__file__).resolve().parents[2]
LIMIT_SECONDS = 60  # issue 20: "a revocation reaches both nodes' Apache within a minute"


def receiver_argv(node_dir: Path, reload_command: str) -> list[str]:
    return [
        sys.executable, "-m", "ca.crl_receive", "--crl", str(node_dir / "crl.pem"),
        "--chain", str(node_dir / "chain.pem"), "--reload-command", reload_command,
    ]  # fmt: skip


def install_node_files(ca: CA, node_dir: Path) -> None:
    """What the admin copies to a new node by hand: the chain and the current CRL (root-owned, 0644)."""
    node_dir.mkdir(mode=0o755, exist_ok=True)
    for name in ("chain.pem", "crl.pem"):
        shutil.copyfile(ca.dir / "publish" / name, node_dir / name)
        os.chmod(node_dir / name, 0o644)


# -- the node list in config.toml --------------------------------------------------------------------

NODE = 'name = "web1", host = "192.0.2.14", user = "strongroom-crl", known_hosts = "/k", identity = "/i"'


def test_the_node_list_reads_back_as_init_would_write_it(tmp_path: Path) -> None:
    config = Config(crl_nodes=(CrlNode(name="web1", host="192.0.2.14", user="crl", known_hosts=Path("/k"),
                                       identity=Path("/i")),))  # fmt: skip
    path = tmp_path / "config.toml"
    path.write_text(render_config(config))
    assert load_config(path) == config
    assert load_config(path).crl_nodes[0].port == 22


@pytest.mark.parametrize(
    ("nodes", "refusal"),
    [
        # ssh would read these as an option (ProxyCommand runs a command) or a user@host
        ('{name = "w", host = "-oProxyCommand=sh", user = "u", known_hosts = "/k", identity = "/i"}',
         "crl_nodes[0].host: must be an IP address or a lowercase DNS name"),
        ('{name = "w", host = "root@web1", user = "u", known_hosts = "/k", identity = "/i"}',
         "crl_nodes[0].host: must be an IP address or a lowercase DNS name"),
        ('{name = "w", host = "web1", user = "-l", known_hosts = "/k", identity = "/i"}',
         "crl_nodes[0].user: must be a plain user name"),
        # ssh splits UserKnownHostsFile on spaces and expands %-tokens: two files, or someone else's
        ('{name = "w", host = "web1", user = "u", known_hosts = "/k /tmp/any", identity = "/i"}',
         "crl_nodes[0].known_hosts: must be an absolute path without spaces"),
        ('{name = "w", host = "web1", user = "u", known_hosts = "/k", identity = "/home/%u/id"}',
         "crl_nodes[0].identity: must be an absolute path without spaces"),
        ('{name = "w", host = "web1", user = "u", known_hosts = "k", identity = "/i"}',
         "crl_nodes[0].known_hosts: must be an absolute path"),
        (f'{{{NODE}, port = 0}}', "crl_nodes[0].port: must be at least 1"),
        (f'{{{NODE}, password = "x"}}', "crl_nodes[0].password: is not a known setting"),
        ('{name = "w"}', "crl_nodes[0].host: is required"),
        (f"{{{NODE}}}, {{{NODE}}}", "crl_nodes: each node needs its own name"),
    ],
)  # fmt: skip
def test_a_hostile_node_entry_is_refused(tmp_path: Path, nodes: str, refusal: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"crl_nodes = [{nodes}]\n")
    with pytest.raises(CAError) as caught:
        load_config(path)
    assert str(caught.value).splitlines()[0] == f"{path}: {refusal}"


# -- the receiver's hostile inputs ----------------------------------------------------------------


@dataclass
class Pushed:
    """A node whose installed CRL is the CA's current one, and CRLs to feed its receiver."""

    ca: CA
    node: Path
    before: bytes  # the CRL before alice's revocation: older than the installed one
    current: bytes  # installed


def _forged(current: bytes) -> bytes:
    """The issuing CA's CRL re-made under its name with a newer number, signed by another key;
    followed by the genuine root CRL."""
    genuine = [x509.load_pem_x509_crl(b) for b in _blocks(current)]
    key = ec.generate_private_key(ec.SECP384R1())
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(genuine[0].issuer)
        .last_update(genuine[0].last_update_utc)
        .next_update(genuine[0].last_update_utc + timedelta(days=7))
        .add_extension(x509.CRLNumber(10_000), critical=False)
        .sign(key, hashes.SHA384())
    )
    return forged.public_bytes(serialization.Encoding.PEM) + genuine[1].public_bytes(
        serialization.Encoding.PEM
    )


def _blocks(pem: bytes) -> list[bytes]:
    end = b"-----END X509 CRL-----\n"
    return [part + end for part in pem.split(end) if part.strip()]


def _expired(p: Pushed) -> bytes:
    """A newer CRL (higher number, genuinely signed) that expired days ago."""
    p.ca.clock.advance(days=-30)
    p.ca.ok("crl")
    p.ca.clock.advance(days=30)
    return (p.ca.dir / "publish" / "crl.pem").read_bytes()


HOSTILE: list[tuple[str, Callable[[Pushed], bytes], str]] = [
    ("empty input", lambda p: b"", "the input is empty"),
    ("not a CRL", lambda p: b"hello, vault\n", "the input is not a PEM CRL file"),
    ("a certificate", lambda p: (p.node / "chain.pem").read_bytes(), "the input is not a PEM CRL file"),
    ("a CRL with trailing text", lambda p: p.current + b"echo pwned\n", "the input is not a PEM CRL file"),
    ("oversized", lambda p: p.current + b"\n" * MAX_BYTES, f"the input is larger than {MAX_BYTES} bytes"),
    ("signed by another CA", lambda p: _forged(p.current), "not signed by a CA of the installed chain"),
    ("an older CRL (rollback)", lambda p: p.before, "is older than the installed one"),
    ("the root CRL left out", lambda p: _blocks(p.current)[0], "no CRL for CN=Strongroom Root CA"),
    ("an expired newer CRL", _expired, "has expired: Apache would refuse every client"),
]  # fmt: skip


@pytest.fixture
def pushed(make_ca: Callable[..., CA], tmp_path: Path) -> Pushed:
    ca = make_ca()
    before = (ca.dir / "publish" / "crl.pem").read_bytes()
    ca.issue("alice")
    ca.ok("revoke", "alice", "--reason", "affiliationChanged")
    node = tmp_path / "node"
    install_node_files(ca, node)
    os.chmod(node / "crl.pem", 0o640)
    return Pushed(ca, node, before, (node / "crl.pem").read_bytes())


def _receive(node: Path, data: bytes) -> subprocess.CompletedProcess[str]:
    marker = node / "reloaded"
    return subprocess.run(
        receiver_argv(node, f"touch {marker}"),
        input=data.decode("latin-1"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        encoding="latin-1",
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("label", "make_input", "refusal"), HOSTILE, ids=[row[0] for row in HOSTILE])
def test_the_receiver_refuses_hostile_input_and_changes_nothing(
    pushed: Pushed, label: str, make_input: Callable[[Pushed], bytes], refusal: str
) -> None:
    data = make_input(pushed)
    installed = pushed.node / "crl.pem"
    mode_before = installed.stat().st_mode
    done = _receive(pushed.node, data)
    assert done.returncode == 1, (label, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    assert refusal in done.stderr
    assert installed.read_bytes() == pushed.current
    assert installed.stat().st_mode == mode_before
    assert not (pushed.node / "reloaded").exists()
    assert sorted(p.name for p in pushed.node.iterdir()) == ["chain.pem", "crl.pem"]  # no temporary left


def test_the_receiver_installs_a_newer_crl_keeping_owner_and_mode_and_reloads(pushed: Pushed) -> None:
    pushed.ca.ok("crl")
    newer = (pushed.ca.dir / "publish" / "crl.pem").read_bytes()
    done = _receive(pushed.node, newer)
    assert done.returncode == 0, done.stderr
    installed = pushed.node / "crl.pem"
    assert installed.read_bytes() == newer
    assert oct(installed.stat().st_mode & 0o777) == oct(0o640)
    assert (pushed.node / "reloaded").exists()
    # The same push again (a retry after a lost answer) is accepted: nothing older, nothing different.
    (pushed.node / "reloaded").unlink()
    assert _receive(pushed.node, newer).returncode == 0
    assert (pushed.node / "reloaded").exists()


def test_the_receiver_runs_as_its_own_unprivileged_user_and_keeps_the_owner(
    pushed: Pushed, python_for_others: Path
) -> None:
    """As docs/ca.md sets a node up: a user that owns the CRL's directory, not root."""
    need_root()
    setpriv = need_binary("setpriv")
    nobody = pwd.getpwnam("nobody")
    pushed.ca.ok("crl")
    newer = (pushed.ca.dir / "publish" / "crl.pem").read_bytes()
    with traversable_dir("crl-node-") as shared:
        node = shared / "node"
        node.mkdir(mode=0o755)
        shutil.copy(pushed.node / "chain.pem", node / "chain.pem")
        os.chmod(node / "chain.pem", 0o644)
        (node / "crl.pem").write_bytes(pushed.current)
        for path in (node, node / "crl.pem"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        os.chmod(node / "crl.pem", 0o640)
        # As nobody, from the installed copy (the checkout may sit where nobody cannot enter).
        receiver = receiver_argv(node, f"touch {node / 'reloaded'}")[1:]
        done = subprocess.run(
            [setpriv, f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
             str(python_for_others), *receiver],
            input=newer, cwd="/", capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        st = (node / "crl.pem").stat()
        assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (nobody.pw_uid, nobody.pw_gid, oct(0o640))
        assert (node / "crl.pem").read_bytes() == newer
        assert (node / "reloaded").exists()


def test_a_failed_reload_exits_3_with_the_newer_crl_installed(pushed: Pushed) -> None:
    pushed.ca.ok("crl")
    newer = (pushed.ca.dir / "publish" / "crl.pem").read_bytes()
    done = subprocess.run(
        receiver_argv(pushed.node, "false"),
        input=newer,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3
    assert b"CRL installed, but the reload command exited 1" in done.stderr
    assert (pushed.node / "crl.pem").read_bytes() == newer


# -- two web nodes: sshd + Apache each ----------------------------------------------------------------


@dataclass
class Node:
    name: str
    dir: Path
    ssh_port: int
    known_hosts: Path
    apache: PrivateApache
    sshd: subprocess.Popen[bytes]

    def config_line(self, identity: Path) -> str:
        return (
            f'{{name = "{self.name}", host = "127.0.0.1", port = {self.ssh_port}, user = "root", '
            f'known_hosts = "{self.known_hosts}", identity = "{identity}"}}'
        )

    def serves(self, client: tuple[Path, Path], chain: Path) -> bool:
        """True if this node's Apache answers a request made with `client`'s certificate (any HTTP
        status: no web app runs behind it); False if the TLS handshake refuses the certificate."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=chain)
        ctx.load_cert_chain(*client)
        try:
            with (
                socket.create_connection(("127.0.0.1", self.apache.settings.port), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                tls.sendall(b"HEAD /login HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                head = tls.recv(64)  # TLS 1.3: a refused client certificate shows up at this read
        except (ssl.SSLError, OSError):
            return False
        return head.startswith(b"HTTP/1.1 ")


@dataclass
class Cluster:
    ca: CA
    nodes: list[Node]
    identity: Path

    @property
    def chain(self) -> Path:
        return self.ca.dir / "publish" / "chain.pem"


@pytest.fixture
def cluster(make_ca: Callable[..., CA], tmp_path: Path) -> Iterator[Cluster]:
    need_root()
    sshd_binary, apache2 = need_binary("sshd"), need_binary("apache2")
    need_binary("ssh")
    ca = make_ca()
    ca.ok("server", "localhost", "127.0.0.1", "--out-dir", str(ca.work))
    push_dir = tmp_path / "ca-push"
    push_dir.mkdir(mode=0o700)
    ca_pub = keygen(push_dir / "id_ed25519")
    with (
        traversable_dir("crl-push-") as shared,
        _started_nodes(ca, shared, ca_pub, sshd_binary, apache2) as nodes,
    ):
        cluster = Cluster(ca, nodes, push_dir / "id_ed25519")
        text = (ca.dir / "config.toml").read_text()
        lines = ",\n    ".join(n.config_line(cluster.identity) for n in nodes)
        (ca.dir / "config.toml").write_text(text.replace("crl_nodes = []", f"crl_nodes = [\n    {lines},\n]"))
        hook = ["env", "-C", str(ROOT), sys.executable, "-m", "ca", "--ca-dir", str(ca.dir), "push-crl"]
        set_config(ca.dir, reload_command=hook)
        yield cluster


@contextlib.contextmanager
def _started_nodes(ca: CA, shared: Path, ca_pub: str, sshd_binary: str, apache2: str) -> Iterator[list[Node]]:
    """web1 and web2: each its own chain and CRL, sshd (host key pinned in its own known_hosts) and
    Apache; the CA's key may only run the receiver, which reloads that node's Apache."""
    with contextlib.ExitStack() as stack:
        nodes = []
        for name in ("web1", "web2"):
            base = shared / name
            install_node_files(ca, base)
            settings = Settings(
                run_dir=base / "apache",
                port=free_port(),
                web_socket=base / "web" / "gunicorn.sock",  # no web app: Apache answers 503
                tls_cert=ca.work / "localhost.crt.pem",
                tls_key=ca.work / "localhost.key.pem",
                client_ca=base / "chain.pem",
                crl=base / "crl.pem",
            )
            apache = stack.enter_context(PrivateApache(settings, binary=apache2))
            port = free_port()
            host_pub = keygen(base / "host_ed25519")
            known_hosts = base / "known_hosts"
            known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
            forced = shlex.join(receiver_argv(base, f"/bin/kill -USR1 {apache.pid}"))
            options = f'restrict,from="127.0.0.1",command="cd {ROOT} && exec {forced}"'
            (base / "authorized_keys").write_text(f"{options} {ca_pub}\n")
            conf = root_sshd_config(base, port=port, root_login="forced-commands-only")
            sshd = stack.enter_context(running_sshd(sshd_binary, conf, port, base / "sshd.log"))
            nodes.append(Node(name, base, port, known_hosts, apache, sshd))
        yield nodes


def _wait_refused(cluster: Cluster, client: tuple[Path, Path], nodes: list[Node], start: float) -> float:
    """Seconds from `start` until every node in `nodes` refuses `client`."""
    while any(n.serves(client, cluster.chain) for n in nodes):
        assert time.monotonic() - start < LIMIT_SECONDS, "a node still accepts a revoked certificate"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_revocation_reaches_both_nodes_apache_within_a_minute(cluster: Cluster, tmp_path: Path) -> None:
    ca = cluster.ca
    alice = unpack_bundle(*ca.issue("alice")[:2], tmp_path)
    bob = unpack_bundle(*ca.issue("bob")[:2], tmp_path)
    for node in cluster.nodes:
        assert node.serves(alice, cluster.chain)
        assert node.serves(bob, cluster.chain)

    start = time.monotonic()
    result = ca.ok("revoke", "alice", "--reason", "affiliationChanged")  # hook: push-crl to both
    took = _wait_refused(cluster, alice, cluster.nodes, start)
    print(f"\nrevocation to refusal on both web nodes: {took:.2f} s (limit {LIMIT_SECONDS} s)")
    assert took < LIMIT_SECONDS
    assert "CRL published" in result.output
    for node in cluster.nodes:
        assert (node.dir / "crl.pem").read_bytes() == (ca.dir / "publish" / "crl.pem").read_bytes()
        assert oct((node.dir / "crl.pem").stat().st_mode & 0o777) == oct(0o644)
        assert node.serves(bob, cluster.chain)  # only alice's certificate


def test_a_node_that_is_down_is_named_and_the_other_still_gets_the_crl(
    cluster: Cluster, tmp_path: Path
) -> None:
    ca = cluster.ca
    web1, web2 = cluster.nodes
    alice = unpack_bundle(*ca.issue("alice")[:2], tmp_path)
    before = (web2.dir / "crl.pem").read_bytes()
    web2.sshd.terminate()
    web2.sshd.wait(timeout=10)

    start = time.monotonic()
    result = ca.run("revoke", "alice", "--reason", "affiliationChanged")
    assert result.exit_code == 3, result.output
    message = result.stderr
    print(f"\nthe CA's report with web2 down ({time.monotonic() - start:.2f} s):\n{message}")
    assert message.count("\n") == 1
    assert f"web2 (127.0.0.1:{web2.ssh_port}): ssh failed" in message
    assert "1 of 2 web node(s) still serve the OLD CRL" in message
    assert "web1" not in message
    took = _wait_refused(cluster, alice, [web1], start)
    print(f"revocation to refusal on web1: {took:.2f} s")
    assert (web2.dir / "crl.pem").read_bytes() == before
    assert web2.serves(alice, cluster.chain)  # web2 still has the old CRL: what the CA reported
    assert '"event": "ca.reload_failed"' in (ca.dir / "ops.log").read_text()


def test_a_node_whose_host_key_is_not_the_pinned_one_gets_nothing(cluster: Cluster, tmp_path: Path) -> None:
    web1, web2 = cluster.nodes
    impostor = keygen(tmp_path / "impostor_ed25519")
    web2.known_hosts.write_text(f"[127.0.0.1]:{web2.ssh_port} {impostor}\n")
    before = (web2.dir / "crl.pem").read_bytes()
    assert cluster.ca.run("crl").exit_code == 3  # a newer CRL; the hook's push-crl fails for web2 only
    done = subprocess.run(
        [sys.executable, "-m", "ca", "--ca-dir", str(cluster.ca.dir), "push-crl"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3
    assert f"web1 (127.0.0.1:{web1.ssh_port}): CRL installed, Apache reloaded" in done.stdout
    assert f"web2 (127.0.0.1:{web2.ssh_port}): ssh failed: Host key verification failed" in done.stderr
    assert (web2.dir / "crl.pem").read_bytes() == before
    assert "Accepted publickey" not in (web2.dir / "sshd.log").read_text()  # refused before authenticating

    # A pin that others may rewrite is no pin: refused before ssh runs.
    web1.known_hosts.chmod(0o666)
    again = subprocess.run(
        [sys.executable, "-m", "ca", "--ca-dir", str(cluster.ca.dir), "push-crl"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert f"web1 (127.0.0.1:{web1.ssh_port}): {web1.known_hosts} is writable by others" in again.stderr
