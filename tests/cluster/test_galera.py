"""The three-node Galera cluster of the multi-node deployment: it forms, replicates, keeps strangers
out of its TLS links and takes a crashed node back by IST. Real mariadbd, Galera, rsync and stunnel
in network namespaces; nothing leaves them."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.galera import Galera, node_certificate
from tests.cluster.lan import Lan
from tests.fixtures.pki import TestCA
from tests.support import LogMark, need_root

pytestmark = pytest.mark.cluster

DB = ["db1", "db2", "db3"]


@pytest.fixture(scope="module")
def lan() -> Iterator[Lan]:
    need_root()
    lan = Lan.create([*DB, "rogue", "client"])
    try:
        yield lan
    finally:
        lan.teardown()


@pytest.fixture(scope="module")
def cluster(lan: Lan) -> Iterator[Galera]:
    with Galera(lan, DB) as cluster:
        yield cluster


@pytest.fixture
def synced(cluster: Galera) -> Galera:
    """The cluster as every test starts: three members, all Synced (a test that failed mid-way
    may have left a node down)."""
    for name in DB:
        if not cluster.running(name):
            cluster.start(name)
    cluster.wait_synced()
    return cluster


def test_three_nodes_form_one_cluster_and_a_row_written_on_one_is_read_on_the_others(synced: Galera) -> None:
    for name in DB:
        status = synced.status(name)
        assert status["wsrep_cluster_size"] == "3"
        assert status["wsrep_local_state_comment"] == "Synced"
        assert status["wsrep_cluster_status"] == "Primary"
    with synced.root("db1") as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS t")
        cur.execute("CREATE TABLE IF NOT EXISTS t.rows (id INT PRIMARY KEY, note VARCHAR(40))")
        cur.execute("INSERT INTO t.rows VALUES (1, 'written on db1')")
    for name in ("db2", "db3"):
        with synced.root(name) as conn, conn.cursor() as cur:
            cur.execute("SET SESSION wsrep_sync_wait = 1")  # read after what the cluster committed
            cur.execute("SELECT note FROM t.rows WHERE id = 1")
            assert cur.fetchall() == (("written on db1",),)


# A peer of the group-communication port (4567) from outside the cluster: what it presents, and what
# the node answers. The control row shows the probe itself works: a certificate of the cluster's CA
# gets the group's handshake.
PROBE = r"""
import socket, ssl, sys
host, ca, cert, key = sys.argv[1:]
raw = socket.create_connection((host, 4567), timeout=5)
raw.settimeout(3)
try:
    if cert == "plaintext":
        raw.sendall(b"\x00" * 64)
        data = raw.recv(64)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca)
        ctx.check_hostname = False
        if cert != "none":
            ctx.load_cert_chain(cert, key)
        tls = ctx.wrap_socket(raw)
        data = tls.recv(64)  # TLS 1.3: the server's verdict on our certificate comes after the handshake
    print("answered" if data else "closed")
except (ssl.SSLError, OSError) as e:
    print("refused", type(e).__name__, e)
"""


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("cluster CA", "answered"),
        ("another CA", "refused SSLError [SSL: TLSV1_ALERT_UNKNOWN_CA]"),
        ("none", "refused SSLError [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED]"),
        ("plaintext", "refused TimeoutError"),  # never answered: the node waits for a ClientHello
    ],
)
def test_the_group_port_talks_only_to_a_peer_with_a_certificate_of_the_cluster_ca(
    synced: Galera, lan: Lan, tmp_path: Path, peer: str, expected: str
) -> None:
    ca = {"cluster CA": synced.ca, "another CA": TestCA("Another CA")}.get(peer)
    cert = key = peer
    if ca is not None:
        pem, key_pem = node_certificate(ca, "rogue", lan.address("rogue"))
        cert, key = str(tmp_path / "peer.pem"), str(tmp_path / "peer.key")
        (tmp_path / "peer.pem").write_bytes(pem)
        (tmp_path / "peer.key").write_bytes(key_pem)
    done = lan.run(
        "rogue", [sys.executable, "-c", PROBE, lan.address("db1"), str(synced.ca_file), cert, key], timeout=30
    )
    assert done.stdout.strip().startswith(expected), done.stdout + done.stderr
    assert synced.status("db1")["wsrep_cluster_size"] == "3"


def test_a_mariadbd_with_a_certificate_of_another_ca_cannot_join(synced: Galera, lan: Lan) -> None:
    """The real thing, not a probe: a fourth Galera node configured for this cluster but whose
    certificate comes from another CA."""
    marks = {name: LogMark(synced.nodes[name].error_log) for name in DB}
    intruder = Galera(lan, ["rogue"], ca=TestCA("Another CA"), peers=[lan.address(n) for n in DB])
    with intruder:
        intruder.start("rogue", wait=False)
        log = LogMark(intruder.nodes["rogue"].error_log)
        refused = log.wait_for(lambda text: "certificate verify failed" in text, timeout=20)
        assert "certificate verify failed" in refused, refused[-3000:]
        # The members refused it too (it presented a certificate they cannot verify).
        members = marks["db1"].wait_for(lambda text: "Failed to establish connection" in text, timeout=10)
        assert re.search(r"Failed to establish connection: .*(certificate|unknown ca)", members), members[
            -3000:
        ]
        for name in DB:
            assert synced.status(name)["wsrep_cluster_size"] == "3"
        assert "rogue" not in synced.status("db1")["wsrep_incoming_addresses"]
        intruder.kill("rogue")


CLIENT = r"""
import sys, pymysql
host, password, *ssl = sys.argv[1:]
options = {"ssl_disabled": True} if ssl == ["disabled"] else {"ssl": {"ca": ssl[0]}}
try:
    conn = pymysql.connect(host=host, user="app", password=password, connect_timeout=5, **options)
    with conn.cursor() as cur:
        cur.execute("SHOW STATUS LIKE 'Ssl_version'")
        print("connected", cur.fetchone()[1] or "in the clear")
