"""`make run` as a newcomer uses it: the demo script brings up keyd (unsealed through the real drop
file), the CA, the web app under gunicorn with mTLS; the printed bundle and password log in; a
revocation through the CA locks the certificate out; Ctrl-C stops everything."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from tests.fixtures.pki import unpack_bundle
from tests.support import need_binary

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run-demo.sh"
PY = ROOT / ".venv" / "bin" / "python"


@dataclass
class Demo:
    proc: subprocess.Popen[str]
    dir: Path
    port: int
    output: str
    client: tuple[Path, Path]

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _field(output: str, label: str) -> str:
    found = re.search(rf"^\s*{label}:\s+(\S+)\s*$", output, re.MULTILINE)
    assert found, f"{label!r} not in the demo's banner:\n{output}"
    return found.group(1)


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
    port = _free_port()
    proc, output = start_demo(demo_dir, port)
    # The bundle as a browser would import it: it opens only with the printed password.
    bundle = Path(_field(output, "bundle"))
    with pytest.raises(ValueError, match="password"):
        pkcs12.load_key_and_certificates(bundle.read_bytes(), b"not the password")
    client = unpack_bundle(bundle, _field(output, "bundle password"), demo_dir)
    running = Demo(proc, demo_dir, port, output, client)
    try:
        yield running
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
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


def _answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
    except OSError:
        return False
    return True
