"""A real TLS handshake against a server that requires client certificates and checks the CRLs of
the whole chain, configured the way Apache is (chain.pem as CA file, crl.pem, chain check).

An issued employee certificate gets in; once revoked (and the server reloaded with the new CRL,
as the reload hook does for Apache), the same certificate is refused.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

from tests.ca.conftest import CA
from tests.fixtures.pki import unpack_bundle


def _server_context(ca: CA) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ca.work / "localhost.crt.pem", ca.work / "localhost.key.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca.dir / "publish" / "chain.pem")  # SSLCACertificateFile
    ctx.load_verify_locations(cafile=ca.dir / "publish" / "crl.pem")  # SSLCARevocationFile
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN  # SSLCARevocationCheck chain
    return ctx


def _handshake(ca: CA, client_cert: tuple[Path, Path] | None) -> tuple[bytes | None, str | None]:
    """One connection; returns (what the client read, the server's TLS error if any)."""
    server_ctx = _server_context(ca)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server_error: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except (ssl.SSLError, OSError) as e:
            server_error.append(str(e))
        finally:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=ca.dir / "publish" / "chain.pem")
    if client_cert:
        client_ctx.load_cert_chain(*client_cert)
    got: bytes | None = None
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(b"ping")
            got = tls.recv(4)  # TLS 1.3: a refused client certificate shows up here
    except (ssl.SSLError, OSError):
        got = None
    finally:
        thread.join(timeout=10)
        listener.close()
    return got, (server_error[0] if server_error else None)


def test_issued_certificate_gets_in_and_revoked_one_does_not(ca: CA, tmp_path: Path) -> None:
    ca.ok("server", "localhost", "127.0.0.1", "--out-dir", str(ca.work))
    bundle, password, _ = ca.issue("alice")
    client = unpack_bundle(bundle, password, tmp_path)

    assert _handshake(ca, client) == (b"pong", None)

    ca.ok("revoke", "alice", "--reason", "affiliationChanged")
    got, error = _handshake(ca, client)
    assert got in (None, b"")
    assert error is not None
    assert "certificate revoked" in error


def test_no_client_certificate_is_refused(ca: CA) -> None:
    ca.ok("server", "localhost", "--out-dir", str(ca.work))
    got, error = _handshake(ca, None)
    assert got in (None, b"")
    assert error is not None
    assert "certificate" in error


def test_a_service_certificate_also_passes_tls_but_is_marked_as_a_service(ca: CA, tmp_path: Path) -> None:
    """TLS alone admits any client cert of our CA; the web app tells employees from services by OU/policy."""
    ca.ok("server", "localhost", "--out-dir", str(ca.work))
    out = ca.ok("service", "crm", "--out", str(ca.work / "crm.p12")).output
    password = out.split("hand it over separately from the bundle): ")[1].split()[0]
    assert _handshake(ca, unpack_bundle(ca.work / "crm.p12", password, tmp_path)) == (b"pong", None)
