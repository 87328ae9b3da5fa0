"""End to end with a real browser: Debian's Chromium (headless, driven by Playwright, presenting a
client certificate) through the production Apache front door (mod_ssl with a required client
certificate, ModSecurity + CRS) to gunicorn over its Unix socket, with a real unsealed keyd.

One supervisor logs in, adds a customer record by CRM reference, adds two cards (a well-known test
number and a freshly generated one), sees them masked, reveals one with the password and a reason,
and logs out; a screenshot of every step is kept as a test artifact. A browser without a
certificate gets no login page. Afterwards no card number, in any spelling, is in any Apache,
ModSecurity or back-end log, and the audit log holds the reveal.

Screenshots go to `$STRONGROOM_TEST_ARTIFACTS/e2e/` when that is set (CI uploads it), else to
`test-artifacts/e2e/` in the checkout (git-ignored). The revealed-value screenshot shows a card
number made up for the run (`fresh_pan`), never a real one."""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.apache.stack import running_stack, traversable_dir
from tests.fixtures.pki import TestCA
from tests.support import component_missing
from tests.webapp.auth.test_browser import ARGS, CHROMIUM
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log
from webapp.records.cards import luhn_ok, parse_pan

ROOT = Path(__file__).resolve().parents[2]
USERNAME = "sam"
# A policy-passing password used only by this throwaway stack.
PASSWORD = "Saffron-Beacon-Walnut-7351"
CRM_REF = "C7654321"
TEST_PAN = "4111111111111111"
REASON = "customer disputes a charge on the phone"
# Chromium's refusals when the server demands a certificate it does not get (TLS 1.2 fails in the
# handshake, TLS 1.3 after it), and Playwright's own proxy page when its mTLS leg fails.
NO_CERT_ERRORS = ("ERR_BAD_SSL_CLIENT_AUTH_CERT", "ERR_SOCKET_NOT_CONNECTED", "ERR_CONNECTION_CLOSED")


def fresh_pan() -> str:
    """A Luhn-valid 16-digit Visa number that is on no list of test numbers: made up per run, so
    that finding it anywhere can only mean this run leaked it."""
    while True:
        body = "4" + "".join(secrets.choice("0123456789") for _ in range(14))
        for check in "0123456789":
            if luhn_ok(body + check) and body + check != TEST_PAN:
                pan = body + check
                parse_pan(pan)  # the app's own rules accept it
                return pan


def spellings(pan: str) -> list[str]:
    """Every way the number could be written into a log: bare, grouped by four with spaces or
    dashes (as typed, as shown), and URL-encoded spaces."""
    groups = [pan[i : i + 4] for i in range(0, len(pan), 4)]
    return [pan, " ".join(groups), "-".join(groups), "+".join(groups), "%20".join(groups)]


def artifacts_dir() -> Path:
    base = os.environ.get("STRONGROOM_TEST_ARTIFACTS")
    out = Path(base) / "e2e" if base else ROOT / "test-artifacts" / "e2e"
    out.mkdir(parents=True, exist_ok=True)
    return out


@dataclass
class Target:
    """What the browser walk needs from a running stack."""

    base: str
    ca_file: Path
    cert: tuple[Path, Path]
    db_url: str
    logs: list[Path]  # files or directories to scan for card numbers afterwards


@dataclass
class Walk:
    """What a browser walk did: the numbers it typed, the screenshots it took."""

    pans: list[str]
    shots: list[Path] = field(default_factory=list)
    record_path: str = ""


