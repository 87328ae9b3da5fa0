"""The vhost with the real CA tool (`python -m ca`, run in-process as tests/ca does): its published
chain and CRL in the production roles, its reload hook pointed at Apache (SIGUSR1, what
`apachectl graceful` sends). A revocation locks the certificate out at once; others keep working
(no app behind Apache here: a 503 from the proxy means the TLS and ModSecurity gates were passed).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path

from apache.private import PrivateApache, Settings
from tests.apache.stack import traversable_dir
from tests.ca.conftest import CA, make_ca, set_config  # noqa: F401 - make_ca is the fixture
from tests.fixtures.pki import unpack_bundle
from tests.support import free_port, need_binary, need_root


def _get(port: int, chain: Path, client: tuple[Path, Path]) -> int | str:
    ctx = ssl.create_default_context(cafile=str(chain))
    ctx.load_cert_chain(str(client[0]), str(client[1]))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n")
            head = tls.recv(64)  # TLS 1.3: a refused client certificate shows up here
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"
    return int(head.split()[1]) if head else "refused: closed"


def test_a_revocation_through_the_ca_tool_reaches_the_vhost(
    make_ca: Callable[..., CA],  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    need_root()
    need_binary("apache2")
    ca = make_ca()
    ca.ok("server", "localhost", "127.0.0.1", "--out-dir", str(ca.work))
    alice = unpack_bundle(*ca.issue("alice")[:2], tmp_path)
    bob = unpack_bundle(*ca.issue("bob")[:2], tmp_path)
    chain = ca.dir / "publish" / "chain.pem"
    with traversable_dir("apache-realca-") as d:
        settings = Settings(
            run_dir=d / "apache",
            port=free_port(),
            web_socket=d / "web" / "gunicorn.sock",
            tls_cert=ca.work / "localhost.crt.pem",
            tls_key=ca.work / "localhost.key.pem",
            client_ca=chain,
            crl=ca.dir / "publish" / "crl.pem",
        )
        with PrivateApache(settings) as apache:
            set_config(ca.dir, reload_command=["kill", "-USR1", str(apache.pid)])
            assert _get(settings.port, chain, alice) == 503
            assert _get(settings.port, chain, bob) == 503
            ca.ok("revoke", "alice", "--reason", "keyCompromise")  # runs the hook
            deadline = time.monotonic() + 10
            while _get(settings.port, chain, alice) == 503 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert str(_get(settings.port, chain, alice)).startswith("refused")
            assert _get(settings.port, chain, bob) == 503
            # The error log goes through a piped logger (logfilter.py): its line lands a moment later.
            deadline = time.monotonic() + 10
            while "certificate revoked" not in settings.error_log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "certificate revoked" in settings.error_log.read_text()
