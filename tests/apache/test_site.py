"""The shipped vhost in front of the real app, keyd and gunicorn (tests/apache/stack.py): every
promise of the front door, with hostile inputs as tables."""

from __future__ import annotations

import http.client
import os
import pwd
import re
import socket
import ssl
import stat
import time
from pathlib import Path
from urllib.parse import quote, urlencode

import psutil
import pytest
import sqlalchemy as sa

from ops.checks.access import parse_line
from tests.apache.conftest import PASSWORDS
from tests.apache.stack import Stack, log_in
from tests.fixtures.pki import TestCA
from tests.support import LogMark

# A Luhn-valid test card number: it must never reach any Apache or ModSecurity log.
TEST_PAN = "4111111111111111"
SQLI = "1' OR '1'='1"
XSS = "<script>alert(1)</script>"


def send(
    stack: Stack,
    name: str | None,
    method: str,
    path: str,
    *,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPResponse, str]:
    conn = stack.connection(name)
    try:
        all_headers = dict(headers or {})
        if body is not None:
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        conn.request(method, path, body=body, headers=all_headers)
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        return resp.status, resp, text
    finally:
        conn.close()


def get_with(stack: Stack, ctx: ssl.SSLContext) -> int:
    conn = http.client.HTTPSConnection("127.0.0.1", stack.port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/login")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def folded(pem: bytes) -> str:
    """A PEM as mod_headers forwards it (newlines folded into spaces): what a forger would send."""
    return pem.decode().strip().replace("\n", " ")


def audit_rows(stack: Stack) -> list[dict[str, object]]:
    engine = sa.create_engine(stack.db_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.text("SELECT * FROM audit_log ORDER BY seq"))]
    finally:
        engine.dispose()


def serial_of(stack: Stack, name: str) -> str:
    stack.client(name)
    return format(stack.issued[name].cert.serial_number, "x")


# --- client certificates -------------------------------------------------------------------------


def test_a_valid_certificate_gets_the_login_page(stack: Stack) -> None:
    status, resp, page = send(stack, "alice", "GET", "/login")
    assert status == 200, page
    assert "Log in" in page
    assert "alice" in page  # the app saw alice's certificate through the proxy header
    assert resp.getheader("Set-Cookie", "").startswith("__Host-strongroom=")


def test_no_client_certificate_is_refused_in_the_handshake(stack: Stack) -> None:
    # TLS 1.2 fails in the handshake, TLS 1.3 at the first read: either way no HTTP answer.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        send(stack, None, "GET", "/login")


def test_a_certificate_from_another_ca_is_refused(stack: Stack, tmp_path: Path) -> None:
    other = TestCA("Not Our CA")
    cert, key = other.issue("alice").write(tmp_path, "alice-elsewhere")
    ctx = ssl.create_default_context(cafile=str(stack.ca_file))
    ctx.load_cert_chain(str(cert), str(key))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        get_with(stack, ctx)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_revoked_certificate_is_refused_after_the_crl_reload(stack: Stack, version: ssl.TLSVersion) -> None:
    name = f"rita-{version.name}"
    stack.add_user(name, "clerk", "Velvet-Orchard-Granite-2963")
    assert send(stack, name, "GET", "/login")[0] == 200
    errors = LogMark(stack.apache_error_log)
    stack.revoke(name)  # new CRL + SIGUSR1, as ca/'s reload hook does
    ctx = stack.ssl_context(name)
    ctx.minimum_version = ctx.maximum_version = version
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        get_with(stack, ctx)
    assert "certificate revoked" in errors.wait_for(lambda t: "certificate revoked" in t)
    # Others are unaffected by the reload.
    assert send(stack, "alice", "GET", "/login")[0] == 200


# TLS 1.0/1.1 and weak ciphers: Python's ssl module no longer offers them; sslyze checks them
# (tests/apache/test_tls_scan.py).


# --- identity headers ----------------------------------------------------------------------------

CERT_HEADER_SPELLINGS = [
    "X-Strongroom-Client-Cert",
    "x-strongroom-client-cert",
    "X-STRONGROOM-CLIENT-CERT",
    "X_Strongroom_Client_Cert",
    "X-Strongroom_Client-Cert",
    "x_strongroom-client_cert",
]


