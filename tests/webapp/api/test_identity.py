"""Who may use which door: a service certificate bound to an active service account on /api/v1 and
nowhere else; a person's certificate never on the API. The binding is read on every request."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from ca import pki
from tests.fixtures.pki import POLICY_SERVICE, SERVICE_OU, TestCA
from tests.webapp.api.conftest import (
    Service,
    add_service,
    api_get,
    api_post,
    assert_problem,
    audit_rows,
    counts,
    new_record,
)
from tests.webapp.conftest import HTTPS, Person, client_for, get, login, post
from webapp.auth import certs
from webapp.auth.certs import CertInfo
from webapp.clock import FakeClock


def test_the_service_markers_are_the_cas() -> None:
    assert certs.POLICY_SERVICE == POLICY_SERVICE == pki.POLICY_SERVICE.dotted_string
    assert certs.SERVICE_OU == SERVICE_OU == pki.OU[pki.Profile.SERVICE]


@pytest.mark.parametrize(
    ("ou", "policies", "kind"),
    [
        (None, (), "person"),
        ("Employees", (), "person"),
        ("Employees", ("2.25.22033508438951570933007078275750193565",), "person"),
        (SERVICE_OU, (POLICY_SERVICE,), "service"),
        (SERVICE_OU, (), "ambiguous"),  # the OU alone does not make a service
        ("Employees", (POLICY_SERVICE,), "ambiguous"),  # nor the policy alone
        (None, (POLICY_SERVICE,), "ambiguous"),
    ],
)
def test_certificate_kind(ca: TestCA, ou: str | None, policies: tuple[str, ...], kind: str) -> None:
    assert CertInfo.from_der(ca.issue("x", ou=ou, policies=policies).der).kind == kind


def test_a_real_ca_service_certificate_is_a_service() -> None:
    """The CA's own service profile (ca/pki.py), not only the test CA's imitation of it."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    key = pki.new_ca_key()
    root = pki.build_root(key, org="Strongroom", now=now, days=30)
    leaf = pki.build_leaf(
        pki.Profile.SERVICE,
        "crm",
        pki.new_leaf_key().public_key(),
        serial=7,
        issuer=root,
        issuer_key=key,
        org="Strongroom",
        now=now,
        days=30,
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    assert CertInfo.from_der(leaf.public_bytes(Encoding.DER)).kind == "service"


# --- people's certificates never work on the API -----------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/records?crm_ref=C1234567", "/records/1", "/records/1/cards", "/openapi.json"]
)
def test_a_persons_certificate_on_the_api_is_refused(
    app: Flask, people: dict[str, Person], crm: Service, path: str
) -> None:
    alice = client_for(app, people["alice"].cert)
    r = api_get(alice, path)
    assert_problem(r, "person-certificate")
    last = audit_rows(app)[-1]
    assert (last.event, last.outcome, last.actor) == ("auth.cert_refused", "failure", "alice")


def test_a_persons_certificate_posting_to_the_api_changes_nothing(
    app: Flask, people: dict[str, Person], api: FlaskClient
) -> None:
    record_id = new_record(api)
    before = counts(app)
    alice = client_for(app, people["alice"].cert)
    r = api_post(alice, f"/records/{record_id}/cards", {"pan": "4111111111111111"})
    assert_problem(r, "person-certificate")
    assert counts(app) == before


def test_no_certificate(app: Flask, crm: Service) -> None:
    assert_problem(api_get(client_for(app, None), "/records?crm_ref=C1234567"), "certificate-required")


@pytest.mark.parametrize(
    ("ou", "policies"), [(SERVICE_OU, ()), ("Employees", (POLICY_SERVICE,))], ids=["ou-only", "policy-only"]
)
def test_an_ambiguous_certificate_opens_no_door(
    app: Flask, ca: TestCA, ou: str, policies: tuple[str, ...]
) -> None:
    client = client_for(app, ca.issue("half", ou=ou, policies=policies))
    assert_problem(api_get(client, "/records?crm_ref=C1234567"), "certificate-ambiguous")
    r = get(client, "/login")
    assert r.status_code == 403
    assert "Set-Cookie" not in r.headers


