"""Where the client certificate comes from: the TLS socket, or Apache's header over the private socket."""

from __future__ import annotations

import base64
import socket
from collections.abc import Callable

import pytest
from flask import Flask

from tests.fixtures.pki import TestCA
from tests.webapp.conftest import HTTPS, Person, client_for, get
from tests.webapp.helpers import audit_rows, events
from webapp.auth.certs import BadCertificate, CertInfo, der_from_folded_pem
from webapp.events import Event

HEADER = "X-Strongroom-Client-Cert"


def folded(pem: bytes) -> str:
    """What Apache's mod_headers makes of a PEM: newlines folded into spaces."""
    return pem.decode().strip().replace("\n", " ")


class UnixSocket:
    family = socket.AF_UNIX


def test_folded_pem_is_rebuilt(ca: TestCA) -> None:
    cert = ca.issue("alice")
    assert der_from_folded_pem(folded(cert.pem)) == cert.der
    assert der_from_folded_pem(cert.pem.decode()) == cert.der  # unfolded is fine too


@pytest.mark.parametrize(
    "mangle",
    [
        lambda p: p.replace("-----BEGIN CERTIFICATE-----", "-----BEGIN PUBLIC KEY-----"),
        lambda p: p.replace(" -----END CERTIFICATE-----", ""),
        lambda p: p + " " + p,  # two certificates
        lambda p: p.replace(" ", " <script> ", 2),
        lambda p: p[:200] + p[210:],  # truncated body
        lambda p: p.replace("A", "*", 1) if "A" in p[30:] else p.replace("B", "*", 1),
        lambda p: (
            "-----BEGIN CERTIFICATE----- "
            + base64.b64encode(b"not der").decode()
            + " -----END CERTIFICATE-----"
        ),
        lambda p: p + " " * 20000,
        lambda _: "",
    ],
)
def test_malformed_certificate_headers_are_refused(ca: TestCA, mangle: Callable[[str], str]) -> None:
    with pytest.raises(BadCertificate):
        der_from_folded_pem(mangle(folded(ca.issue("alice").pem)))


def test_fingerprint_is_sha256_of_der(ca: TestCA) -> None:
    import hashlib

    cert = ca.issue("alice")
    info = CertInfo.from_der(cert.der)
    assert info.fingerprint == hashlib.sha256(cert.der).hexdigest()
    assert info.serial == format(cert.cert.serial_number, "x")


def test_header_is_ignored_when_not_behind_the_proxy(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, None)
    r = client.get("/login", base_url=HTTPS, headers={HEADER: folded(people["alice"].cert.pem)})
    assert r.status_code == 403
    assert Event.CERT_HEADER_UNTRUSTED in events(app)


def _proxy_client(app: Flask, sock: object, cert_pem: bytes | None, ip: str = "192.0.2.7") -> object:
    client = app.test_client()
    client.environ_base.update({"gunicorn.socket": sock, "REMOTE_ADDR": ""})
    headers = {"X-Strongroom-Client-IP": ip}
    if cert_pem is not None:
        headers[HEADER] = folded(cert_pem)
    return client, headers


def test_header_is_trusted_behind_the_proxy_on_the_unix_socket(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(BEHIND_PROXY=True)
    client, headers = _proxy_client(app, UnixSocket(), people["alice"].cert.pem)
    r = client.get("/login", base_url=HTTPS, headers=headers)  # type: ignore[attr-defined]
    assert r.status_code == 200
    [page] = audit_rows(app, Event.LOGIN_PAGE)
    assert page.ip == "192.0.2.7"
    assert page.cert_serial == format(people["alice"].cert.cert.serial_number, "x")


def test_header_is_not_trusted_over_tcp_even_behind_the_proxy(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(BEHIND_PROXY=True)
    client, headers = _proxy_client(app, object(), people["alice"].cert.pem)
    r = client.get("/login", base_url=HTTPS, headers=headers)  # type: ignore[attr-defined]
    assert r.status_code == 403
    assert Event.CERT_HEADER_UNTRUSTED in events(app)


def test_a_mangled_header_behind_the_proxy_is_no_certificate(
    make_app: Callable[..., Flask], people: dict[str, Person]
) -> None:
    app = make_app(BEHIND_PROXY=True)
    client, headers = _proxy_client(app, UnixSocket(), None)
    headers[HEADER] = "-----BEGIN CERTIFICATE----- AAAA -----END CERTIFICATE-----"
    r = client.get("/login", base_url=HTTPS, headers=headers)  # type: ignore[attr-defined]
    assert r.status_code == 403


def test_subject_strings_mean_nothing(app: Flask, people: dict[str, Person], ca: TestCA) -> None:
    # A certificate from the same CA with alice's exact subject is still not alice's certificate.
    assert get(client_for(app, ca.issue("alice")), "/login").status_code == 403
