"""The OpenAPI document is the contract: every route of the blueprint is in it and every path of it is
a route, every problem type the code can answer is in it (and in docs/crm-api.md), the app serves it
as it is in the repository, and the responses the tests see validate against it (contract.check, run
on every call of tests/webapp/api)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.webapp.api import contract
from tests.webapp.api.conftest import api_get
from webapp.api.blueprint import PREFIX
from webapp.api.problems import PROBLEMS, TYPE_BASE
from webapp.api.views import OPENAPI_FILE

ROOT = Path(__file__).resolve().parents[3]


def _routes(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule).removeprefix(PREFIX)
            found |= {(path, m.lower()) for m in rule.methods or () if m in ("GET", "POST")}
    return found


def _documented() -> set[tuple[str, str]]:
    return {(path, method) for path, ops in contract.document()["paths"].items() for method in ops}


def test_every_route_is_documented_and_every_documented_path_is_a_route(app: Flask) -> None:
    assert _routes(app) == _documented()


def test_only_get_head_and_post_exist(app: Flask) -> None:
    """Apache passes nothing else (docs/apache.md)."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            assert set(rule.methods or ()) <= {"GET", "HEAD", "POST", "OPTIONS"}, rule


def test_the_document_is_openapi_3_1_with_every_problem_type() -> None:
    doc = contract.document()
    assert doc["openapi"].startswith("3.1")
    enum = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    assert enum == [TYPE_BASE + slug for slug in PROBLEMS]
    # Every POST needs an Idempotency-Key and takes application/json alone.
    for path, ops in doc["paths"].items():
        if "post" in ops:
            names = {p["name"] for p in ops["post"]["parameters"]}
            assert "Idempotency-Key" in names, path
            assert list(ops["post"]["requestBody"]["content"]) == ["application/json"], path


def test_schemathesis_loads_the_document() -> None:
    import schemathesis

    schema = schemathesis.openapi.from_dict(contract.document())
    assert len(list(schema.get_all_operations())) == len(_documented())


def test_every_problem_type_is_in_the_guide() -> None:
    guide = (ROOT / "docs" / "crm-api.md").read_text()
    missing = [slug for slug in PROBLEMS if f"`{slug}`" not in guide]
    assert not missing


def test_the_app_serves_the_document_it_is_held_to(api: FlaskClient) -> None:
    r = api_get(api, "/openapi.json")
    assert r.status_code == 200
    assert r.mimetype == "application/json"
    assert r.json == json.loads(OPENAPI_FILE.read_text())


@pytest.mark.parametrize(
    "body",
    [
        {"id": "1", "crm_ref": "C1", "created_at": "x", "retired": False},  # id must be an integer
        {"id": 1, "crm_ref": "C1", "created_at": "x"},  # retired missing
        {"id": 1, "crm_ref": "C1", "created_at": "x", "retired": False, "pan": "4111111111111111"},
    ],
)
def test_the_judge_refuses_what_the_document_does_not_allow(body: dict[str, object]) -> None:
    from werkzeug.test import TestResponse

    r = TestResponse(json.dumps(body), status=201, headers={"Content-Type": "application/json"}, request=None)  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        contract.check("POST", "/api/v1/records", r)


def test_the_judge_refuses_a_card_number_anywhere() -> None:
    from werkzeug.test import TestResponse

    problem = {"type": "x", "title": "t", "status": 400, "detail": "got 4111 1111 1111 1111"}
    r = TestResponse(
        json.dumps(problem), status=400, headers={"Content-Type": "application/problem+json"}, request=None
    )  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="card number"):
        contract.check("POST", "/api/v1/records", r)
