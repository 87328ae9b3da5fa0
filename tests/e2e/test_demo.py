"""`make run` as a newcomer uses it: the demo script brings up keyd (unsealed through the real drop
file), the CA, the web app under gunicorn with mTLS, one user per role (admin, supervisor, clerk,
auditor) and three customers with test card numbers; each user's printed bundle and password log in
(no forced password change: the demo users are made by the scripted bootstrap) and reach their own
pages, and only theirs; a revocation through the CA locks the certificate out; Ctrl-C stops
everything; and a second run adds nothing twice."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.fixtures.pki import unpack_bundle
from tests.support import free_port, need_binary
from webapp import navigation

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run-demo.sh"
PY = ROOT / ".venv" / "bin" / "python"
# The demo's users, each named after their role (scripts/run-demo.sh).
ROLES = ("admin", "supervisor", "clerk", "auditor")
CUSTOMERS = ("C1000001", "C1000002", "C1000003")  # scripts/demo_data.py


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    dir: Path
    port: int
    output: str
    client: tuple[Path, Path]  # the admin's
    clients: dict[str, tuple[Path, Path]] = field(default_factory=dict)  # every demo user's

    def env(self) -> dict[str, str]:
        secret = (self.dir / "secrets" / "flask-secret-key").read_text().strip()
        return {
            **os.environ,
            "STRONGROOM_CA_DIR": str(self.dir / "ca"),
            "STRONGROOM_SECRET_KEY": secret,
            "STRONGROOM_DATABASE_URL": f"sqlite:///{self.dir}/strongroom.db",
            "STRONGROOM_INSTANCE_PATH": str(self.dir / "instance"),
        }

    def ca(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`python -m ca ARGS` as the demo's admin runs it (its issuing passphrase, its CA dir)."""
        passphrase = str(self.dir / "secrets" / "ca-issuing.pass")
        return subprocess.run(
            [str(PY), "-m", "ca", "--passphrase-file", passphrase, *args],
            env=self.env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def connect(self, client: tuple[Path, Path] | None) -> http.client.HTTPSConnection:
        ctx = ssl.create_default_context(cafile=str(self.dir / "ca" / "publish" / "chain.pem"))
        if client:
            ctx.load_cert_chain(str(client[0]), str(client[1]))
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=10)


def _field(output: str, label: str) -> str:
    found = re.search(rf"^\s*{label}:\s+(\S+)\s*$", output, re.MULTILINE)
    assert found, f"{label!r} not in the demo's banner:\n{output}"
    return found.group(1)


def banner_users(output: str) -> dict[str, str]:
    """Each user's part of the banner ("Log in as: NAME (ROLE): ..." and its indented lines), by name."""
    parts = re.split(r"^\s*Log in as:\s+", output, flags=re.MULTILINE)[1:]
    return {part.split()[0]: part.split("\n\n", 1)[0] for part in parts}


def unpack_all(output: str, where: Path) -> dict[str, tuple[Path, Path]]:
    """Every demo user's bundle, opened with its printed password, as a TLS client's PEM files."""
    users = banner_users(output)
    assert sorted(users) == sorted(ROLES), output
    return {
        name: unpack_bundle(Path(_field(part, "bundle")), _field(part, "bundle password"), where)
        for name, part in users.items()
    }