@pytest.mark.parametrize("header", CERT_HEADER_SPELLINGS)
def test_a_forged_certificate_header_is_ignored(stack: Stack, header: str) -> None:
    # stranger holds a valid certificate from our CA that is bound to no user; the forged header
    # carries alice's (bound) certificate. The app must see stranger's, and refuse the login page.
    before = len(audit_rows(stack))
    status, _, page = send(
        stack, "stranger", "GET", "/login", headers={header: folded(stack.cert_pem("alice"))}
    )
    assert status == 403
    assert "alice" not in page
    refused = [r for r in audit_rows(stack)[before:] if r["resource"] == "/login"]
    assert refused
    assert {r["cert_serial"] for r in refused} == {serial_of(stack, "stranger")}
    assert {r["detail"] for r in refused} == {"certificate_not_bound"}


IP_HEADER_SPELLINGS = [
    "X-Strongroom-Client-IP",
    "x-strongroom-client-ip",
    "X_Strongroom_Client_IP",
    "X-Strongroom_Client-IP",
    "X-Forwarded-For",
    "Forwarded",
]


@pytest.mark.parametrize("header", IP_HEADER_SPELLINGS)
def test_a_forged_client_ip_header_is_ignored(stack: Stack, header: str) -> None:
    before = len(audit_rows(stack))
    forged = "for=10.66.66.66" if header == "Forwarded" else "10.66.66.66"
    status, _, _ = send(stack, "stranger", "GET", "/login", headers={header: forged})
    assert status == 403
    rows = audit_rows(stack)[before:]
    assert rows
    assert {r["ip"] for r in rows} == {"127.0.0.1"}


def test_a_forged_header_does_not_replace_a_real_certificate(stack: Stack) -> None:
    stack.client("bob")  # a certificate of our CA that alice does not hold
    status, _, page = send(
        stack, "alice", "GET", "/login", headers={"X-Strongroom-Client-Cert": folded(stack.cert_pem("bob"))}
    )
    assert status == 200
    assert "alice" in page


# --- methods -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "PUT", "DELETE", "OPTIONS", "PATCH", "PROPFIND", "TRACK"])
def test_other_methods_get_405_and_an_error_log_line(stack: Stack, method: str) -> None:
    errors = LogMark(stack.apache_error_log)
    review = LogMark(stack.review_log)
    status, resp, page = send(stack, "alice", method, "/login", body="x=1")
    assert status == 405
    assert "Log in" not in page  # never reached the app
    assert resp.getheader("Strict-Transport-Security") == "max-age=63072000; includeSubDomains"
    line = errors.wait_for(lambda t: "AH01623" in t)
    assert f"AH01623: client method denied by server configuration: '{method}'" in line
    # The review log counts it against alice's certificate (ops/checks/access.py).
    got = review.wait_for(lambda t: f"\t{method}\t405" in t)
    assert f"\talice\t{method}\t405" in got


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_get_head_post_reach_the_app(stack: Stack, method: str) -> None:
    status, _, _ = send(stack, "alice", method, "/login", body="" if method == "POST" else None)
    # A POST without a CSRF token is the app's refusal (400/200 with an error), not Apache's 405.
    assert status in {200, 400}


# --- ModSecurity + CRS ---------------------------------------------------------------------------

PROBES = [
    pytest.param("GET", f"/login?q={quote(SQLI)}", None, id="sqli-query"),
    pytest.param(
        "POST", "/login", urlencode({"username": "admin' OR 1=1-- ", "password": "x"}), id="sqli-form"
    ),
    pytest.param("GET", f"/login?q={quote(XSS)}", None, id="xss-query"),
    pytest.param("POST", "/login", urlencode({"username": '<img src=x onerror="alert(1)">'}), id="xss-form"),
    pytest.param("GET", "/login?file=../../../../etc/passwd", None, id="path-traversal"),
    # A chained CRS rule (920450, httpoxy): proves the redaction rewrite kept its chain.
    pytest.param("GET", "/login", {"Proxy": "http://evil.example/"}, id="restricted-header"),
    pytest.param("POST", "/login", f"q={quote(TEST_PAN + SQLI)}", id="sqli-carrying-a-pan"),
]


@pytest.mark.parametrize(("method", "path", "body"), PROBES)
def test_attack_probes_get_403_from_modsecurity(
    stack: Stack, method: str, path: str, body: str | dict[str, str] | None
) -> None:
    errors = LogMark(stack.apache_error_log)
    headers, form = (body, None) if isinstance(body, dict) else (None, body)
    status, _, page = send(stack, "alice", method, path, body=form, headers=headers)
    assert status == 403
    assert "Log in" not in page
    logged = errors.wait_for(lambda t: "ModSecurity: Access denied" in t)
    assert "ModSecurity: Access denied with code 403" in logged  # what ops/checks/logs.py counts
    assert "value withheld" in logged
    assert TEST_PAN not in logged


