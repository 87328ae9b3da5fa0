"""A reveal in a real browser (Debian's Chromium driven by Playwright) against real gunicorn over
TLS with a client certificate and a real keyd: the value shows, hides itself again after
REVEAL_HIDE_SECONDS under the strict CSP (reveal.js, no inline script), and nothing trips the CSP."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keyd.client import KeydClient
from tests.keyd.conftest import unsealed_keyd
from tests.support import component_missing, without_hex_ids
from tests.webapp.auth.test_browser import ARGS, CHROMIUM
from tests.webapp.conftest import CHEAP_ARGON2, SECRET
from tests.webapp.records.support import SUPERVISOR_PASSWORD
from tests.webapp.tls_server import Server, serve
from webapp import create_app
from webapp.records import service
from webapp.records.cards import parse_pan

HIDE = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, tuple[Path, Path]]]:
    d = tmp_path_factory.mktemp("reveal-browser")
    with unsealed_keyd() as running:
        extra = {
            "STRONGROOM_KEYD_SOCKET": str(running.keyd.socket),
            "STRONGROOM_REVEAL_HIDE_SECONDS": str(HIDE),
        }
        (d / "srv").mkdir()
        with serve(d / "srv", extra) as server:
            cfg = {
                "SECRET_KEY": SECRET,
                "DATABASE_URL": server.db_url,
                "INSTANCE_PATH": str(d / "instance"),
                **CHEAP_ARGON2,
            }
            client = KeydClient(running.keyd.socket, timeout=5.0)
            app = create_app(cfg, vault=client)
            runner = app.test_cli_runner()
            added = runner.invoke(
                args=["users", "add", "sam", "--role", "supervisor", "--password-stdin"],
                input=SUPERVISOR_PASSWORD + "\n",
            )
            assert added.exit_code == 0, added.output
            cert = server.ca.issue("sam").write(d, "sam")
            assert runner.invoke(args=["certs", "bind", "sam", str(cert[0])]).exit_code == 0
            now = datetime.now(UTC)
            with app.extensions["strongroom"].engine.begin() as conn:
                record_id = service.add_record(conn, "C1234567", actor="seed", now=now)
                card = service.NewCard(parse_pan("4111111111111111"), "Ada Lovelace", "12/2030")
                service.add_card(conn, client, record_id, card, actor="seed", now=now)
            app.extensions["strongroom"].engine.dispose()
            client.close()
            yield server, f"/records/{record_id}", cert


def test_a_revealed_value_hides_itself_in_a_real_browser(
    setup: tuple[Server, str, tuple[Path, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, record_path, (cert, key) = setup
    if not (os.path.exists(CHROMIUM) and shutil.which("chromium")):
        component_missing("chromium is not installed (scripts/debian-packages.txt)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        component_missing("playwright is not installed (requirements-dev.txt)")
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(server.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    base = f"https://127.0.0.1:{server.port}"
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(
            client_certificates=[{"origin": base, "certPath": str(cert), "keyPath": str(key)}]
        )
        page: Any = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "sam")
            page.fill("input[name=password]", SUPERVISOR_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_load_state()
            page.goto(f"{base}{record_path}")
            page.click("text=Reveal number")
            page.wait_for_load_state()
            page.fill("input[name=reason]", "customer disputes a charge")
            page.fill("input[name=stepup_typed]", SUPERVISOR_PASSWORD)
            page.click("main button[type=submit]")  # not the header's logout button
            page.wait_for_load_state()
            assert page.text_content("#revealed-value") == "4111 1111 1111 1111"
            page.wait_for_function(
                "() => !document.getElementById('revealed-value').textContent.includes('4111')",
                timeout=(HIDE + 5) * 1000,
            )
            assert "hidden again" in page.text_content("#revealed-value")
            assert "4111" not in without_hex_ids(page.content())
        finally:
            context.close()
            browser.close()
    assert [m for m in problems if "Content Security Policy" in m or "Refused" in m] == []
