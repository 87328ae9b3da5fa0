"""A web node behind the TCP-passthrough balancer: the shipped vhost with STRONGROOM_BEHIND_BALANCER
(`Settings.proxy_protocol`) takes the employee's address from the PROXY protocol header that HAProxy's
`send-proxy-v2` writes before TLS. The headers are built here byte by byte (no HAProxy): the app
sees the header's address (audit, session binding), and every connection without a well-formed
header is closed before TLS. Without the switch (one server, the default) a PROXY header is refused."""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa

from apache.private import BEHIND_BALANCER, SITE, render
from tests.apache.conftest import PASSWORDS
from tests.apache.stack import ROOT, Stack, log_in, running_stack, traversable_dir
from tests.support import LogMark, free_port

EMPLOYEE = "198.51.100.7"
ELSEWHERE = "203.0.113.9"
NODE = "192.0.2.11"  # the web node's address as the balancer writes it (destination)
# The PROXY protocol v2 signature (haproxy's proxy-protocol.txt, section 2.2).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_PROXY, V2_LOCAL = 0x1, 0x0


def v2(
    src: str = EMPLOYEE,
    dst: str = NODE,
    sport: int = 51234,
    dport: int = 443,
    *,
    version: int = 2,
    command: int = V2_PROXY,
    signature: bytes = V2_SIGNATURE,
    length: int | None = None,
    cut: int | None = None,
) -> bytes:
    """A binary PROXY v2 header (TCP over IPv4 or IPv6 by the addresses' family). `length` overrides
    the address block's stated length, `cut` keeps only that many bytes of the block."""
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x1 if source.version == 4 else 0x2  # AF_INET / AF_INET6, high nibble
    block = source.packed + destination.packed + struct.pack("!HH", sport, dport)
    stated = len(block) if length is None else length
    block = block if cut is None else block[:cut]
    head = bytes([(version << 4) | command, (family << 4) | 0x1])  # 0x1: STREAM
    return signature + head + struct.pack("!H", stated) + block


def v1(
    src: str = EMPLOYEE, dst: str = NODE, sport: int = 51234, dport: int = 443, proto: str = "TCP4"
) -> bytes:
    """The text PROXY v1 header (haproxy's `send-proxy`)."""
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


class Proxied(http.client.HTTPSConnection):
    """An HTTPS connection that writes `prefix` on the TCP connection before TLS, as the balancer
    does; then TLS with the client certificate of `ctx`."""

    def __init__(self, port: int, ctx: ssl.SSLContext, prefix: bytes, *, eof: bool = False) -> None:
        super().__init__("127.0.0.1", port, context=ctx, timeout=10)
        self.ctx, self.prefix, self.eof = ctx, prefix, eof

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        assert self.sock is not None
        self.sock.sendall(self.prefix)
        if self.eof:
            self.sock.shutdown(socket.SHUT_WR)  # the header is all there will ever be
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.host)


def get(
    stack: Stack, name: str, prefix: bytes, path: str = "/login", *, cookie: str = "", eof: bool = False
) -> int:
    """The status of GET `path` over a connection opened with `prefix`; raises if there is no answer."""
    conn = Proxied(stack.port, stack.ssl_context(name), prefix, eof=eof)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def refused(stack: Stack, prefix: bytes, *, eof: bool = False) -> bool:
    """True when a connection opened with `prefix` gets no HTTP answer at all."""
    try:
        get(stack, "alice", prefix, eof=eof)
    except (ssl.SSLError, ConnectionError, OSError, http.client.HTTPException):
        return True
    return False