except pymysql.err.OperationalError as e:
    print("refused", e.args[0], e.args[1][:200])
"""


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("verifies with the cluster CA", "connected TLSv1.3"),
        # The node's certificate names its address: PyMySQL checks the name too (check_hostname).
        ("verifies with another CA", "refused 2003"),
        # require_secure_transport: MariaDB answers with "access denied" (1045), not MySQL's 3159;
        # the same account and password get in over TLS (the first row).
        ("disables TLS", "refused 1045"),
    ],
)
def test_an_application_reaches_a_node_over_verified_tls_only(
    synced: Galera, lan: Lan, tmp_path: Path, client: str, expected: str
) -> None:
    password = "app-test-password"
    with synced.root("db1") as conn, conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'app'@'%%' IDENTIFIED BY %s", (password,))
    (tmp_path / "other.pem").write_bytes(TestCA("Another CA").pem)
    ssl = {
        "verifies with the cluster CA": str(synced.ssl_params()["ca"]),
        "verifies with another CA": str(tmp_path / "other.pem"),
        "disables TLS": "disabled",
    }[client]
    done = lan.run("client", [sys.executable, "-c", CLIENT, lan.address("db2"), password, ssl])
    assert done.stdout.startswith(expected), done.stdout + done.stderr


ENGINE = r"""
import sys
from sqlalchemy import create_engine, text
engine = create_engine(sys.argv[1])
with engine.connect() as conn:
    print(conn.execute(text("SHOW STATUS LIKE 'Ssl_version'")).one()[1])
engine.dispose()
"""


def test_the_url_for_the_application_connects_over_verified_tls(synced: Galera, lan: Lan) -> None:
    password = "app-test-password"  # a throwaway account in a throwaway cluster
    with synced.root("db1") as conn, conn.cursor() as cur:
        cur.execute("CREATE USER IF NOT EXISTS 'app'@'%%' IDENTIFIED BY %s", (password,))
        cur.execute("CREATE DATABASE IF NOT EXISTS t")
        cur.execute("GRANT SELECT ON t.* TO 'app'@'%'")
    url = synced.url("app", password, "t", host=lan.address("db3"))
    done = lan.run("client", [sys.executable, "-c", ENGINE, url], check=False)
    assert done.stdout.strip() == "TLSv1.3", done.stdout + done.stderr[-2000:]


def test_a_crashed_node_rejoins_by_ist_with_what_was_written_while_it_was_down(synced: Galera) -> None:
    with synced.root("db1") as conn, conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS t")
        cur.execute("CREATE TABLE IF NOT EXISTS t.crash (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO t.crash VALUES (0)")
    # A node in step with the others crashes: db3 has applied everything up to here.
    with synced.root("db3") as conn, conn.cursor() as cur:
        cur.execute("SET SESSION wsrep_sync_wait = 1")
        cur.execute("SELECT COUNT(*) FROM t.crash")
        assert cur.fetchone() == (1,)
    synced.kill("db3")
    with synced.root("db1") as conn, conn.cursor() as cur:
        for i in range(1, 21):
            cur.execute("INSERT INTO t.crash VALUES (%s)", (i,))
    assert synced.status("db1")["wsrep_cluster_size"] == "2"
    log = LogMark(synced.nodes["db3"].error_log)
    started = time.monotonic()
    synced.start("db3")
    rejoin = time.monotonic() - started
    # An incremental transfer starts after the position db3 recovered; a full SST would be "0-N".
    text = log.new()
    transfer = re.search(r"Prepared IST receiver for (\d+)-(\d+)", text)
    assert transfer is not None, text[-3000:]
    assert int(transfer.group(1)) > 0, transfer.group(0)
    with synced.root("db3") as conn, conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM t.crash")
        assert cur.fetchone() == (21,)
    print(f"db3 rejoined by IST in {rejoin:.1f} s")
