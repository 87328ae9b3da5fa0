"""The admin console's certificates page: bindings, what the CRL says (fail closed: "unknown", never
"not revoked", when it cannot be relied on), the CA tool's commands, bind (paste a PEM) and unbind,
each confirmed and audited with its reason."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from flask import Flask
from flask.testing import FlaskClient

from tests.fixtures.pki import Issued, TestCA
from tests.webapp.admin.conftest import REASON, add_person, confirm_post, logged_in
from tests.webapp.conftest import WEDNESDAY_10_UTC, Person, csrf_token, get, post
from tests.webapp.helpers import audit_rows, events, user_row
from webapp.admin import crl
from webapp.events import Event

NOW = WEDNESDAY_10_UTC


def crl_pem(
    ca: TestCA, revoked: list[Issued], *, this: dt.datetime = NOW - dt.timedelta(hours=1), days: int = 7
) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(this)
        .next_update(this + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(42), critical=False)
    )
    for issued in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(issued.cert.serial_number)
            .revocation_date(this)
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _fp(issued: Issued) -> str:
    return hashlib.sha256(issued.der).hexdigest()


def _folded(issued: Issued) -> str:
    """A PEM as a one-line field gets it: line breaks turned into spaces."""
    return " ".join(issued.pem.decode().split())


def _row(page: str, fingerprint: str) -> str:
    start = page.index(fingerprint)
    return page[page.rindex("<tr>", 0, start) : page.index("</tr>", start)]


# --- the page -----------------------------------------------------------------------------------------


def test_the_page_lists_bindings_and_says_the_crl_is_unknown_without_one(
    app: Flask, ada: FlaskClient, people: dict[str, Person]
) -> None:
    before = len(audit_rows(app))
    page = get(ada, "/admin/certificates")
    assert page.status_code == 200
    assert page.text.count("<h1>") == 1
    assert [r.event for r in audit_rows(app)[before:]] == [Event.CERTS_LISTED]
    alice = _row(page.text, _fp(people["alice"].cert))
    assert "CN=alice" in alice
    assert "unknown" in alice
    assert "not revoked" not in page.text
    assert "not configured" in page.text
    serial = format(people["alice"].cert.cert.serial_number, "x")
    assert f"python -m ca revoke {serial} --reason keyCompromise" in alice
    assert "python -m ca issue USERNAME --out USERNAME.p12" in page.text


def test_the_crl_says_which_bound_certificate_is_revoked(
    app: Flask, ca: TestCA, people: dict[str, Person], admin: Person, tmp_path: Path
) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(ca, [people["bob"].cert]))
    app.config["CA_CRL_FILE"] = str(path)
    client = logged_in(app, admin)
    page = get(client, "/admin/certificates").text
    assert "not revoked" in _row(page, _fp(people["alice"].cert))
    assert ">revoked<" in _row(page, _fp(people["bob"].cert))
    assert "The CRL is current" in page
    assert "CN=Strongroom Test CA" in page
    assert "<td>42</td><td>1</td>" in page  # CRL number, revoked serials
    users = get(client, "/admin/users").text
    assert ">revoked<" in users[users.index(">bob<") :]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "unreadable (FileNotFoundError)"),
        (b"", "not a CRL"),
        (b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n", "not a CRL"),
        (b"garbage", "not a CRL"),
        ("expired", "expired"),
        ("future", "not yet valid"),
    ],
)
def test_an_unusable_crl_makes_every_answer_unknown(
    ca: TestCA, people: dict[str, Person], content: object, problem: str, tmp_path: Path, app: Flask
) -> None:
    if content == "expired":
        data: bytes | None = crl_pem(ca, [people["bob"].cert], this=NOW - dt.timedelta(days=8))
    elif content == "future":
        data = crl_pem(ca, [people["bob"].cert], this=NOW + dt.timedelta(hours=1))
    else:
        data = content  # type: ignore[assignment]
    path = tmp_path / "crl.pem"
    if data is not None:
        path.write_bytes(data)
    found = crl.status(str(path), now=NOW)
    assert not found.ok
    assert problem in (found.problem or "")
    assert found.revocation(format(people["alice"].cert.cert.serial_number, "x")) is crl.Revocation.UNKNOWN
    if content in ("expired", "future"):  # a listed serial stays revoked whatever the dates
        bob = format(people["bob"].cert.cert.serial_number, "x")
        assert found.revocation(bob) is crl.Revocation.REVOKED


def test_an_unusable_crl_is_shown_as_such(
    app: Flask, ca: TestCA, admin: Person, people: dict[str, Person], tmp_path: Path
) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(ca, [], this=NOW - dt.timedelta(days=8)))
    app.config["CA_CRL_FILE"] = str(path)
    page = get(logged_in(app, admin), "/admin/certificates").text
    assert "expired" in page
    assert "not revoked" not in page
    assert "unknown" in _row(page, _fp(people["alice"].cert))


def test_both_crls_of_the_file_are_read(ca: TestCA, people: dict[str, Person], tmp_path: Path) -> None:
    root = TestCA("Strongroom Test Root")
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(ca, []) + crl_pem(root, [people["alice"].cert]))
    found = crl.status(str(path), now=NOW)
    assert found.ok
    assert len(found.crls) == 2
    assert found.revocation(format(people["alice"].cert.cert.serial_number, "x")) is crl.Revocation.REVOKED


# --- bind ---------------------------------------------------------------------------------------------


def _carol(app: Flask, ca: TestCA, tmp_path: Path) -> Issued:
    result = app.test_cli_runner().invoke(
        args=["users", "add", "carol", "--role", "clerk", "--password-stdin"],
        input="Amber-Falcon-Quiver-8305\n",
    )
    assert result.exit_code == 0, result.output
    return ca.issue("carol")


@pytest.mark.parametrize("fold", [_folded, lambda i: i.pem.decode().replace("\n", "")])
def test_bind_a_pasted_certificate(
    app: Flask, ada: FlaskClient, ca: TestCA, tmp_path: Path, fold: Callable[[Issued], str]
) -> None:
    cert = _carol(app, ca, tmp_path)
    response = confirm_post(ada, "/admin/certificates", username="carol", pem=fold(cert))
    assert response.status_code == 302
    [bound] = audit_rows(app, Event.CERT_BOUND)[-1:]
    assert bound.actor == "ada"
    assert bound.resource == f"cert:{_fp(cert)}"
    assert f"reason={REASON}" in bound.detail
    assert Event.CERT_BOUND in events(app)
    page = get(ada, "/admin/certificates").text
    assert "is bound to carol" in page
    assert "bound" in _row(page, _fp(cert))


OTHER_CA = TestCA("Someone Else's CA")


@pytest.mark.parametrize(
    ("pem", "message"),
    [
        ("", "paste exactly one certificate"),
        ("hello", "paste exactly one certificate"),
        (
            "-----BEGIN CERTIFICATE----- bm90IGEgY2VydA== -----END CERTIFICATE-----",
            "not a readable certificate",
        ),
        ("CARD 4111111111111111", "paste exactly one certificate"),
        ("TWO", "paste exactly one certificate"),
        ("CA", "not an employee&#39;s client certificate"),
        ("SERVER", "not an employee&#39;s client certificate"),
        ("REVOKED", "the CRL lists this certificate as revoked"),
        ("FOREIGN", "not issued by our CA"),
    ],
)
def test_bind_refuses_what_is_not_one_of_our_client_certificates(
    app: Flask,
    admin: Person,
    ca: TestCA,
    tmp_path: Path,
    people: dict[str, Person],
    pem: str,
    message: str,
) -> None:
    cert = _carol(app, ca, tmp_path)
    path = tmp_path / "crl.pem"
    path.write_bytes(crl_pem(ca, [cert] if pem == "REVOKED" else []))
    app.config["CA_CRL_FILE"] = str(path)
    value = {
        "TWO": _folded(cert) + " " + _folded(people["alice"].cert),
        "CA": " ".join(ca.pem.decode().split()),
        "SERVER": _folded(ca.issue("vault", server=True)),
        "REVOKED": _folded(cert),
        "FOREIGN": _folded(OTHER_CA.issue("carol")),
        "CARD 4111111111111111": "card 4111111111111111",
    }.get(pem, pem)
    response = confirm_post(logged_in(app, admin), "/admin/certificates", username="carol", pem=value)
    assert response.status_code == 400
    html = response.text
    error = html[html.index('id="pem-error"') :]
    assert message in error[: error.index("</span>")]
    assert "4111111111111111" not in html
    assert not [r for r in audit_rows(app, Event.CERT_BOUND) if r.actor == "ada"]
    [invalid] = audit_rows(app, Event.FORM_INVALID)
    assert invalid.detail == "fields:pem"
    assert Event.FORM_INVALID not in events(app)


def test_a_pasted_private_key_is_refused_and_never_shown_again(
    app: Flask, ada: FlaskClient, ca: TestCA, tmp_path: Path
) -> None:
    cert = _carol(app, ca, tmp_path)
    key = cert.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    body = " ".join(key.split()[3:-3])  # the base64 lines between BEGIN PRIVATE KEY and END
    folded = _folded(cert) + " " + " ".join(key.split())
    response = confirm_post(ada, "/admin/certificates", username="carol", pem=folded)
    assert response.status_code == 400
    assert "this is a private key" in response.text
    assert body not in response.text
    assert "PRIVATE KEY-----" not in response.text
    assert not [r for r in audit_rows(app, Event.CERT_BOUND) if r.actor == "ada"]


def test_bind_to_an_unknown_user_is_shown_next_to_the_name(app: Flask, ada: FlaskClient, ca: TestCA) -> None:
    response = confirm_post(ada, "/admin/certificates", username="nobody", pem=_folded(ca.issue("nobody")))
    assert response.status_code == 400
    assert 'id="username-error"' in response.text
    assert 'value="nobody"' in response.text


def test_bind_an_already_bound_certificate_is_refused(
    app: Flask, ada: FlaskClient, people: dict[str, Person]
) -> None:
    response = confirm_post(ada, "/admin/certificates", username="bob", pem=_folded(people["alice"].cert))
    assert response.status_code == 409
    assert "already bound" in response.text
    [refused] = audit_rows(app, Event.CERT_BIND_REFUSED)
    assert refused.detail == "already_bound"


def test_bind_needs_the_confirmation(app: Flask, ada: FlaskClient, ca: TestCA, tmp_path: Path) -> None:
    cert = _carol(app, ca, tmp_path)
    response = confirm_post(ada, "/admin/certificates", username="carol", pem=_folded(cert), reason=None)
    assert response.status_code == 400
    assert 'id="reason-error"' in response.text
    assert 'value="carol"' in response.text  # what was typed is kept
    assert not [r for r in audit_rows(app, Event.CERT_BOUND) if r.actor == "ada"]
    assert audit_rows(app, Event.CONFIRM_REFUSED)


# --- unbind -------------------------------------------------------------------------------------------


def test_unbind_ends_the_certificates_sessions(
    app: Flask, ada: FlaskClient, people: dict[str, Person]
) -> None:
    alice = logged_in(app, people["alice"])
    fingerprint = _fp(people["alice"].cert)
    page = get(ada, f"/admin/certificates/{fingerprint}/unbind")
    assert page.status_code == 200
    assert "python -m ca revoke" in page.text
    response = confirm_post(ada, f"/admin/certificates/{fingerprint}/unbind")
    assert response.status_code == 302
    [unbound] = audit_rows(app, Event.CERT_UNBOUND)
    assert unbound.actor == "ada"
    assert f"reason={REASON}" in unbound.detail
    assert "sessions_ended=1" in unbound.detail
    assert get(alice, "/").status_code == 302
    assert "unbound" in _row(get(ada, "/admin/certificates").text, fingerprint)
    assert get(ada, f"/admin/certificates/{fingerprint}/unbind").status_code == 404  # not bound any more


def test_an_admin_cannot_unbind_their_own_certificate(app: Flask, ada: FlaskClient, admin: Person) -> None:
    fingerprint = _fp(admin.cert)
    response = confirm_post(ada, f"/admin/certificates/{fingerprint}/unbind")
    assert response.status_code == 409
    assert "your own certificate" in response.text
    assert get(ada, "/admin/certificates").status_code == 200
    assert audit_rows(app, Event.ADMIN_REFUSED)[-1].detail == "own_certificate"


@pytest.mark.parametrize("fingerprint", ["ab" * 32, "AB" * 32, "zz", "ab" * 33, "4111111111111111"])
def test_unknown_or_malformed_fingerprints_are_404(app: Flask, ada: FlaskClient, fingerprint: str) -> None:
    assert get(ada, f"/admin/certificates/{fingerprint}/unbind").status_code == 404


# --- who may -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "audrey", "sam"])
def test_every_other_role_is_refused(
    app: Flask, ca: TestCA, tmp_path: Path, people: dict[str, Person], who: str
) -> None:
    person = add_person(app, ca, tmp_path, "sam", "supervisor") if who == "sam" else people[who]
    client = logged_in(app, person)
    fingerprint = _fp(people["bob"].cert)
    assert get(client, "/admin/certificates").status_code == 403
    assert get(client, f"/admin/certificates/{fingerprint}/unbind").status_code == 403
    data = {
        "csrf_token": csrf_token(get(client, "/").text),
        "reason": REASON,
        "confirm_typed": person.password,
    }
    assert post(client, f"/admin/certificates/{fingerprint}/unbind", data=data).status_code == 403
    denied = [r for r in audit_rows(app, Event.ACCESS_DENIED) if r.actor == who]
    assert len(denied) == 3
    assert not audit_rows(app, Event.CERT_UNBOUND)
    assert user_row(app, "bob").active
