"""The OpenAPI document as the tests' judge: each API response a test gets is checked against the
schema the document gives for its operation and status (`check`), so the code cannot drift from it."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import jsonschema_rs
from werkzeug.test import TestResponse

from webapp.api.views import OPENAPI_FILE
from webapp.redact import contains_pan

BASE = "/api/v1"


@functools.cache
def document() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(OPENAPI_FILE.read_text())
    return found


@functools.cache
def _templates() -> list[tuple[re.Pattern[str], str]]:
    return [
        (re.compile("^" + re.sub(r"\{[^}]+\}", r"[^/]+", template) + "$"), template)
        for template in document()["paths"]
    ]


def operation_of(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """(path template, operation) for a request path under /api/v1, None when the document has none."""
    bare = path.split("?", 1)[0].removeprefix(BASE)
    for pattern, template in _templates():
        if pattern.match(bare):
            op = document()["paths"][template].get("head" if method == "HEAD" else method.lower())
            if op is None and method == "HEAD":
                op = document()["paths"][template].get("get")
            return (template, op) if op is not None else None
    return None


@functools.cache
def _validator(schema_json: str) -> Any:
    schema = json.loads(schema_json)
    return jsonschema_rs.Draft202012Validator({**schema, "components": document()["components"]})


def check(method: str, path: str, r: TestResponse) -> None:
    """The response matches the document: its status is one the operation lists, its media type is
    the one listed for that status, and its body validates against that schema. And whatever the
    call, no answer of the API holds a card number, in any spelling (webapp/redact.py's detector)."""
    assert not contains_pan(r.get_data(as_text=True)), f"{method} {path}: a card number in the answer"
    found = operation_of(method, path)
    if found is None or method == "HEAD":
        return  # not an operation of the document (a 404 path, a 405 method): the problem shape only
    template, op = found
    listed = op["responses"].get(str(r.status_code))
    assert listed is not None, f"{method} {template}: status {r.status_code} is not in the document"
    content = listed.get("content", {})
    assert r.mimetype in content, f"{method} {template} {r.status_code}: {r.mimetype} not in {list(content)}"
    schema = content[r.mimetype]["schema"]
    errors = [str(e) for e in _validator(json.dumps(schema, sort_keys=True)).iter_errors(r.json)]
    assert not errors, f"{method} {template} {r.status_code}: {errors[:3]}"
    if r.mimetype == "application/problem+json":
        assert r.json is not None
        slug = r.json["type"].rsplit("/", 1)[-1]
        assert slug in listed["description"], f"{method} {template} {r.status_code}: {slug} not documented"
