"""Behind Apache (proxy mode): the certificate arrives in Apache's header on the private Unix socket;
the API decides on it exactly as on a TLS connection, and a forged header opens nothing."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.fixtures.pki import Issued, TestCA
from tests.webapp.api.conftest import add_service, api_get, api_post, assert_problem, audit_rows, counts
from tests.webapp.conftest import Person

HEADER = "X-Strongroom-Client-Cert"


class UnixSocket:
    family = socket.AF_UNIX


def _behind_proxy(app: Flask, sock: object, cert: Issued | None) -> tuple[Any, dict[str, str]]:
    client = app.test_client()
    client.environ_base.update({"gunicorn.socket": sock, "REMOTE_ADDR": ""})
    headers = {"X-Strongroom-Client-IP": "192.0.2.9"}
    if cert is not None:
        headers[HEADER] = cert.pem.decode().strip().replace("\n", " ")  # as mod_headers folds it
    return client, headers


@pytest.fixture
def proxied(make_app: Callable[..., Flask]) -> Flask:
    return make_app(BEHIND_PROXY=True)


def test_the_service_certificate_in_apaches_header(proxied: Flask, ca: TestCA, tmp_path: Path) -> None:
    service = add_service(proxied, ca, tmp_path)
    client, headers = _behind_proxy(proxied, UnixSocket(), service.cert)
    r = api_post(client, "/records", {"crm_ref": "C1234567"}, headers=headers)
    assert r.status_code == 201
    last = audit_rows(proxied)[-1]
    assert (last.event, last.actor, last.ip) == ("records.added", "crm", "192.0.2.9")


def test_a_persons_certificate_in_apaches_header(proxied: Flask, people: dict[str, Person]) -> None:
    client, headers = _behind_proxy(proxied, UnixSocket(), people["alice"].cert)
    assert_problem(api_get(client, "/records?crm_ref=C1234567", headers=headers), "person-certificate")


def test_the_header_over_tcp_is_not_believed(proxied: Flask, ca: TestCA, tmp_path: Path) -> None:
    service = add_service(proxied, ca, tmp_path)
    client, headers = _behind_proxy(proxied, object(), service.cert)
    before = counts(proxied)
    r = api_post(client, "/records", {"crm_ref": "C1234567"}, headers=headers)
    assert_problem(r, "certificate-required")
    assert counts(proxied) == before
    events = [row.event for row in audit_rows(proxied)]
    assert "auth.cert_header_untrusted" in events