# --- a service certificate never gets a browser session -------------------------------------------


@pytest.mark.parametrize(
    "path", ["/login", "/", "/records/", "/records/1", "/account/password", "/admin/users"]
)
def test_a_service_certificate_gets_no_page(app: Flask, crm: Service, path: str) -> None:
    client = client_for(app, crm.cert)
    r = get(client, path)
    assert r.status_code == 403
    assert r.mimetype == "text/html"
    assert "Set-Cookie" not in r.headers
    assert "service certificate" in r.text
    last = audit_rows(app)[-1]
    assert (last.event, last.outcome, last.detail) == (
        "auth.cert_refused",
        "failure",
        "service_certificate_on_browser",
    )
    assert counts(app)["sessions"] == 0


def test_a_service_certificate_cannot_post_a_login(app: Flask, crm: Service) -> None:
    client = client_for(app, crm.cert)
    r = post(client, "/login", data={"username": "crm", "password": "anything"})
    assert r.status_code == 403
    assert "Set-Cookie" not in r.headers
    assert counts(app)["sessions"] == 0


# --- disabling, unbinding, revoking: the next request is refused ----------------------------------


def test_disabling_the_account_stops_the_next_request(app: Flask, api: FlaskClient) -> None:
    assert api_get(api, "/records?crm_ref=C1234567").status_code == 200
    runner = app.test_cli_runner()
    assert runner.invoke(args=["users", "disable", "crm"]).exit_code == 0
    r = api_get(api, "/records?crm_ref=C1234567")
    assert_problem(r, "account-disabled")
    last = audit_rows(app)[-1]
    assert (last.event, last.actor) == ("auth.cert_refused", "crm")
    assert runner.invoke(args=["users", "enable", "crm"]).exit_code == 0
    assert api_get(api, "/records?crm_ref=C1234567").status_code == 200


def test_unbinding_the_certificate_stops_the_next_request(app: Flask, crm: Service, api: FlaskClient) -> None:
    assert api_get(api, "/records?crm_ref=C1234567").status_code == 200
    fingerprint = CertInfo.from_der(crm.cert.der).fingerprint
    result = app.test_cli_runner().invoke(
        args=["certs", "unbind", fingerprint, "--reason", "revoked by the CA"]
    )
    assert result.exit_code == 0, result.output
    assert_problem(api_get(api, "/records?crm_ref=C1234567"), "certificate-revoked")


def test_a_replaced_certificate_stops_working(
    app: Flask, ca: TestCA, crm: Service, api: FlaskClient, tmp_path: Path
) -> None:
    newer = ca.issue_service("crm")
    pem, _ = newer.write(tmp_path, "crm-newer")
    assert app.test_cli_runner().invoke(args=["certs", "bind", "crm", str(pem)]).exit_code == 0
    assert_problem(api_get(api, "/records?crm_ref=C1234567"), "certificate-revoked")
    assert api_get(client_for(app, newer), "/records?crm_ref=C1234567").status_code == 200


def test_an_unbound_service_certificate(app: Flask, ca: TestCA, crm: Service) -> None:
    stranger = client_for(app, ca.issue_service("stranger"))
    assert_problem(api_get(stranger, "/records?crm_ref=C1234567"), "certificate-not-bound")


def test_an_expired_certificate(app: Flask, crm: Service, api: FlaskClient, clock: FakeClock) -> None:
    clock.set(crm.cert.cert.not_valid_after_utc + timedelta(seconds=1))
    assert_problem(api_get(api, "/records?crm_ref=C1234567"), "certificate-expired")


# --- cookies ---------------------------------------------------------------------------------------


def test_a_session_cookie_on_an_api_call_is_refused(app: Flask, api: FlaskClient) -> None:
    before = counts(app)
    api.set_cookie(app.config["SESSION_COOKIE_NAME"], "x" * 43, domain="vault.example")
    r = api_post(api, "/records", {"crm_ref": "C1234567"})
    assert_problem(r, "session-cookie-refused")
    assert counts(app) == before