def start_demo(demo_dir: Path, port: int, **env: str) -> tuple[subprocess.Popen[str], str]:
    """run-demo.sh (with extra environment, e.g. DEMO_APACHE) until it says it is ready, or fail the
    test with its output and the tail of its logs."""
    proc = subprocess.Popen(
        [str(SCRIPT)],
        env={**os.environ, "DEMO_DIR": str(demo_dir), "DEMO_PORT": str(port), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip() == "demo ready":
            break
    output = "".join(lines)
    if "demo ready" not in output:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        logs = "".join(f"\n--- {p}\n{p.read_text()[-3000:]}" for p in sorted(demo_dir.glob("*.log")))
        pytest.fail(f"the demo did not start:\n{output}{logs}")
    return proc, output


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    need_binary("openssl")
    if not PY.exists():
        pytest.fail(".venv is missing: run the suite through `make test`")
    demo_dir = tmp_path_factory.mktemp("demo")
    port = free_port()
    proc, output = start_demo(demo_dir, port)
    # The bundle as a browser would import it: it opens only with the printed password.
    bundle = Path(_field(output, "bundle"))
    with pytest.raises(ValueError, match="password"):
        pkcs12.load_key_and_certificates(bundle.read_bytes(), b"not the password")
    client = unpack_bundle(bundle, _field(output, "bundle password"), demo_dir)
    running = Demo(proc, demo_dir, port, output, client, unpack_all(output, demo_dir))
    try:
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def _get(conn: http.client.HTTPSConnection, path: str, cookie: str = "") -> tuple[int, str, str]:
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    r = conn.getresponse()
    return r.status, r.getheader("Set-Cookie") or "", r.read().decode()


def test_the_printed_credentials_log_in(demo: Demo) -> None:
    conn = demo.connect(demo.client)
    status, set_cookie, page = _get(conn, "/login")
    assert status == 200, page
    assert "recorded" in page.lower()  # the notice that every action is recorded
    cookie = set_cookie.split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    form = {"csrf_token": token.group(1), "username": "admin", "password": _field(demo.output, "password")}
    conn.request(
        "POST",
        "/login",
        body=urlencode(form),
        headers={"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"},
    )
    r = conn.getresponse()
    r.read()
    assert r.status == 302
    session = (r.getheader("Set-Cookie") or "").split(";")[0]
    # keyd is unsealed, so the home page answers (a sealed vault would be a 503).
    status, _, page = _get(conn, "/", session)
    assert status == 200, page
    conn.close()


def log_in(demo: Demo, name: str) -> tuple[http.client.HTTPSConnection, str]:
    """`name` logs in with their own certificate and printed password: (connection, session cookie).
    The demo users are made by the scripted bootstrap: the login goes home, not to a forced change."""
    conn = demo.connect(demo.clients[name])
    status, set_cookie, page = _get(conn, "/login")
    assert status == 200, page
    assert f"<strong>{name}</strong>" in page  # the certificate holder
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    password = _field(banner_users(demo.output)[name], "password")
    conn.request(
        "POST",
        "/login",
        body=urlencode({"csrf_token": token.group(1), "username": name, "password": password}),
        headers={"Cookie": set_cookie.split(";")[0], "Content-Type": "application/x-www-form-urlencoded"},
    )
    r = conn.getresponse()
    r.read()
    assert r.status == 302, name
    assert r.getheader("Location") == "/", r.getheader("Location")
    return conn, (r.getheader("Set-Cookie") or "").split(";")[0]


def check_own_pages(demo: Demo, name: str) -> None:
    """`name` (named after their role) sees their role's header links, each opens; the records roles
    find the demo's customers with the cards masked, the others are refused the records."""
    conn, cookie = log_in(demo, name)
    try:
        status, _, home = _get(conn, "/", cookie)
        assert status == 200, home
        assert f'<span class="who">{name} ({name})</span>' in home
        nav = re.search(r'<nav aria-label="Main">(.*?)</nav>', home, re.DOTALL)
        assert nav, home
        links = re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>', nav.group(1))
        assert [label for _, label in links] == [
            label for label, _endpoint, roles in navigation.LINKS if name in roles
        ]
        for href, label in links:
            status, _, page = _get(conn, href, cookie)
            assert status == 200, (name, label, href, page[:500])
        status, _, found = _get(conn, f"/records/?crm_ref={CUSTOMERS[0]}", cookie)
        if name in ("clerk", "supervisor"):
            assert status == 200, found[:500]
            record = re.search(r'href="(/records/[0-9]+)"', found)
            assert record, found
            status, _, page = _get(conn, record.group(1), cookie)
            assert status == 200, page[:500]
            assert "•••• 1111" in page
            assert "•••• 4444" in page
            assert "4111111111111111" not in page
            assert "4111 1111 1111 1111" not in page
        else:
            assert status == 403, (name, status)
    finally:
        conn.close()


def test_the_banner_names_every_role(demo: Demo) -> None:
    users = banner_users(demo.output)
    for name in ROLES:
        assert f"{name} ({name}): " in users[name]
        assert (demo.dir / f"{name}.p12").is_file()
    assert "No password change is asked at the first login" in demo.output
    for ref in CUSTOMERS:
        assert ref in demo.output
    # The customers' cards are named by their last four digits only, never in full.
    assert "4111111111111111" not in demo.output
    assert "•••• 1111" in demo.output


@pytest.mark.parametrize("name", ROLES)
def test_each_demo_user_logs_in_to_their_own_pages(name: str, demo: Demo) -> None:
    check_own_pages(demo, name)


def test_no_client_certificate_no_connection(demo: Demo) -> None:
    conn = demo.connect(None)
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # TLS 1.3 fails at read
            _get(conn, "/login")
    finally:
        conn.close()


def test_keyd_deleted_the_dropped_key(demo: Demo) -> None:
    digest = hashlib.sha256(str(demo.dir).encode()).hexdigest()[:12]
    drop = Path(f"/dev/shm/strongroom-demo-{digest}-ekey")
    assert f"at {drop}" in demo.output or (demo.dir / "keyd-state" / "state.json").exists()
    assert not drop.exists()
    assert not Path(f"{drop}-tmp").exists()


def test_revoking_through_the_ca_locks_the_certificate_out(demo: Demo) -> None:
    done = demo.ca("revoke", "admin", "--reason", "keyCompromise")
    assert done.returncode == 0, done.stderr
    # The web app's binding is revoked at once: even before gunicorn has re-read the CRL, the
    # certificate no longer gets a login page.
    conn = demo.connect(demo.client)
    try:
        status, _, _ = _get(conn, "/login")
    except (ssl.SSLError, ConnectionError, OSError):
        status = 0  # refused in the handshake: the CRL already took effect
    finally:
        conn.close()
    assert status != 200


def test_ctrl_c_stops_everything(demo: Demo) -> None:
    os.killpg(demo.proc.pid, signal.SIGINT)
    assert demo.proc.wait(timeout=30) == 0
    time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", demo.port), timeout=1).close()
    assert not (demo.dir / "keyd-run" / "keyd.sock").exists() or not _answers(
        demo.dir / "keyd-run" / "keyd.sock"
    )


def test_a_second_run_adds_nothing_twice(demo: Demo) -> None:
    """Started again on the same demo dir: the same users, bundles and customers, nothing added."""
    assert demo.proc.poll() is not None, "runs after test_ctrl_c_stops_everything"
    bundles = {name: (demo.dir / f"{name}.p12").read_bytes() for name in ROLES}
    proc, output = start_demo(demo.dir, demo.port)
    try:
        assert "adding the demo" not in output
        assert "issuing" not in output
        for ref in CUSTOMERS:
            assert f"{ref}: already there" in output
        assert banner_users(output) == banner_users(demo.output)  # the same passwords, printed again
        assert {name: (demo.dir / f"{name}.p12").read_bytes() for name in ROLES} == bundles
        users = subprocess.run(
            [str(PY), "-m", "flask", "--app", "webapp", "users", "list"],
            env=demo.env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert sorted(line.split("\t")[0] for line in users.splitlines()) == sorted(ROLES)
        with sqlite3.connect(demo.dir / "strongroom.db") as db:
            refs = [r[0] for r in db.execute("SELECT crm_ref FROM customer_records ORDER BY crm_ref")]
            cards = db.execute("SELECT count(*) FROM cards").fetchone()[0]
        assert refs == list(CUSTOMERS)
        assert cards == 4
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert rc == 0


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
    except OSError:
        return False
    return True
