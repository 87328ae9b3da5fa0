"""Shared fixtures and helpers for the records, items, reveal and matrix suites (imported by them;
this module holds no tests). A real keyd subprocess does the encryption."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from keyd.client import KeydClient
from tests.fixtures.pki import TestCA
from tests.keyd.conftest import Keyd, unsealed_keyd
from tests.webapp.conftest import PASSWORDS, Person, client_for, csrf_token, get, login, post

VISA = "4111 1111 1111 1111"
CRM = "C1234567"
IBAN = "DE89 3704 0044 0532 0130 00"
REASON = "customer called about a disputed charge"
SUPERVISOR_PASSWORD = "Saffron-Beacon-Walnut-7351"
ADMIN_PASSWORD = "Marble-Tundra-Whistle-6142"


@pytest.fixture
def records_grants() -> None:
    """Nothing left to do: webapp/db/grants.sql now grants what migration 0005 needs. Kept only
    because tests/webapp/test_no_pan_leak.py imports it; remove both together."""


@pytest.fixture(scope="module")
def keyd_running() -> Iterator[tuple[Keyd, bytes]]:
    with unsealed_keyd() as running:
        yield running.keyd, running.key


@pytest.fixture
def vault(keyd_running: tuple[Keyd, bytes]) -> Iterator[KeydClient]:  # the real client, not FakeVault
    client = KeydClient(keyd_running[0].socket, timeout=5.0)
    yield client
    client.close()


def add_person(app: Flask, ca: TestCA, tmp_path: Path, name: str, role: str, password: str) -> Person:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=["users", "add", name, "--role", role, "--password-stdin"], input=password + "\n"
    )
    assert result.exit_code == 0, result.output
    issued = ca.issue(name)
    pem, _ = issued.write(tmp_path, name)
    result = runner.invoke(args=["certs", "bind", name, str(pem)])
    assert result.exit_code == 0, result.output
    return Person(name, password, issued)


@pytest.fixture
def staff(app: Flask, people: dict[str, Person], ca: TestCA, tmp_path: Path) -> dict[str, Person]:
    """alice (clerk), audrey (auditor), sam (supervisor), adam (admin)."""
    return {
        "clerk": people["alice"],
        "auditor": people["audrey"],
        "supervisor": add_person(app, ca, tmp_path, "sam", "supervisor", SUPERVISOR_PASSWORD),
        "admin": add_person(app, ca, tmp_path, "adam", "admin", ADMIN_PASSWORD),
    }


def logged_in(app: Flask, person: Person) -> FlaskClient:
    client = client_for(app, person.cert)
    assert login(client, person.username, person.password).status_code == 302
    return client


def token_of(client: FlaskClient) -> str:
    return csrf_token(get(client, "/").text)


def add_record(client: FlaskClient, crm: str = CRM) -> int:
    r = post(client, "/records/", data={"csrf_token": token_of(client), "crm_ref": crm})
    assert r.status_code == 302, r.text
    return int(r.headers["Location"].rsplit("/", 1)[1])


def card_data(**fields: str | None) -> dict[str, str]:
    data: dict[str, str | None] = {
        "pan": VISA,
        "cardholder": "Ada Lovelace",
        "exp_month": "12",
        "exp_year": "2028",
    }
    data.update(fields)
    return {k: v for k, v in data.items() if v is not None}


def add_card(client: FlaskClient, record_id: int, **fields: str | None) -> str:
    before = ids(client, "cards")
    data = {"csrf_token": token_of(client), **card_data(**fields)}
    r = post(client, f"/records/{record_id}/cards", data=data)
    assert r.status_code == 302, r.text
    (new,) = ids(client, "cards") - before
    return new


def add_item(client: FlaskClient, record_id: int, kind: str, value: str, doc_type: str | None = None) -> str:
    before = ids(client, "items")
    data = {"csrf_token": token_of(client), "value": value}
    if doc_type:
        data["doc_type"] = doc_type
    r = post(client, f"/records/{record_id}/{kind}", data=data)
    assert r.status_code == 302, r.text
    (new,) = ids(client, "items") - before
    return new


def ids(client: FlaskClient, table: str) -> set[str]:
    with client.application.extensions["strongroom"].engine.connect() as conn:
        return {str(i) for i in conn.execute(sa.text(f"SELECT id FROM {table}")).scalars()}  # noqa: S608 - ours


_STEPUP = re.compile(r'name="stepup"[^>]*value="([^"]+)"')


def reveal_form(client: FlaskClient, url: str) -> tuple[str, str]:
    """(csrf token, step-up token) of a fresh reveal form."""
    page = get(client, url)
    assert page.status_code == 200, page.text
    m = _STEPUP.search(page.text)
    assert m, "no step-up token on the reveal form: " + re.sub(r"\s+", " ", page.text)[-1500:]
    return csrf_token(page.text), m.group(1)


def reveal(
    client: FlaskClient,
    url: str,
    password: str,
    *,
    reason: str = REASON,
    tokens: tuple[str, str] | None = None,
) -> TestResponse:
    csrf, stepup = tokens or reveal_form(client, url)
    return post(
        client, url, data={"csrf_token": csrf, "stepup": stepup, "reason": reason, "stepup_typed": password}
    )


def rows(app: Flask, table: sa.Table) -> list[sa.Row]:
    with app.extensions["strongroom"].engine.connect() as conn:
        return list(conn.execute(sa.select(table)))


__all__ = ["PASSWORDS"]