def test_the_audit_log_records_denials_without_bodies_or_request_lines(stack: Stack) -> None:
    send(stack, "alice", "POST", "/login", body=urlencode({"username": SQLI, "marker": "body-marker-7f3a"}))
    audit = LogMark(stack.modsec_audit_log)
    audit.offset = 0
    text = audit.wait_for(lambda t: "-Z--" in t)
    sections = dict(re.findall(r"^--[0-9a-f]+-([A-Z])--\n(.*?)(?=^--[0-9a-f]+-[A-Z]--$)", text, re.M | re.S))
    # Our parts; ModSecurity adds an E header of its own for some denials, always empty here
    # (SecResponseBodyAccess Off).
    assert set(sections) <= set("AEHKZ"), sections.keys()
    assert sections.get("E", "").strip() == ""
    assert "body-marker-7f3a" not in text
    assert "Cookie" not in text


def test_no_card_number_in_any_apache_or_modsecurity_log(stack: Stack) -> None:
    form = {"username": "alice", "password": "wrong", "pan": TEST_PAN}
    blocked = {**form, "q": SQLI}
    assert send(stack, "alice", "POST", "/login", body=urlencode(blocked))[0] == 403
    assert send(stack, "alice", "POST", "/login", body=urlencode(form))[0] != 403  # passed ModSecurity
    assert send(stack, "alice", "GET", f"/login?pan={TEST_PAN}&q={quote(XSS)}")[0] == 403
    # The card number inside the very value that trips the CRS (its logdata would echo it).
    assert send(stack, "alice", "POST", "/login", body=urlencode({"q": TEST_PAN + SQLI}))[0] == 403
    assert send(stack, "alice", "GET", f"/login?q={quote(XSS + TEST_PAN)}")[0] == 403
    assert send(stack, "alice", "GET", f"/login?pan={TEST_PAN}")[0] != 403  # the app's own 400
    assert send(stack, "alice", "PUT", f"/login?pan={TEST_PAN}", body=urlencode(form))[0] == 405
    time.sleep(0.3)  # access lines are written after the response
    spaced = " ".join(TEST_PAN[i : i + 4] for i in range(0, 16, 4))
    scanned = 0
    for path in sorted(stack.apache.settings.run_dir.rglob("*")):
        if path.is_file() and (path.suffix == ".log" or "log" in path.parent.name):
            text = path.read_bytes().decode(errors="replace")
            scanned += 1
            assert TEST_PAN not in text, path
            assert spaced not in text, path
    assert scanned >= 5


# --- the rest of the hardening -------------------------------------------------------------------


