"""Bad input: one row per hostile request and the exact refusal it must get. Each is refused with
400, audited, raised as an event, and changes nothing."""

from __future__ import annotations

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markupsafe import escape

from tests.webapp.conftest import HTTPS, Person, client_for, csrf_token, get
from tests.webapp.helpers import audit_rows, events, user_row
from webapp.audit import service as audit_service
from webapp.events import Event

LONG = "x" * 3000


@pytest.mark.parametrize(
    ("method", "query", "body", "content_type", "refusal"),
    [
        ("GET", "?debug=1", None, None, "query: unknown parameter 'debug'"),
        ("GET", "?%ff=1", None, None, "query: not valid UTF-8 / percent-encoding"),
        ("GET", "?a=%C3%28", None, None, "query: not valid UTF-8 / percent-encoding"),
        ("GET", "?a=1&a=2&b", None, None, "query: malformed or too many parameters"),
        (
            "POST",
            "",
            "username=alice&password=x&role=admin",
            "application/x-www-form-urlencoded",
            "form: unknown parameter 'role'",
        ),
        (
            "POST",
            "",
            "username=alice&username=bob",
            "application/x-www-form-urlencoded",
            "form: parameter 'username' given more than once",
        ),
        (
            "POST",
            "",
            f"username={LONG}",
            "application/x-www-form-urlencoded",
            "form: parameter 'username' is too long",
        ),
        (
            "POST",
            "",
            "username=al%00ice",
            "application/x-www-form-urlencoded",
            "form: parameter 'username' contains control or invalid characters",
        ),
        (
            "POST",
            "",
            "username=%E9t%E9",
            "application/x-www-form-urlencoded",
            "form: not valid UTF-8 / percent-encoding",
        ),
        (
            "POST",
            "",
            "username=\xe9",
            "application/x-www-form-urlencoded",
            "form: not valid UTF-8 / percent-encoding",
        ),
        ("POST", "", '{"username": "alice"}', "application/json", "unsupported content type: send a form"),
        ("POST", "", None, "multipart/form-data", "file uploads are not accepted"),
        (
            "POST",
            "?next=/evil",
            "username=alice",
            "application/x-www-form-urlencoded",
            "query: unknown parameter 'next'",
        ),
        (
            "POST",
            "",
            "&".join(f"p{i}=1" for i in range(30)),
            "application/x-www-form-urlencoded",
            "form: malformed or too many parameters",
        ),
    ],
)
def test_bad_input_is_refused_audited_and_changes_nothing(
    app: Flask,
    people: dict[str, Person],
    method: str,
    query: str,
    body: str | None,
    content_type: str | None,
    refusal: str,
) -> None:
    client = client_for(app, people["alice"].cert)
    kwargs: dict[str, object] = {"base_url": HTTPS}
    if content_type == "multipart/form-data":
        import io

        kwargs["data"] = {"username": "alice", "file": (io.BytesIO(b"card data"), "cards.csv")}
    elif body is not None:
        kwargs["data"] = body.encode("latin-1")
        kwargs["content_type"] = content_type
    r = client.open("/login" + query, method=method, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == 400
    assert str(escape(f"Request refused: {refusal}.")) in r.text
    [refused] = audit_rows(app, Event.INPUT_REFUSED)
    assert (refused.outcome, refused.detail, refused.resource) == ("failure", refusal, "/login")
    assert Event.INPUT_REFUSED in events(app)
    assert user_row(app, "alice").failed_logins == 0
    if body:
        assert "x" * 50 not in str([tuple(r) for r in audit_rows(app)])  # the value is never recorded


def test_oversized_body_is_refused(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, people["alice"].cert)
    r = client.post(
        "/login",
        base_url=HTTPS,
        data=b"username=" + b"a" * 70000,
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code == 400
    assert "too large" in r.text
    assert audit_rows(app, Event.INPUT_REFUSED)


def test_get_with_a_body_is_refused(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, people["alice"].cert)
    r = client.get(
        "/login", base_url=HTTPS, data=b"username=alice", content_type="application/x-www-form-urlencoded"
    )
    assert r.status_code == 400
    assert "must not have a body" in r.text


def test_parameter_names_are_not_echoed_raw(app: Flask, people: dict[str, Person]) -> None:
    r = get(client_for(app, people["alice"].cert), "/login?%3Cscript%3E=1")
    assert r.status_code == 400
    assert "<script>" not in r.text
    assert "&lt;script&gt;" in r.text


def test_a_valid_form_still_passes(app: Flask, people: dict[str, Person]) -> None:
    client = client_for(app, people["alice"].cert)
    page = get(client, "/login")
    r = client.post(
        "/login",
        base_url=HTTPS,
        data={"csrf_token": csrf_token(page.text), "username": "alice", "password": people["alice"].password},
    )
    assert r.status_code == 302


@settings(
    max_examples=60,
    deadline=None,
    # One app and database for all examples: each request is independent of the others.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(query=st.binary(max_size=200), body=st.binary(max_size=300))
def test_arbitrary_bytes_never_crash_the_app(
    app: Flask, people: dict[str, Person], query: bytes, body: bytes
) -> None:
    client = client_for(app, people["alice"].cert)
    environ = {"QUERY_STRING": query.decode("latin-1")}
    get_r = client.get("/login", base_url=HTTPS, environ_overrides=environ)
    post_r = client.post(
        "/login", base_url=HTTPS, data=body, content_type="application/x-www-form-urlencoded"
    )
    assert get_r.status_code in (200, 400)
    assert post_r.status_code in (200, 400)  # refused, or a failed login: never an error page
    with app.extensions["strongroom"].engine.connect() as conn:
        assert audit_service.verify(conn).ok