def test_a_real_session_cookie_of_a_person_is_refused_on_the_api(
    app: Flask, people: dict[str, Person], crm: Service
) -> None:
    """Even carried by the service certificate's connection, a logged-in employee's session cookie
    opens nothing on the API, and the session is not touched."""
    alice = client_for(app, people["alice"].cert)
    assert login(alice, "alice", people["alice"].password).status_code == 302
    name = app.config["SESSION_COOKIE_NAME"]
    cookie = alice.get_cookie(name, domain="vault.example")
    assert cookie is not None
    service = client_for(app, crm.cert)
    service.set_cookie(name, cookie.value, domain="vault.example")
    assert_problem(api_get(service, "/records?crm_ref=C1234567"), "session-cookie-refused")
    assert get(alice, "/").status_code == 200  # her session is still alive, untouched


def test_no_api_response_sets_a_cookie(app: Flask, api: FlaskClient) -> None:
    for r in (
        api_get(api, "/records?crm_ref=C1234567"),
        api_post(api, "/records", {"crm_ref": "C1234567"}),
        api_get(api, "/nowhere"),
        api.put("/api/v1/records", base_url=HTTPS),
    ):
        assert "Set-Cookie" not in r.headers, r.status_code
    assert counts(app)["sessions"] == 0


# --- the admin side --------------------------------------------------------------------------------


def test_a_service_certificate_binds_only_to_a_service_account(
    app: Flask, ca: TestCA, people: dict[str, Person], crm: Service, tmp_path: Path
) -> None:
    runner = app.test_cli_runner()
    service_pem, _ = ca.issue_service("alice").write(tmp_path, "svc-for-alice")
    r = runner.invoke(args=["certs", "bind", "alice", str(service_pem)])
    assert r.exit_code == 1
    assert "service certificate" in r.output
    person_pem, _ = ca.issue("crm").write(tmp_path, "person-for-crm")
    r = runner.invoke(args=["certs", "bind", "crm", str(person_pem)])
    assert r.exit_code == 1
    assert "service" in r.output


def test_services_have_no_password(app: Flask, crm: Service) -> None:
    runner = app.test_cli_runner()
    r = runner.invoke(args=["users", "add", "crm2", "--role", "crm", "--password-stdin"], input="x\n")
    assert r.exit_code != 0  # people's roles only
    r = runner.invoke(args=["users", "reset-password", "crm"])
    assert r.exit_code == 1
    assert "service account" in r.output
    r = runner.invoke(args=["services", "add", "crm"])
    assert r.exit_code == 1
    assert "already exists" in r.output


def test_two_service_accounts(app: Flask, ca: TestCA, crm: Service, tmp_path: Path) -> None:
    other = add_service(app, ca, tmp_path, "crm-eu")
    client = client_for(app, other.cert)
    r = api_post(client, "/records", {"crm_ref": "C7654321"})
    assert r.status_code == 201
    assert audit_rows(app)[-1].actor == "crm-eu"


def test_a_service_account_never_gets_the_login_page_whatever_its_binding(
    app: Flask, ca: TestCA, crm: Service
) -> None:
    """A binding the admin commands refuse (a person's certificate to a service account), made behind
    their back: the login page still refuses it (the password check is never reached)."""
    import sqlalchemy as sa

    from webapp.clock import to_db
    from webapp.db.tables import cert_bindings, users

    person_kind = ca.issue("crm")
    info = CertInfo.from_der(person_kind.der)
    engine = app.extensions["strongroom"].engine
    with engine.begin() as conn:
        user_id = conn.execute(sa.select(users.c.id).where(users.c.username == "crm")).scalar_one()
        conn.execute(
            sa.insert(cert_bindings).values(
                user_id=user_id,
                fingerprint=info.fingerprint,
                serial=info.serial,
                subject=info.subject,
                not_after=to_db(info.not_after),
                status="active",
                bound_at=to_db(info.not_after - timedelta(days=1)),
            )
        )
    r = get(client_for(app, person_kind), "/login")
    assert r.status_code == 403
    assert audit_rows(app)[-1].detail == "service_account_on_browser"
    # and on the API it is a person's certificate: refused there too
    assert_problem(api_get(client_for(app, person_kind), "/records?crm_ref=C1234567"), "person-certificate")