def audit_rows(stack: Stack) -> list[dict[str, object]]:
    engine = sa.create_engine(stack.db_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM audit_log ORDER BY seq"))]
    finally:
        engine.dispose()


def ips_seen(stack: Stack, prefix: bytes) -> set[object]:
    """The addresses the app audited for one request of an unbound certificate (refused with a 403
    and an audit record naming the address it came from)."""
    before = len(audit_rows(stack))
    assert get(stack, "stranger", prefix) == 403
    rows = audit_rows(stack)[before:]
    assert rows
    return {r["ip"] for r in rows}


@pytest.fixture(scope="module")
def node() -> Iterator[Stack]:
    """The stack as a web node behind the balancer (`Settings.proxy_protocol`)."""
    with traversable_dir() as d, running_stack(d / "stack", proxy_protocol=True) as running:
        running.add_user("alice", "clerk", PASSWORDS["alice"])
        yield running


# --- the switch ----------------------------------------------------------------------------------


def test_the_site_reads_proxy_headers_only_behind_the_switch() -> None:
    site = SITE.read_text()
    lines = [ln.strip() for ln in site.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    at = lines.index("RemoteIPProxyProtocol On")
    assert lines[at - 1 : at + 2] == [
        f"<IfDefine {BEHIND_BALANCER}>",
        "RemoteIPProxyProtocol On",
        "</IfDefine>",
    ]
    assert sum("RemoteIP" in ln for ln in lines) == 1
    # No client-sent header ever becomes the address (X-Forwarded-For is dropped, never trusted).
    assert not re.search(r"^\s*RemoteIP(Header|TrustedProxy|InternalProxy)", site, re.MULTILINE)


def test_render_defines_the_switch_only_when_asked(node: Stack) -> None:
    settings = node.apache.settings
    assert f"Define {BEHIND_BALANCER}\n" in render(settings)
    assert BEHIND_BALANCER not in render(replace(settings, proxy_protocol=False))


# --- the employee's address from the header ------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seen"),
    [
        pytest.param(v2(), EMPLOYEE, id="v2-tcp4"),
        pytest.param(v2("2001:db8:100::7", "2001:db8::11"), "2001:db8:100::7", id="v2-tcp6"),
        pytest.param(v1(), EMPLOYEE, id="v1-tcp4"),
        pytest.param(v1("2001:db8:100::7", "2001:db8::11", proto="TCP6"), "2001:db8:100::7", id="v1-tcp6"),
        # LOCAL: the balancer speaking for itself (its own checks): the real peer stays the address.
        pytest.param(v2(command=V2_LOCAL), "127.0.0.1", id="v2-local-keeps-the-peer"),
        # Measured leniency of mod_remoteip: a v1 port is not range-checked. Harmless (the app uses
        # the address only, and only the balancer can write a header); recorded so a change shows.
        pytest.param(v1(sport=70000), EMPLOYEE, id="v1-port-out-of-range-is-not-checked"),
    ],
)
def test_the_app_sees_the_address_from_the_header(node: Stack, header: bytes, seen: str) -> None:
    assert ips_seen(node, header) == {seen}


def test_a_login_and_its_session_are_bound_to_the_employee_address(node: Stack) -> None:
    conn = Proxied(node.port, node.ssl_context("alice"), v2())
    try:
        session = log_in(conn, "alice", PASSWORDS["alice"])
    finally:
        conn.close()
    logins = [r for r in audit_rows(node) if r["actor"] == "alice" and r["outcome"] == "success"]
    assert {r["ip"] for r in logins} == {EMPLOYEE}
    # The session works on a new connection from the same employee (another source port) ...
    assert session
    assert get(node, "alice", v2(sport=40000), "/", cookie=session) == 200
    # ... and not from another address: the session is bound to the one the header gave.
    before = len(audit_rows(node))
    assert get(node, "alice", v2(ELSEWHERE), "/", cookie=session) != 200
    ended = [r for r in audit_rows(node)[before:] if r["detail"] == "ip_changed"]
    assert ended
    assert {r["ip"] for r in ended} == {ELSEWHERE}


def test_the_access_log_names_the_employee_address(node: Stack) -> None:
    access = LogMark(node.apache.settings.access_log)
    assert get(node, "alice", v2("198.51.100.77")) == 200
    line = access.wait_for(lambda t: "198.51.100.77" in t)
    assert " 127.0.0.1 " not in line


# --- hostile inputs: no HTTP exchange at all -----------------------------------------------------


def _flipped_signature() -> bytes:
    return V2_SIGNATURE[:-1] + b"\x0b"


HOSTILE = [
    pytest.param(b"", False, id="tls-first-no-header"),
    pytest.param(v2(signature=_flipped_signature()), False, id="v2-bogus-signature"),
    pytest.param(v2(signature=b"\r\n\r\n\x00\r\nQUIT"), False, id="v2-signature-one-byte-short"),
    pytest.param(v2(version=1), False, id="v2-version-1"),
    pytest.param(v2(version=3), False, id="v2-version-3"),
    pytest.param(v2(command=0xF), False, id="v2-unknown-command"),
    pytest.param(v2(length=4, cut=4), False, id="v2-address-block-too-short-for-ipv4"),
    # The header says 12 bytes, 6 follow: the next 6 are TLS's ClientHello, and TLS breaks.
    pytest.param(v2(cut=6), False, id="v2-truncated-then-tls"),
    pytest.param(v2(cut=6), True, id="v2-truncated-then-eof"),
    pytest.param(v2()[:10], True, id="v2-cut-inside-the-signature"),
    pytest.param(V2_SIGNATURE, True, id="v2-signature-alone"),
    # A client behind the real balancer trying its own header: it arrives as the TLS stream.
    pytest.param(v2() + v2(ELSEWHERE), False, id="v2-a-second-header"),
    pytest.param(v1() + v1(ELSEWHERE), False, id="v1-a-second-header"),
    pytest.param(v1(src="198.51.100.999"), False, id="v1-not-an-address"),
    pytest.param(v1(src="2001:db8::7"), False, id="v1-tcp4-with-an-ipv6-address"),
    pytest.param(v1(proto="TCP5"), False, id="v1-unknown-protocol"),
    pytest.param(v1()[:-2], False, id="v1-without-crlf-then-tls"),
    pytest.param(v1()[:-2], True, id="v1-without-crlf-then-eof"),
    pytest.param(b"PROXY " + b"9" * 120 + b"\r\n", False, id="v1-longer-than-107-bytes"),
    pytest.param(b"proxy TCP4 198.51.100.7 192.0.2.11 51234 443\r\n", False, id="v1-lowercase"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True, id="plain-http"),
]


@pytest.mark.parametrize(("prefix", "eof"), HOSTILE)
def test_a_connection_without_a_valid_header_is_closed(node: Stack, prefix: bytes, eof: bool) -> None:
    before = len(audit_rows(node))
    assert refused(node, prefix, eof=eof)
    assert len(audit_rows(node)) == before  # nothing reached the app
    assert get(node, "alice", v2()) == 200  # and the node still serves the balancer


@pytest.mark.parametrize("prefix", [pytest.param(v2(cut=6), id="v2"), pytest.param(v1()[:-2], id="v1")])
def test_a_header_left_unfinished_is_dropped_within_the_handshake_timeout(node: Stack, prefix: bytes) -> None:
    # The PROXY header is read under RequestReadTimeout's handshake limit (5 s): a stalled sender
    # holds a worker no longer than a stalled TLS handshake does.
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(prefix)
        started = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - started < 8


# --- one server (the default): a PROXY header is not understood ----------------------------------


@pytest.mark.parametrize("prefix", [pytest.param(v2(), id="v2"), pytest.param(v1(), id="v1")])
def test_without_the_switch_a_proxy_header_is_refused(stack: Stack, prefix: bytes) -> None:
    assert BEHIND_BALANCER not in stack.apache.settings.conf.read_text()
    before = len(audit_rows(stack))
    assert refused(stack, prefix)
    assert len(audit_rows(stack)) == before
    # The same client without the header is served as before, from its real address.
    assert ips_seen(stack, b"") == {"127.0.0.1"}


# --- the launcher's flag -------------------------------------------------------------------------


def test_the_cli_flag_turns_the_switch_on(node: Stack) -> None:
    s = node.apache.settings
    port = free_port()
    with traversable_dir("apache-cli-") as d:
        argv = [
            sys.executable, "-m", "apache.private", "run", "--proxy-protocol",
            "--port", str(port), "--run-dir", str(d / "apache"), "--web-socket", str(s.web_socket),
            "--tls-cert", str(s.tls_cert), "--tls-key", str(s.tls_key), "--client-ca", str(s.client_ca),
            "--crl", str(s.crl),
        ]  # fmt: skip
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().startswith(f"apache listening on https://127.0.0.1:{port}")
            assert f"Define {BEHIND_BALANCER}\n" in Path(d / "apache" / "httpd.conf").read_text()
            other = replace(node, port=port)
            assert ips_seen(other, v2()) == {EMPLOYEE}
            assert refused(other, b"")
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0
            if proc.stdout:
                proc.stdout.close()
