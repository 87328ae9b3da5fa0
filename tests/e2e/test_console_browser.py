"""Every page of every role in a real browser, checked by axe-core: Debian's Chromium (headless, driven
by Playwright, presenting each user's client certificate) through the production front door (Apache
with mod_ssl's required client certificate and ModSecurity + CRS, tests/apache/stack.py) to gunicorn
and a real unsealed keyd. One stack for the whole module.

For each role (admin, supervisor, clerk, auditor) the test logs in, follows the header's links (the
roles' pages, webapp/navigation.py: a new page shows up here as soon as its link does) and the links
on those pages one level further down (a record, a card, a user, an employee's activity), plus the
records search for the roles that have records. On every page axe-core runs: no violation of impact
serious or critical (the rest is printed); every page has one <h1>; the page itself raises no CSP
report; a full-page screenshot of each goes to `$STRONGROOM_TEST_ARTIFACTS/e2e/console/` (else
`test-artifacts/e2e/console/`).

Then each role opens the pages the other roles saw that it did not: each is refused with the 403 page,
shows none of their data, and leaves an audited refusal. And the admin console's flows are driven as
an admin would: a user added (one-time password shown once), their password reset, their first login
forced to a new password, a session ended, a test alert sent, each change confirmed with a reason and
the admin's password and audited; and an employee changes their own password.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from tests.apache.stack import Stack, running_stack, traversable_dir
from tests.e2e.test_browser_apache import _need_browser, artifacts_dir, files_under
from tests.support import component_missing
from tests.webapp.auth.test_browser import ARGS, CHROMIUM
from webapp import navigation
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log

ROOT = Path(__file__).resolve().parents[2]
PY = ROOT / ".venv" / "bin" / "python"
AXE_JS = ROOT / "tests" / "e2e" / "axe" / "node_modules" / "axe-core" / "axe.min.js"
ROLES = ("admin", "supervisor", "clerk", "auditor")
# Policy-passing passwords used only by this throwaway stack; each user is named after their role.
PASSWORDS = {
    "admin": "Quartz-Lantern-Meadow-4182",
    "supervisor": "Harbor-Violet-Pinecone-5093",
    "clerk": "Copper-Thistle-Orchard-6274",
    "auditor": "Marble-Juniper-Compass-7365",
}
# The demo's customers (scripts/demo_data.py): what a refused page must never show.
CRM_REFS = ("C1000001", "C1000002", "C1000003")
MASKED = re.compile("•••• [0-9]{4}")
BLOCKING = frozenset({"serious", "critical"})
MAX_DEPTH = 2  # header link -> a page it links to -> the page that one links to (a record's card)
MAX_PAGES = 30  # per role: a bound on the crawl, far above what the console has
# The records search, the records roles' way into a record (its results link to the record pages).
SEEDS = {"clerk": ("/records/?crm_ref=C1000001",), "supervisor": ("/records/?crm_ref=C1000001",)}
# axe-core runs in the page through the DevTools protocol's Runtime.evaluate (Playwright's
# page.evaluate), which the page's Content-Security-Policy does not govern, so the CSP under test
# stays fully on (no bypass_csp): `add_script_tag` would add an inline <script> that the CSP blocks,
# rightly. axe then sees the page exactly as an employee's browser renders it.
AXE_RUN = """async () => {
  const r = await axe.run(document, {resultTypes: ['violations']});
  return r.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ' ' + n.html.slice(0, 120)),
  }));
}"""


@dataclass
class Seen:
    """One page one role opened."""

    role: str
    path: str
    status: int
    headings: list[str] = field(default_factory=list)
    violations: list[dict[str, Any]] = field(default_factory=list)
    shot: Path | None = None
    links: list[str] = field(default_factory=list)

    @property
    def blocking(self) -> list[dict[str, Any]]:
        return [v for v in self.violations if v["impact"] in BLOCKING]


@dataclass
class Console:
    stack: Stack
    browser: Any
    base: str
    out: Path
    certs: dict[str, tuple[Path, Path]]
    axe: str

    def context(self, name: str) -> Any:
        """A browser context presenting `name`'s client certificate (Playwright's mTLS proxy)."""
        cert, key = self.certs.get(name) or self.stack.client(name)
        return self.browser.new_context(
            client_certificates=[{"origin": self.base, "certPath": str(cert), "keyPath": str(key)}]
        )

    def login(self, page: Any, username: str, password: str) -> Any:
        page.goto(f"{self.base}/login")
        assert page.locator("h1").first.text_content() == "Log in", page.content()[:2000]
        page.fill("main input[name=username]", username)
        page.fill("main input[name=password]", password)
        page.click("main button[type=submit]")
        page.wait_for_load_state()
        return page

    def axe_violations(self, page: Any) -> list[dict[str, Any]]:
        page.evaluate(self.axe)
        found: list[dict[str, Any]] = page.evaluate(AXE_RUN)
        return found


def audit_rows(db_url: str, actor: str) -> list[sa.Row]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(
                        audit_log.c.seq,
                        audit_log.c.event,
                        audit_log.c.outcome,
                        audit_log.c.resource,
                        audit_log.c.detail,
                    )
                    .where(audit_log.c.actor == actor)
                    .order_by(audit_log.c.seq)
                )
            )
    finally:
        engine.dispose()


def seed_customers(stack: Stack) -> None:
    """The demo's customers, through the demo's own helper (the records service, keyd encrypting)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | stack.app_env
    done = subprocess.run(
        [str(PY), str(ROOT / "scripts" / "demo_data.py")],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "C1000001: added" in done.stdout, done.stdout


@pytest.fixture(scope="module")
def console() -> Iterator[Console]:
    if not AXE_JS.is_file():
        component_missing(f"axe-core is not installed ({AXE_JS}): `make test` runs npm ci in tests/e2e/axe")
    sync_playwright = _need_browser()
    out = artifacts_dir() / "console"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    with traversable_dir("e2e-console-") as tmp, running_stack(tmp / "stack") as stack:
        certs = {role: stack.add_user(role, role, PASSWORDS[role]) for role in ROLES}
        seed_customers(stack)
        base = f"https://127.0.0.1:{stack.port}"
        with pytest.MonkeyPatch.context() as mp:
            # Playwright does the mTLS in its own Node proxy, which must trust the stack's CA.
            mp.setenv("NODE_EXTRA_CA_CERTS", str(stack.ca_file))
            mp.setenv("NO_PROXY", "127.0.0.1,localhost")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                try:
                    yield Console(stack, browser, base, out, certs, AXE_JS.read_text())
                finally:
                    browser.close()


# --- the crawl -----------------------------------------------------------------------------------


def shape(path: str) -> str:
    """A page's kind: numbers and row ids generalised, query values dropped (one record page, one
    page of filtered results, stand for all of them)."""
    parts = urlsplit(path)
    # Row ids (32 hex), session handles (12), certificate fingerprints (64).
    generic = re.sub(r"/[0-9a-f]{12,64}(?=/|$)", "/{id}", parts.path)
    generic = re.sub(r"/[0-9]+(?=/|$)", "/{n}", generic)
    keys = sorted({kv.split("=", 1)[0] for kv in parts.query.split("&") if kv})
    return generic + ("?" + "&".join(keys) if keys else "")


def _slug(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", shape(path).lower()).strip("-")[:60] or "home"


def _local(base: str, href: str | None) -> str | None:
    """The path (and query) of a same-origin link worth opening, else None."""
    if not href or href.startswith(("#", "mailto:", "javascript:")):
        return None
    if href.startswith(base):
        href = href[len(base) :]
    if not href.startswith("/") or href.startswith("//"):
        return None
    path = href.split("#", 1)[0]
    if path.startswith(("/static/", "/login")):
        return None
    return path


def visit(console: Console, page: Any, role: str, path: str, n: int, problems: list[str]) -> Seen:
    from playwright.sync_api import Error as PlaywrightError

    try:
        response = page.goto(console.base + path)
    except PlaywrightError as exc:
        if "Download is starting" in str(exc):  # a file (the CSV export), not a page
            return Seen(role, path, 200)
        raise
    assert response is not None, path
    final = response.url.removeprefix(console.base)
    seen = Seen(role, final, response.status)
    if "text/html" not in (response.headers.get("content-type") or ""):
        return seen
    page.wait_for_load_state()
    seen.headings = [t.strip() for t in page.locator("h1").all_text_contents()]
    seen.links = [
        p for p in (_local(console.base, h) for h in page.eval_on_selector_all("main a[href]", LINKS_JS)) if p
    ]
    seen.violations = console.axe_violations(page)
    seen.shot = console.out / f"{role}-{n:02d}-{_slug(final)}.png"
    page.screenshot(path=str(seen.shot), full_page=True)
    csp = [m for m in problems if "Content Security Policy" in m or "Refused to" in m]
    assert csp == [], f"{role} {path}: {csp}"
    return seen


LINKS_JS = "els => els.map(e => e.getAttribute('href'))"


def crawl(console: Console, role: str) -> list[Seen]:
    context = console.context(role)
    try:
        page = context.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        console.login(page, role, PASSWORDS[role])
        assert page.locator("header .who").text_content() == f"{role} ({role})", page.content()[:2000]
        nav = [_local(console.base, h) for h in page.eval_on_selector_all("header nav a[href]", LINKS_JS)]
        queue = [(p, 0) for p in nav if p] + [(p, 0) for p in SEEDS.get(role, ())]
        shapes: set[str] = set()
        seen: list[Seen] = []
        while queue and len(seen) < MAX_PAGES:
            path, depth = queue.pop(0)
            if shape(path) in shapes:
                continue
            shapes.add(shape(path))
            found = visit(console, page, role, path, len(seen) + 1, problems)
            seen.append(found)
            if depth < MAX_DEPTH:
                queue.extend((link, depth + 1) for link in found.links)
        assert len(seen) < MAX_PAGES, f"{role}: the crawl hit its bound of {MAX_PAGES} pages"
        return seen
    finally:
        context.close()


@pytest.fixture(scope="module")
def crawled(console: Console) -> dict[str, list[Seen]]:
    pages = {role: crawl(console, role) for role in ROLES}
    for role, seen in pages.items():
        print(f"\n== {role}: {len(seen)} pages")
        for s in seen:
            found = [(v["id"], v["impact"]) for v in s.violations]
            print(f"  {s.status} {s.path}  h1={s.headings}  axe={found}")
            for v in s.violations:
                print(f"      {v['impact']}: {v['id']} ({v['help']}): {v['nodes']}")
    print(f"\nscreenshots: {console.out}")
    return pages


def _nav_labels(role: str, endpoints: set[str]) -> list[str]:
    return [label for label, endpoint, roles in navigation.LINKS if role in roles and endpoint in endpoints]


@pytest.fixture(scope="module")
def endpoints(console: Console) -> dict[str, str]:
    """The app's GET endpoints without parameters, by name, with their URLs."""
    app = console.stack.admin_app()
    try:
        return {
            rule.endpoint: rule.rule
            for rule in app.url_map.iter_rules()
            if "GET" in (rule.methods or ()) and not rule.arguments
        }
    finally:
        app.extensions["strongroom"].engine.dispose()


def test_every_page_of_the_header_exists(endpoints: dict[str, str]) -> None:
    """The console's pages (navigation.LINKS names each): none missing from the app, so the crawl
    below really covers every role's every page."""
    assert [e for _label, e, _roles in navigation.LINKS if e not in endpoints] == []


def test_axe_finds_a_planted_violation(console: Console) -> None:
    """The harness itself: on a page with an unlabelled input and an image without text, axe reports
    both as critical (were axe not running, every page would pass)."""
    context = console.browser.new_context()
    try:
        page = context.new_page()
        page.set_content('<html lang="en"><title>t</title><main><img src="x.png"><input></main></html>')
        found = {v["id"]: v["impact"] for v in console.axe_violations(page)}
    finally:
        context.close()
    assert found.get("image-alt") == "critical", found
    assert found.get("label") == "critical", found


@pytest.mark.parametrize("who", ["a user", "an unbound certificate"])
def test_the_pages_before_a_login_pass_axe(who: str, console: Console) -> None:
    """The login page, and the page a certificate of our CA that is bound to nobody gets instead."""
    name = "admin" if who == "a user" else "stranger"  # stranger: issued, never bound
    context = console.context(name)
    try:
        page = context.new_page()
        response = page.goto(f"{console.base}/login")
        assert response is not None
        assert response.status == (200 if name == "admin" else 403)
        assert page.locator("h1").count() == 1
        page.screenshot(path=str(console.out / f"before-login-{name}.png"), full_page=True)
        found = console.axe_violations(page)
    finally:
        context.close()
    for v in found:
        print(f"\n{who}: {v['impact']}: {v['id']} ({v['help']}): {v['nodes']}")
    assert [v for v in found if v["impact"] in BLOCKING] == []


@pytest.mark.parametrize("role", ROLES)
def test_each_role_has_its_own_header_links(role: str, console: Console, endpoints: dict[str, str]) -> None:
    context = console.context(role)
    try:
        page = console.login(context.new_page(), role, PASSWORDS[role])
        shown = [t.strip() for t in page.locator("header nav a").all_text_contents()]
    finally:
        context.close()
    assert shown == _nav_labels(role, set(endpoints))
    assert "Home" in shown
    assert ("Records" in shown) == (role in ("clerk", "supervisor"))


def test_every_page_of_every_role_passes_axe(crawled: dict[str, list[Seen]]) -> None:
    blocking = {
        f"{s.role} {s.path}": [(v["id"], v["impact"], v["nodes"]) for v in s.blocking]
        for seen in crawled.values()
        for s in seen
        if s.blocking
    }
    assert blocking == {}


def test_every_page_opened_and_says_what_it_is(crawled: dict[str, list[Seen]]) -> None:
    for role, seen in crawled.items():
        assert len(seen) >= 2, (role, seen)
        for s in seen:
            assert s.status == 200, (role, s.path, s.status)
            if s.shot is not None:  # an HTML page (not a download)
                assert len(s.headings) == 1, (role, s.path, s.headings)
                assert s.headings[0], (role, s.path)
                assert s.shot.is_file()


def test_the_records_roles_reach_a_record_and_its_cards(crawled: dict[str, list[Seen]]) -> None:
    for role in ("clerk", "supervisor"):
        shapes = {shape(s.path) for s in crawled[role]}
        assert "/records/{n}" in shapes, shapes
        assert "/records/{n}/cards/{id}" in shapes, shapes
        for kind in ("bank", "identity", "note"):  # the first demo customer has one of each
            assert f"/records/{{n}}/{kind}/{{id}}" in shapes, shapes
    supervisor = {shape(s.path) for s in crawled["supervisor"]}
    clerk = {shape(s.path) for s in crawled["clerk"]}
    # Only the supervisor is offered a reveal (a step-up form), never the clerk.
    assert any("reveal" in s for s in supervisor), supervisor
    assert not any("reveal" in s for s in clerk), clerk


# --- refusals --------------------------------------------------------------------------------------


def foreign_pages(crawled: dict[str, list[Seen]], endpoints: dict[str, str], role: str) -> list[str]:
    """The pages other roles opened and `role` did not (by shape), plus each header page of the
    other roles: all must be refused to `role`."""
    mine = {shape(s.path) for s in crawled[role]}
    theirs: dict[str, str] = {}
    for other, seen in crawled.items():
        for s in seen:
            if other != role and s.status == 200 and shape(s.path) not in mine:
                theirs.setdefault(shape(s.path), s.path)
    for _label, endpoint, roles in navigation.LINKS:
        if role not in roles and endpoint in endpoints:
            theirs.setdefault(shape(endpoints[endpoint]), endpoints[endpoint])
    return sorted(theirs.values())


@pytest.mark.parametrize("role", ROLES)
def test_the_other_roles_pages_are_refused_and_audited(
    role: str, console: Console, crawled: dict[str, list[Seen]], endpoints: dict[str, str]
) -> None:
    pages = foreign_pages(crawled, endpoints, role)
    # What the issue names, at the least: each role is kept out of the others' sections.
    expected = {
        "admin": ["/records/", "/audit/"],
        "supervisor": ["/admin/"],
        "clerk": ["/admin/", "/audit/"],
        "auditor": ["/records/", "/admin/"],
    }[role]
    for prefix in expected:
        if prefix == "/admin/" and not any(e.startswith("admin.") for e in endpoints):
            continue  # the console's pages are not there yet: test_admin_console_pages_exist says so
        assert any(p.startswith(prefix) for p in pages), (role, prefix, pages)
    before = len(audit_rows(console.stack.db_url, role))
    context = console.context(role)
    refused: list[tuple[str, int]] = []
    try:
        page = console.login(context.new_page(), role, PASSWORDS[role])
        for n, path in enumerate(pages, 1):
            response = page.goto(console.base + path)
            assert response is not None
            main = page.locator("main").inner_text()
            refused.append((path, response.status))
            assert response.status == 403, (role, path, response.status, main[:500])
            assert page.locator("h1").count() == 1, (role, path)
            # A way back (the refusal is no dead end), and nothing else of theirs.
            assert page.locator("main a[href]").count() >= 1, (role, path, main)
            # None of their data: no customer, no card, no other user, no table or form of theirs.
            assert not any(ref in main for ref in CRM_REFS), (role, path, main)
            assert not MASKED.search(main), (role, path, main)
            assert not any(other in main for other in ROLES if other != role), (role, path, main)
            assert page.locator("main table, main form").count() == 0, (role, path)
            if n == 1:  # the refusal page is a page too
                page.screenshot(path=str(console.out / f"{role}-refused-{_slug(path)}.png"), full_page=True)
                found = console.axe_violations(page)
                assert [v for v in found if v["impact"] in BLOCKING] == [], (role, path, found)
    finally:
        context.close()
    print(f"\n{role} refused: {refused}")
    rows = audit_rows(console.stack.db_url, role)[before:]
    denied = [r for r in rows if r.event == "request.access_denied" and r.outcome == "failure"]
    assert len(denied) == len(pages), (role, pages, [(r.event, r.outcome, r.resource) for r in rows])


# --- the flows -------------------------------------------------------------------------------------

NEWCOMER = "dana"  # added through the console in the flow below
NEWCOMER_PASSWORD = "Lagoon-Saddle-Ember-8426"  # what she chooses at her forced change
SELF_SERVICE = "erin"  # changes her own password
SELF_SERVICE_PASSWORDS = ("Tundra-Walrus-Beacon-9517", "Prairie-Falcon-Ledger-2648")
REASONS = {
    "add": "New clerk joins the records team today",
    "bind": "Binding the certificate issued for the new clerk",
    "reset": "She forgot the one-time password before using it",
    "end": "Ending the session left open on a shared desk",
    "lift": "Her burst of requests was the records migration",
    "role": "Promoted to supervisor of the records team",
    "disable": "On leave until the end of the month",
    "enable": "Back from leave, access restored",
}


class Steps:
    """Numbered full-page screenshots of a flow, each page checked by axe as the crawl's are: the
    pages a form's answer shows (a one-time password, a field's error, a success message) are
    pages too."""

    def __init__(self, console: Console, page: Any, prefix: str) -> None:
        self.console, self.page, self.prefix, self.n = console, page, prefix, 0

    def shot(self, step: str, *, mask: list[Any] | None = None) -> None:
        self.n += 1
        path = self.console.out / f"{self.prefix}-{self.n:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True, mask=mask or [])
        found = self.console.axe_violations(self.page)
        for v in found:
            print(f"\n{self.prefix} {step}: {v['impact']}: {v['id']} ({v['help']}): {v['nodes']}")
        assert [v for v in found if v["impact"] in BLOCKING] == [], (self.prefix, step, found)


def confirm_change(page: Any, reason: str, password: str) -> None:
    """The step-up of every console change (templates/_confirm.html): a reason and the password again."""
    page.fill("main input[name=reason]", reason)
    page.fill("main input[name=confirm_typed]", password)
    page.click("main form[method=post] button[type=submit]")
    page.wait_for_load_state()


def one_time_password(page: Any, steps: Steps, name: str) -> str:
    assert page.locator("h1").text_content() == f"One-time password for {name}", page.content()[:3000]
    shown = page.locator("main p.otp output")
    password = (shown.text_content() or "").strip()
    assert len(password) >= 15, "no one-time password on the page"
    steps.shot("one-time-password", mask=[shown])  # the artifact never holds it
    return password


def user_row(page: Any, name: str) -> Any:
    return page.locator("main table tbody tr", has=page.locator(f"th:text-is('{name}')"))


def login_fails(console: Console, page: Any, name: str, password: str) -> None:
    console.login(page, name, password)
    assert page.locator("h1").text_content() == "Log in", (name, page.url)
    assert "Login failed" in page.locator("main").inner_text()


@pytest.fixture(scope="module")
def admin_flow(console: Console) -> dict[str, str]:
    """The admin adds a user (a wrong password first: refused at its field, nothing added), binds her
    certificate, resets her password; she logs in with the one-time password, must choose her own,
    then works; the admin ends her session, sends a test alert, lifts her request budget, promotes
    her, disables her (her certificate gets no login page) and enables her again. Returns the
    one-time passwords."""
    base, admin_password = console.base, PASSWORDS["admin"]
    context = console.context("admin")
    try:
        page = console.login(context.new_page(), "admin", admin_password)
        steps = Steps(console, page, "flow-admin")
        page.click("header nav >> text=Users")
        page.click("main >> text=Add a user")
        page.fill("main input[name=username]", NEWCOMER)
        page.select_option("main select[name=role]", "clerk")
        confirm_change(page, REASONS["add"], "not-my-password-at-all-42")
        # Refused next to the password field, what was typed kept (never the password), nothing added.
        assert page.locator("h1").text_content() == "Add a user"
        assert page.locator("main input[name=confirm_typed]").get_attribute("aria-invalid") == "true"
        assert page.locator("main .field-error").count() == 1
        assert page.input_value("main input[name=username]") == NEWCOMER
        assert page.input_value("main input[name=reason]") == REASONS["add"]
        assert page.input_value("main input[name=confirm_typed]") == ""
        assert page.evaluate("document.activeElement && document.activeElement.name") == "confirm_typed"
        steps.shot("add-user-wrong-password")
        page.fill("main input[name=confirm_typed]", admin_password)
        page.click("main form[method=post] button[type=submit]")
        page.wait_for_load_state()
        first = one_time_password(page, steps, NEWCOMER)
        assert first not in page.url
        page.click("main >> text=Back to the users")
        assert "one-time password not yet used" in user_row(page, NEWCOMER).inner_text()

        # Her certificate (from the CA) is bound through the console.
        pem = console.stack.cert_pem(NEWCOMER).decode().strip()
        page.click("header nav >> text=Certificates")
        page.fill("main input[name=username]", NEWCOMER)
        page.fill("main input[name=pem]", pem.replace("\n", " "))
        confirm_change(page, REASONS["bind"], admin_password)
        assert page.locator("h1").text_content() == "Certificates", page.content()[:3000]
        assert any(NEWCOMER in t for t in page.locator("main .success").all_text_contents()), page.content()
        steps.shot("certificate-bound")

        # Her password is reset: a second one-time password; the first one is dead.
        page.click("header nav >> text=Users")
        user_row(page, NEWCOMER).locator("text=Reset password").click()
        page.wait_for_load_state()
        steps.shot("reset-password-form")
        confirm_change(page, REASONS["reset"], admin_password)
        second = one_time_password(page, steps, NEWCOMER)
        assert second != first

        # She logs in: the first one-time password fails; the second works once and forces a change.
        dana = console.context(NEWCOMER)
        try:
            mine = dana.new_page()
            her = Steps(console, mine, "flow-newcomer")
            login_fails(console, mine, NEWCOMER, first)
            console.login(mine, NEWCOMER, second)
            assert mine.locator("h1").text_content() == "Choose a new password", mine.content()[:3000]
            her.shot("forced-change")
            mine.goto(f"{base}/records/")  # no other page opens until she has chosen
            assert mine.locator("h1").text_content() == "Choose a new password"
            mine.fill("main input[name=new_password]", NEWCOMER_PASSWORD)
            mine.fill("main input[name=new_password_again]", NEWCOMER_PASSWORD)
            mine.click("main form[method=post] button[type=submit]")
            mine.wait_for_load_state()
            assert mine.locator("main .success").count() == 1, mine.content()[:3000]
            her.shot("password-chosen")
            mine.click("header nav >> text=Records")
            assert mine.locator("h1").text_content() == "Customer records"

            # The admin ends her session: her next click is a login page.
            page.click("header nav >> text=Sessions")
            user_row(page, NEWCOMER).locator("text=End this session").click()
            page.wait_for_load_state()
            steps.shot("end-session-form")
            confirm_change(page, REASONS["end"], admin_password)
            assert page.locator("h1").text_content() == "Live sessions", page.content()[:3000]
            assert user_row(page, NEWCOMER).count() == 0
            steps.shot("session-ended")
            mine.goto(f"{base}/records/")
            assert mine.locator("h1").text_content() == "Log in"
            # The one-time password is spent; her own password works.
            login_fails(console, mine, NEWCOMER, second)
            console.login(mine, NEWCOMER, NEWCOMER_PASSWORD)
            assert mine.locator("header .who").text_content() == f"{NEWCOMER} (clerk)"
        finally:
            dana.close()

        # A test alert, from the alerts page.
        page.click("header nav >> text=Alerts")
        page.click("main >> text=Send a test alert")
        page.wait_for_load_state()
        assert page.locator("h1").text_content() == "Alerts", page.content()[:3000]
        assert "Test alert queued" in page.locator("main").inner_text()
        steps.shot("test-alert")

        # Her request budget lifted after an investigation.
        page.click("header nav >> text=Budgets and keys")
        page.click(f"main >> text=Lift the budgets of {NEWCOMER}")
        page.wait_for_load_state()
        steps.shot("lift-budget-form")
        confirm_change(page, REASONS["lift"], admin_password)
        assert page.locator("h1").text_content() == "Budgets and keys", page.content()[:3000]
        assert f"Request budget of {NEWCOMER} lifted" in page.locator("main .success").first.inner_text()
        steps.shot("budget-lifted")

        # Promoted, then on leave (disabled: no login page for her certificate), then back.
        page.click("header nav >> text=Users")
        user_row(page, NEWCOMER).locator("text=Change role").click()
        page.wait_for_load_state()
        page.select_option("main select[name=role]", "supervisor")
        confirm_change(page, REASONS["role"], admin_password)
        assert f"{NEWCOMER} is now supervisor" in page.locator("main .success").first.inner_text()
        for action in ("disable", "enable"):
            user_row(page, NEWCOMER).locator(f"text={action.capitalize()}").click()
            page.wait_for_load_state()
            confirm_change(page, REASONS[action], admin_password)
            assert page.locator("h1").text_content() == "Users", page.content()[:3000]
            steps.shot(f"user-{action}d")
            if action == "disable":
                shut = console.context(NEWCOMER)
                try:
                    refused = shut.new_page().goto(f"{base}/login")
                    assert refused is not None
                    assert refused.status == 403
                finally:
                    shut.close()
        back = console.context(NEWCOMER)
        try:
            hers = console.login(back.new_page(), NEWCOMER, NEWCOMER_PASSWORD)
            assert hers.locator("header .who").text_content() == f"{NEWCOMER} (supervisor)"
            assert "Audit log" in hers.locator("header nav").inner_text()
        finally:
            back.close()
    finally:
        context.close()
    return {"first": first, "second": second}


def test_admin_adds_a_user_who_must_choose_her_own_password(admin_flow: dict[str, str]) -> None:
    assert admin_flow["first"] != admin_flow["second"]


def test_each_admin_change_was_confirmed_and_audited(admin_flow: dict[str, str], console: Console) -> None:
    rows = audit_rows(console.stack.db_url, "admin")
    events = [(r.event, r.outcome) for r in rows]
    # The wrong password at the first try: a refused step-up, no user added by it.
    assert ("stepup.failure", "failure") in events
    for event, reason in (
        ("admin.user_added", REASONS["add"]),
        ("admin.cert_bound", REASONS["bind"]),
        ("admin.password_reset", REASONS["reset"]),
        ("session.killed", REASONS["end"]),
        ("admin.budget_lifted", REASONS["lift"]),
        ("admin.user_role_changed", REASONS["role"]),
        ("admin.user_disabled", REASONS["disable"]),
        ("admin.user_enabled", REASONS["enable"]),
    ):
        done = [r for r in rows if r.event == event and r.outcome == "success"]
        assert len(done) == 1, (event, [(r.event, r.outcome, r.detail) for r in rows[-40:]])
        assert reason in done[0].detail, (event, done[0].detail)
        # Stepped up: the password was checked in the same request, just before the change.
        before = [r for r in rows if r.seq < done[0].seq][-3:]
        assert "stepup.success" in [r.event for r in before], (event, before)
    assert ("admin.test_alert", "success") in events
    # No one-time password in any audit record, anyone's.
    engine = make_engine(console.stack.db_url)
    try:
        with engine.connect() as conn:
            text = " ".join(" ".join(map(str, r)) for r in conn.execute(sa.select(audit_log)))
    finally:
        engine.dispose()
    assert admin_flow["first"] not in text
    assert admin_flow["second"] not in text
    # Nor in any log of the front door or the app.
    stack = console.stack
    logs = files_under([stack.apache_log_dir, stack.modsec_audit_log, stack.gunicorn_log])
    assert logs
    for log in logs:
        data = log.read_bytes()
        assert admin_flow["first"].encode() not in data, log
        assert admin_flow["second"].encode() not in data, log
    newcomer = [(r.event, r.outcome) for r in audit_rows(console.stack.db_url, NEWCOMER)]
    assert ("auth.password_changed", "success") in newcomer


def test_an_employee_changes_her_own_password(console: Console) -> None:
    old, new = SELF_SERVICE_PASSWORDS
    console.stack.add_user(SELF_SERVICE, "clerk", old)
    context = console.context(SELF_SERVICE)
    try:
        page = console.login(context.new_page(), SELF_SERVICE, old)
        steps = Steps(console, page, "flow-own-password")
        page.click("header nav >> text=My password")
        assert page.locator("h1").text_content() == "Change my password"
        # A wrong current password: refused next to it, focus there, nothing filled back in.
        page.fill("main input[name=current_password]", "not-my-current-password-1")
        page.fill("main input[name=new_password]", new)
        page.fill("main input[name=new_password_again]", new)
        page.click("main form[method=post] button[type=submit]")
        page.wait_for_load_state()
        assert page.locator("main input[name=current_password]").get_attribute("aria-invalid") == "true"
        assert page.evaluate("document.activeElement && document.activeElement.name") == "current_password"
        for name in ("current_password", "new_password", "new_password_again"):
            assert page.input_value(f"main input[name={name}]") == ""
        steps.shot("wrong-current-password")
        page.fill("main input[name=current_password]", old)
        page.fill("main input[name=new_password]", new)
        page.fill("main input[name=new_password_again]", new)
        page.click("main form[method=post] button[type=submit]")
        page.wait_for_load_state()
        assert page.locator("main .success").count() == 1, page.content()[:3000]
        steps.shot("changed")
        page.click("header button:has-text('Log out')")
        page.wait_for_load_state()
        login_fails(console, page, SELF_SERVICE, old)
        console.login(page, SELF_SERVICE, new)
        assert page.locator("header .who").text_content() == f"{SELF_SERVICE} (clerk)"
    finally:
        context.close()
    events = [(r.event, r.outcome) for r in audit_rows(console.stack.db_url, SELF_SERVICE)]
    assert ("auth.password_change_refused", "failure") in events or ("stepup.failure", "failure") in events
    assert ("auth.password_changed", "success") in events