def _need_browser() -> Any:
    if not (os.path.exists(CHROMIUM) and shutil.which("chromium")):
        component_missing("chromium is not installed (scripts/debian-packages.txt)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        component_missing("playwright is not installed (requirements-dev.txt)")
    return sync_playwright


class Shots:
    def __init__(self, page: Any, out: Path, prefix: str, walk: Walk) -> None:
        self.page, self.out, self.prefix, self.walk, self.n = page, out, prefix, walk, 0

    def take(self, step: str) -> None:
        self.n += 1
        path = self.out / f"{self.prefix}-{self.n:02d}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        self.walk.shots.append(path)


def walk_through(page: Any, base: str, shots: Shots, pans: list[str]) -> None:
    """Log in, add a record and its cards, see them masked, reveal one, log out."""
    walk = shots.walk
    page.goto(f"{base}/login")
    assert page.locator("h1").text_content() == "Log in"
    assert USERNAME in page.content()  # the certificate holder's name, from the Apache-passed cert
    shots.take("login-page")

    page.fill("input[name=username]", USERNAME)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_load_state()
    assert page.locator("header .who").text_content() == f"{USERNAME} (supervisor)"
    shots.take("logged-in")

    page.click("header nav >> text=Records")
    page.wait_for_load_state()
    page.fill("form[method=post] input[name=crm_ref]", CRM_REF)
    page.click("text=Add record")
    page.wait_for_load_state()
    assert CRM_REF in page.locator("h1").text_content()
    walk.record_path = page.url.removeprefix(base)
    shots.take("record-added")

    for i, pan in enumerate(pans):
        # Typed as a person reads it off a card: grouped by four.
        page.fill("input[name=pan]", " ".join(pan[j : j + 4] for j in range(0, len(pan), 4)))
        page.fill("input[name=cardholder]", f"Ada Lovelace {'I' * (i + 1)}")
        page.fill("input[name=exp_month]", "12")
        page.fill("input[name=exp_year]", "2031")
        page.click("text=Add card")
        page.wait_for_load_state()
        assert page.url.removeprefix(base) == walk.record_path, page.content()
    html = page.content()
    for pan in pans:
        assert f"•••• {pan[-4:]}" in html
        for spelled in spellings(pan):
            assert spelled not in html
    shots.take("cards-masked")

    secret = pans[-1]
    item = page.locator("li", has_text=f"•••• {secret[-4:]}")
    item.locator("text=Reveal number").click()
    page.wait_for_load_state()
    assert "Reveal card pan" in page.locator("h1").text_content()
    page.fill("input[name=reason]", REASON)
    page.fill("main input[name=stepup_typed]", PASSWORD)
    shots.take("reveal-form")
    page.click("main button[type=submit]")  # not the header's logout button
    page.wait_for_load_state()
    shown = " ".join(secret[j : j + 4] for j in range(0, len(secret), 4))
    assert page.text_content("#revealed-value") == shown
    shots.take("revealed")

    page.click("header button:has-text('Log out')")
    page.wait_for_load_state()
    assert page.locator("h1").text_content() == "Log in"
    assert page.locator("header .who").count() == 0
    shots.take("logged-out")
    # The session is over: the record is no longer reachable without logging in again.
    page.goto(f"{base}{walk.record_path}")
    assert page.locator("h1").text_content() == "Log in"


def run_with_certificate(target: Target, out: Path, monkeypatch: pytest.MonkeyPatch) -> Walk:
    sync_playwright = _need_browser()
    # Playwright does the mTLS in its own Node proxy, which must trust the stack's CA.
    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(target.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    walk = Walk(pans=[TEST_PAN, fresh_pan()])
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            cert, key = target.cert
            context = browser.new_context(
                client_certificates=[{"origin": target.base, "certPath": str(cert), "keyPath": str(key)}]
            )
            page = context.new_page()
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            walk_through(page, target.base, Shots(page, out, "with-cert", walk), walk.pans)
            context.close()
        finally:
            browser.close()
    assert [m for m in problems if "Content Security Policy" in m or "Refused" in m] == []
    return walk


def run_refused(
    target: Target,
    shot: Path,
    monkeypatch: pytest.MonkeyPatch,
    cert: tuple[Path, Path] | None = None,
) -> str:
    """The same browser with no certificate (or `cert`, which Apache must refuse): the connection
    fails, no login page. Returns the error Chromium (or Playwright's proxy) reported."""
    sync_playwright = _need_browser()
    from playwright.sync_api import Error as PlaywrightError

    monkeypatch.setenv("NODE_EXTRA_CA_CERTS", str(target.ca_file))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            if cert is None:
                # Chromium itself (no Playwright proxy without client certificates) does not know
                # the stack's CA: waive the server check only, so the one thing missing is ours.
                context = browser.new_context(ignore_https_errors=True)
            else:
                context = browser.new_context(
                    client_certificates=[
                        {"origin": target.base, "certPath": str(cert[0]), "keyPath": str(cert[1])}
                    ]
                )
            page = context.new_page()
            error = ""
            try:
                response = page.goto(f"{target.base}/login")
            except PlaywrightError as exc:  # the navigation itself failed
                error = str(exc).splitlines()[0]
                response = None
            content = _settled_content(page, PlaywrightError)
            page.screenshot(path=str(shot), full_page=True)
            context.close()
        finally:
            browser.close()
    assert "Log in" not in content
    assert "csrf_token" not in content
    if response is not None:
        # Only Playwright's proxy answers at all, with its own error page, never the app's: Apache
        # refused the certificate in the handshake with a TLS alert ("unknown ca").
        assert response.status == 503, (response.status, content[:500])
        assert "Playwright client-certificate error" in content, content[:500]
        alert = re.search(r"alert [a-z ]+", content)
        assert alert, content[:500]
        return f"HTTP 503 from Playwright's proxy: TLS {alert.group(0)}"
    assert any(e in error for e in NO_CERT_ERRORS), error
    return error


def _self_signed(d: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (d / f"{name}-self.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{name}-self.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d / f"{name}-self.pem", d / f"{name}-self.key"


def _settled_content(page: Any, error: type[Exception]) -> str:
    # After a failed navigation Chromium goes on to its own error page: read once it settles.
    for _ in range(50):
        try:
            page.wait_for_load_state()
            return str(page.content())
        except error:  # "the page is navigating": try again shortly
            page.wait_for_timeout(100)
    raise AssertionError("the page never settled after the refused navigation")


def files_under(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in paths:
        if p.is_dir():
            found.extend(f for f in sorted(p.rglob("*")) if f.is_file())
        elif p.is_file():
            found.append(p)
    return found


def pan_leaks(paths: list[Path], pans: list[str]) -> list[str]:
    leaks = []
    for f in files_under(paths):
        data = f.read_bytes()
        for pan in pans:
            for spelled in spellings(pan):
                if spelled.encode() in data:
                    leaks.append(f"{f}: a card number ending {pan[-4:]} as {len(spelled)} chars")
    return leaks


def audit_events(db_url: str) -> list[tuple[str, str, str, str]]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    audit_log.c.actor, audit_log.c.event, audit_log.c.outcome, audit_log.c.detail
                ).order_by(audit_log.c.seq)
            ).all()
    finally:
        engine.dispose()
    return [(r.actor, r.event, r.outcome, r.detail) for r in rows]


# --- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    """The production path (tests/apache/stack.py): Apache's vhost, gunicorn in proxy mode, keyd."""
    with traversable_dir("e2e-browser-") as tmp, running_stack(tmp / "stack") as stack:
        cert = stack.add_user(USERNAME, "supervisor", PASSWORD)
        # keyd's own log sits next to its run dir (tests/keyd/conftest.py's layout).
        keyd_log = Path(stack.app_env["STRONGROOM_KEYD_SOCKET"]).parent.parent / "keyd.log"
        yield Target(
            base=f"https://127.0.0.1:{stack.port}",
            ca_file=stack.ca_file,
            cert=cert,
            db_url=stack.db_url,
            logs=[stack.apache_log_dir, stack.modsec_audit_log, stack.gunicorn_log, keyd_log],
        )


@pytest.fixture(scope="module")
def out() -> Path:
    path = artifacts_dir()
    for old in path.glob("*.png"):
        old.unlink()
    return path


@pytest.fixture(scope="module")
def walked(target: Target, out: Path) -> Walk:
    with pytest.MonkeyPatch.context() as mp:
        walk = run_with_certificate(target, out, mp)
    print(f"\nscreenshots: {out}")
    return walk


def test_a_supervisor_walks_through_in_a_real_browser(walked: Walk, out: Path) -> None:
    names = [p.name for p in walked.shots]
    assert names == [
        "with-cert-01-login-page.png",
        "with-cert-02-logged-in.png",
        "with-cert-03-record-added.png",
        "with-cert-04-cards-masked.png",
        "with-cert-05-reveal-form.png",
        "with-cert-06-revealed.png",
        "with-cert-07-logged-out.png",
    ]
    for shot in walked.shots:
        assert shot.parent == out
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "presented",
    [
        "none",
        "same name, another CA",  # a look-alike certificate for the very user of the walk
        "self-signed",
    ],
)
def test_a_browser_without_a_valid_certificate_gets_no_login_page(
    presented: str, target: Target, out: Path, tmp_path: Path
) -> None:
    cert = None
    if presented == "same name, another CA":
        cert = TestCA("Strongroom Test CA").issue(USERNAME).write(tmp_path, USERNAME)
    elif presented == "self-signed":
        cert = _self_signed(tmp_path, USERNAME)
    shot = out / f"refused-{presented.replace(' ', '-').replace(',', '')}.png"
    with pytest.MonkeyPatch.context() as mp:
        error = run_refused(target, shot, mp, cert)
    print(f"\n{presented}: {error}")


def test_the_audit_log_holds_the_walk(walked: Walk, target: Target) -> None:
    rows = audit_events(target.db_url)
    mine = [(event, outcome) for actor, event, outcome, _ in rows if actor == USERNAME]
    for event in ("auth.login_success", "records.added", "card.added", "reveal.form", "stepup.success"):
        assert (event, "success") in mine, event
    assert mine.count(("card.added", "success")) == 2
    revealed = [detail for actor, event, _, detail in rows if actor == USERNAME and event == "reveal.done"]
    assert len(revealed) == 1
    assert REASON in revealed[0]
    assert ("auth.logout", "success") in mine
    text = "\n".join("|".join(r) for r in rows)
    for pan in walked.pans:
        for spelled in spellings(pan):
            assert spelled not in text


def test_no_card_number_in_any_log(walked: Walk, target: Target) -> None:
    scanned = files_under(target.logs)
    assert scanned, f"no log files under {target.logs}"
    # The walk really went through these logs: Apache logged the card posts and the reveal, by
    # their route shape only (`/records/*`: no record number, nothing a client typed into the path).
    # ModSecurity's audit log keeps refused requests only, and this walk has none. The scan itself is
    # checked by the planted-number test.
    access = "\n".join(f.read_text(errors="replace") for f in scanned if f.name == "strongroom-access.log")
    assert access.count('"POST /records/* HTTP/1.1" 302') >= len(walked.pans)
    assert f"{walked.record_path}/" not in access
    assert pan_leaks(target.logs, walked.pans) == []


@pytest.mark.parametrize(
    "written",
    [
        "{pan}",
        "pan={g4}",  # typed grouped by four, as the walk types it
        "GET /x?pan={g4_plus} HTTP/1.1",  # a form value in a query string
        "pan={g4_pct}",
        "{g4_dash}",
        "\x00binary{pan}\xff",
    ],
)
def test_the_log_scan_finds_a_planted_number(written: str, tmp_path: Path) -> None:
    pan = fresh_pan()
    groups = [pan[i : i + 4] for i in range(0, len(pan), 4)]
    line = written.format(
        pan=pan,
        g4=" ".join(groups),
        g4_plus="+".join(groups),
        g4_pct="%20".join(groups),
        g4_dash="-".join(groups),
    )
    (tmp_path / "logs" / "deep").mkdir(parents=True)
    (tmp_path / "logs" / "deep" / "error.log").write_bytes(line.encode("latin-1"))
    (tmp_path / "clean.log").write_text(f"card ending {pan[-4:]}\n")
    assert len(pan_leaks([tmp_path / "logs", tmp_path / "clean.log"], [pan])) == 1
    assert pan_leaks([tmp_path / "clean.log"], [pan]) == []
