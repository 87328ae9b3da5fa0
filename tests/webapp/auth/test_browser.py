"""A real browser (Debian's Chromium driven by Playwright) with a client certificate: the keypad
works under the strict CSP, and no page trips the CSP (no inline script anywhere)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support import component_missing
from tests.webapp.conftest import PASSWORDS
from tests.webapp.tls_server import Server, serve
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def keypad_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(tmp_path_factory.mktemp("browser"), {"STRONGROOM_LOGIN_ENTRY": "keypad"}) as running:
        yield running


@pytest.fixture
def browser_page(keypad_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[str]]]:
    if not (os.path.exists(CHROMIUM) and shutil.which("chromium")):
        component_missing("chromium is not installed (scripts/debian-packages.txt)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        component_missing("playwright is not installed (requirements-dev.txt)")
    # Playwright does the mTLS in its own Node proxy, which must trust our throwaway CA.
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(keypad_server.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    cert, key = keypad_server.alice
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(
            client_certificates=[
                {
                    "origin": f"https://127.0.0.1:{keypad_server.port}",
                    "certPath": str(cert),
                    "keyPath": str(key),
                }
            ]
        )
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        try:
            yield page, problems
        finally:
            context.close()
            browser.close()


def test_keypad_login_in_a_real_browser(browser_page: tuple[Any, list[str]], keypad_server: Server) -> None:
    page, problems = browser_page
    base = f"https://127.0.0.1:{keypad_server.port}"
    page.goto(f"{base}/login")
    assert "recorded against your name" in page.content()
    assert page.locator("input[type=password]").count() == 0
    page.fill("input[name=username]", "alice")
    tokens = dict(
        page.eval_on_selector_all(
            "#keypad button[data-token]", "buttons => buttons.map(b => [b.textContent, b.dataset.token])"
        )
    )
    password = PASSWORDS["alice"]
    for char in password:
        page.click(f'button[data-token="{tokens[char]}"]')
    assert page.text_content("#keypad-count") == str(len(password))
    # The form carries tokens, never characters.
    submitted = page.input_value("#keypad-value")
    assert password not in submitted
    assert len(submitted.split(".")) == len(password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    # Logged in; no keyd runs in this test, so home is the clean "vault unavailable" page.
    assert "vault is unavailable" in page.content()
    engine = make_engine(keypad_server.db_url)
    try:
        with engine.connect() as conn:
            events = [r.event for r in conn.execute(sa.select(audit_log.c.event))]
    finally:
        engine.dispose()
    assert "auth.login_success" in events
    assert [p for p in problems if "Content Security Policy" in p or "Refused" in p] == []


def test_keypad_layout_differs_between_loads(
    browser_page: tuple[Any, list[str]], keypad_server: Server
) -> None:
    page, _ = browser_page
    base = f"https://127.0.0.1:{keypad_server.port}"
    layouts = []
    for _ in range(2):
        page.goto(f"{base}/login")
        layouts.append(
            page.eval_on_selector_all("#keypad button[data-token]", "bs => bs.map(b => b.textContent)")
        )
    assert layouts[0] != layouts[1]
    assert sorted(layouts[0]) == sorted(layouts[1])