def test_plain_http_on_the_https_port_gets_no_app_content(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as s:
        s.sendall(b"GET /login HTTP/1.1\r\nHost: localhost\r\n\r\n")
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    # Apache answers a plain-HTTP request on a TLS port with a bare 400, or just closes.
    assert got == b"" or got.startswith(b"HTTP/1.1 400")
    assert b"Strongroom" not in got
    assert b"Set-Cookie" not in got


def test_the_only_listener_is_tls(stack: Stack) -> None:
    conf = stack.apache.settings.conf.read_text()
    site = (Path(__file__).resolve().parents[2] / "apache" / "strongroom-site.conf").read_text()
    listens = [ln.strip() for ln in (conf + site).splitlines() if ln.strip().startswith("Listen")]
    assert listens == ["Listen ${STRONGROOM_LISTEN_ADDRESS}:${STRONGROOM_LISTEN_PORT} https"]
    parent = psutil.Process(stack.apache.pid)
    pids = {parent.pid} | {c.pid for c in parent.children()}
    ports = {
        getattr(c.laddr, "port", None)
        for c in psutil.net_connections("inet")
        if c.status == "LISTEN" and c.pid in pids
    }
    assert ports == {stack.port}


def test_children_run_as_www_data_and_the_parent_as_root(stack: Stack) -> None:
    www = pwd.getpwnam("www-data")
    all_children = psutil.Process(stack.apache.pid).children()
    # The piped log filters (apache/logfilter.py) run as root, as Apache starts every piped logger
    # before it drops privileges; they only read their pipe and append to their log.
    loggers = [c for c in all_children if any("logfilter.py" in a for a in c.cmdline())]
    # The server's and the vhost's error logs and ModSecurity's audit log, nothing else.
    assert {c.cmdline()[-1] for c in loggers} == {
        str(stack.apache.settings.server_error_log),
        str(stack.apache_error_log),
        str(stack.modsec_audit_log),
    }
    children = [c for c in all_children if c not in loggers]
    assert children
    for child in children:
        assert child.uids().real == www.pw_uid
        assert child.uids().effective == www.pw_uid
        assert child.gids().effective == www.pw_gid
    assert psutil.Process(stack.apache.pid).uids().effective == 0  # binds 443, reads the key


def test_the_socket_directory_only_admits_apaches_group(stack: Stack) -> None:
    d = stack.apache.settings.web_socket.parent
    st = d.stat()
    assert stat.S_IMODE(st.st_mode) == 0o710
    assert st.st_gid == pwd.getpwnam("www-data").pw_gid
    assert st.st_uid != pwd.getpwnam("www-data").pw_uid


def test_no_server_banner_details(stack: Stack) -> None:
    for method, path, want in [
        ("GET", "/login", 200),
        ("PUT", "/login", 405),
        ("GET", f"/?q={quote(SQLI)}", 403),
    ]:
        status, resp, page = send(stack, "alice", method, path, body="x" if method == "PUT" else None)
        assert status == want
        assert resp.getheader("Server") == "Apache"
        assert resp.getheader("X-Powered-By") is None
        assert resp.headers.get_all("Strict-Transport-Security") == ["max-age=63072000; includeSubDomains"]
        assert "Apache/" not in page
        assert "gunicorn" not in page.lower()
        assert "Debian" not in page


@pytest.mark.parametrize(
    "path", ["/static/", "/static", "/login.html", "/index", "/.htaccess", "/server-status"]
)
def test_no_listings_multiviews_or_status_pages(stack: Stack, path: str) -> None:
    status, _, page = send(stack, "alice", "GET", path)
    assert status in {301, 302, 308, 403, 404}
    assert "Index of" not in page
    assert "Apache Server Status" not in page


def test_the_review_log_parses_for_the_watchdog(stack: Stack) -> None:
    send(stack, "alice", "GET", "/login")
    time.sleep(0.2)
    lines = stack.review_log.read_bytes().splitlines()
    parsed = [parse_line(line) for line in lines]
    assert lines
    assert None not in parsed, [ln for ln, p in zip(lines, parsed, strict=True) if p is None]
    serial = f"{stack.issued['alice'].cert.serial_number:X}"
    assert any(p is not None and p.who == f"{serial} alice" and p.status == 200 for p in parsed)


def test_the_access_log_has_no_query_strings(stack: Stack) -> None:
    send(stack, "alice", "GET", "/login?name=secret-query-value")
    time.sleep(0.2)
    text = stack.apache.settings.access_log.read_text()
    assert '"GET /login HTTP/1.1" 200' in text
    assert "secret-query-value" not in text


def test_gunicorn_is_reachable_only_through_apache(stack: Stack) -> None:
    # The app trusts identity headers only on its Unix socket; as www-data (Apache's user) the
    # socket is reachable, as any other unprivileged user it is not.
    sock = stack.apache.settings.web_socket
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.setgid(nobody.pw_gid)
            os.setgroups([])
            os.setuid(nobody.pw_uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            code = 1
        except PermissionError:
            code = 0
        except OSError:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_whole_login_through_the_front_door(stack: Stack) -> None:
    # CSRF token, __Host- cookie, session bound to the IP Apache reports, keyd unsealed: the home
    # page answers. ModSecurity must let a real login form through (no false positive).
    conn = stack.connection("alice")
    try:
        session = log_in(conn, "alice", PASSWORDS["alice"])
        conn.request("GET", "/", headers={"Cookie": session})
        resp = conn.getresponse()
        home = resp.read().decode()
        assert resp.status == 200, home
    finally:
        conn.close()
    logins = [r for r in audit_rows(stack) if r["actor"] == "alice" and r["outcome"] == "success"]
    assert logins
    assert {r["ip"] for r in logins} == {"127.0.0.1"}
    assert {r["cert_serial"] for r in logins} == {serial_of(stack, "alice")}
