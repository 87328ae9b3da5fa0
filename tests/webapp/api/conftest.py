"""Fixtures for the JSON API: a service account `crm` bound to a service certificate (the CA's service
profile), the people of tests/webapp/conftest.py, and helpers that call the API as the CRM does."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.fixtures.pki import Issued, TestCA
from tests.webapp.api import contract
from tests.webapp.conftest import HTTPS, client_for

VISA = "4111111111111111"
_KEYS = itertools.count(1)


@dataclass(frozen=True)
class Service:
    name: str
    cert: Issued
    pem: Path


def add_service(app: Flask, ca: TestCA, tmp_path: Path, name: str = "crm") -> Service:
    issued = ca.issue_service(name)
    pem, _ = issued.write(tmp_path, f"service-{name}")
    result = app.test_cli_runner().invoke(args=["services", "add", name, "--cert", str(pem)])
    assert result.exit_code == 0, result.output
    return Service(name, issued, pem)


@pytest.fixture
def crm(app: Flask, ca: TestCA, tmp_path: Path) -> Service:
    return add_service(app, ca, tmp_path)


@pytest.fixture
def api(app: Flask, crm: Service) -> FlaskClient:
    return client_for(app, crm.cert)


def new_key() -> str:
    return f"test-key-{next(_KEYS)}"


def api_get(client: FlaskClient, path: str, **kw: Any) -> TestResponse:
    r = client.get("/api/v1" + path, base_url=HTTPS, **kw)
    contract.check("GET", "/api/v1" + path, r)  # every response the tests see is held to the document
    return r


def api_post(
    client: FlaskClient,
    path: str,
    body: Any = None,
    *,
    key: str | None = "",
    raw: bytes | None = None,
    **kw: Any,
) -> TestResponse:
    headers = dict(kw.pop("headers", {}))
    if key == "":
        key = new_key()
    if key is not None:
        headers["Idempotency-Key"] = key
    data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    kw.setdefault("content_type", "application/json")
    r = client.post("/api/v1" + path, base_url=HTTPS, data=data, headers=headers, **kw)
    contract.check("POST", "/api/v1" + path, r)
    return r


def new_record(client: FlaskClient, crm_ref: str = "C1234567") -> int:
    r = api_post(client, "/records", {"crm_ref": crm_ref})
    assert r.status_code == 201, r.text
    return int(r.json["id"])  # type: ignore[index]


def card_body(**over: Any) -> dict[str, Any]:
    return {"pan": VISA, "cardholder": "Ada Lovelace", "exp_month": 12, "exp_year": 2030, **over}


def audit_rows(app: Flask) -> list[Any]:
    import sqlalchemy as sa

    from webapp.db.tables import audit_log

    with app.extensions["strongroom"].engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)))


def counts(app: Flask) -> dict[str, int]:
    """What a refused call must not change: rows of every table a call could write."""
    import sqlalchemy as sa

    from webapp.api.tables import api_idempotency
    from webapp.db.tables import sessions
    from webapp.records.tables import cards, customer_records

    with app.extensions["strongroom"].engine.connect() as conn:
        return {
            t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in (customer_records, cards, api_idempotency, sessions)
        }


def assert_problem(r: TestResponse, slug: str, status: int | None = None) -> None:
    from webapp.api.problems import PROBLEMS, TYPE_BASE

    assert r.mimetype == "application/problem+json", (r.status_code, r.text[:300])
    assert r.json is not None
    assert r.json["type"] == TYPE_BASE + slug, r.json
    assert r.status_code == (status or PROBLEMS[slug].status) == r.json["status"], r.json
    assert "Set-Cookie" not in r.headers
