"""Real gunicorn terminating TLS with a required client certificate and a CRL, and a real login
through Python's ssl/http.client presenting the certificate."""

from __future__ import annotations

import http.client
import os
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.webapp.conftest import PASSWORDS
from tests.webapp.tls_server import ROOT, Server, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("tls")) as running:
        yield running


def _request(
    conn: http.client.HTTPSConnection,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    body: str | None = None,
) -> tuple[int, dict[str, str], str]:
    headers = {"Host": "127.0.0.1"}
    if cookie:
        headers["Cookie"] = cookie
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()


def test_login_over_real_tls_with_a_client_certificate(server: Server) -> None:
    from urllib.parse import urlencode

    conn = server.connection(server.alice)
    status, headers, page = _request(conn, "GET", "/login")
    assert status == 200, page
    assert "strict-transport-security" in headers
    cookie = headers["set-cookie"].split(";")[0]
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token
    form = urlencode({"csrf_token": token.group(1), "username": "alice", "password": PASSWORDS["alice"]})
    status, headers, _ = _request(conn, "POST", "/login", cookie=cookie, body=form)
    assert status == 302
    new_cookie = headers["set-cookie"].split(";")[0]
    assert new_cookie != cookie
    # Home needs the vault: no keyd runs here, so the page is the clean 503, after a real login.
    status, _, page = _request(conn, "GET", "/", cookie=new_cookie)
    assert status == 503
    assert "vault" in page.lower()
    conn.close()


def _handshake_refused(server: Server, client: tuple[Path, Path] | None) -> bool:
    conn = server.connection(client)
    try:
        _request(conn, "GET", "/login")
    except (ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
        return True
    finally:
        conn.close()
    return False


def test_no_client_certificate_no_connection(server: Server) -> None:
    assert _handshake_refused(server, None)


def test_revoked_certificate_fails_the_handshake(server: Server) -> None:
    assert _handshake_refused(server, server.mallory)


def test_valid_but_unbound_certificate_gets_no_login_page(server: Server) -> None:
    conn = server.connection(server.stranger)
    status, _, page = _request(conn, "GET", "/login")
    conn.close()
    assert status == 403
    assert "<form" not in page


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ({}, "STRONGROOM_TLS_CERT must be set"),
        ({"STRONGROOM_TLS_CERT": "/nonexistent.pem"}, "is not a file"),
        # A Unix socket is the proxy mode; without the flag every login would be refused.
        ({"STRONGROOM_BIND": "unix:/run/x/gunicorn.sock"}, "set STRONGROOM_BEHIND_PROXY=true"),
        (
            {"STRONGROOM_BIND": "unix:/run/x/gunicorn.sock", "STRONGROOM_BEHIND_PROXY": "1"},
            "BEHIND_PROXY=true",
        ),
        # Trusting the certificate header on a TCP port would let any client name any certificate.
        ({"STRONGROOM_BIND": "127.0.0.1:8443", "STRONGROOM_BEHIND_PROXY": "true"}, "needs a unix: bind"),
    ],
)
def test_the_conf_refuses_to_start_half_configured(settings: dict[str, str], refusal: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | settings
    r = subprocess.run(
        [sys.executable, "-c", "import runpy; runpy.run_path('webapp/gunicorn_conf.py')"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert refusal in r.stderr


def test_the_proxy_mode_conf_sets_no_tls_and_no_access_log() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env |= {"STRONGROOM_BIND": "unix:/run/x/gunicorn.sock", "STRONGROOM_BEHIND_PROXY": "true"}
    code = (
        "import runpy; c = runpy.run_path('webapp/gunicorn_conf.py'); "
        "print(c['bind'], c['accesslog'], 'certfile' in c, c['header_map'], repr(c['forwarded_allow_ips']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert r.stdout.split() == ["['unix:/run/x/gunicorn.sock']", "None", "False", "drop", "''"]


def test_parallel_requests_across_workers_keep_one_intact_chain(server: Server) -> None:
    """Two gunicorn worker processes, many clients at once: the chain verifies, no record is lost."""
    import threading

    import sqlalchemy as sa

    from webapp.audit import service
    from webapp.db.engine import make_engine
    from webapp.db.tables import audit_log

    engine = make_engine(server.db_url)

    def pages() -> int:
        with engine.connect() as conn:
            q = (
                sa.select(sa.func.count())
                .select_from(audit_log)
                .where(audit_log.c.event == "auth.login_page")
            )
            return int(conn.execute(q).scalar_one())

    before = pages()
    clients, each = 6, 8
    statuses: list[int] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(each):
            conn = server.connection(server.alice)
            status, _, _ = _request(conn, "GET", "/login")
            conn.close()
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=hammer) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert statuses == [200] * (clients * each)
        assert pages() - before == clients * each
        with engine.connect() as conn:
            result = service.verify(conn)
        assert result.ok, result.problems
    finally:
        engine.dispose()
