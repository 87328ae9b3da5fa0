"""Errors as `application/problem+json` (RFC 9457): one stable `type` URI per kind of refusal.

Every refusal the API answers is a `Problem` (raised by the API's own code) or one of the app's
refusals (webapp/refusals.py: budgets, the matrix, 404, 405, keyd or the database unavailable),
which `render_refusal` turns into a problem for requests under /api/. `detail` says which rule
refused and never quotes a submitted value; the audit record says the same.

The table of types is PROBLEMS below; docs/crm-api.md and the OpenAPI document list the same slugs
(tests/webapp/api/test_contract.py holds them to it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask.wrappers import Response

from webapp.events import Event

TYPE_BASE = "https://strongroom.invalid/problems/"
MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True)
class Kind:
    status: int
    title: str


PROBLEMS: dict[str, Kind] = {
    # Who is calling (webapp/api/identity.py)
    "certificate-required": Kind(403, "A service certificate is required"),
    "person-certificate": Kind(403, "A person's certificate cannot be used on the API"),
    "certificate-ambiguous": Kind(403, "The certificate is neither a person's nor a service's"),
    "certificate-not-bound": Kind(403, "The certificate is not bound to a service account"),
    "certificate-revoked": Kind(403, "The certificate's binding was revoked or replaced"),
    "certificate-expired": Kind(403, "The certificate has expired"),
    "account-disabled": Kind(403, "The service account is disabled"),
    "not-a-service-account": Kind(403, "The certificate is bound to an account that is not a service"),
    "session-cookie-refused": Kind(400, "The API takes no cookies"),
    # What the request may do
    "permission-denied": Kind(403, "The service account may not do this"),
    "not-found": Kind(404, "No such resource"),
    "method-not-allowed": Kind(405, "Method not allowed"),
    "budget-exceeded": Kind(429, "Request budget used up"),
    # The request's shape (webapp/api/body.py, the input guard)
    "input-refused": Kind(400, "Request refused by the input rules"),
    "unsupported-media-type": Kind(415, "Send application/json"),
    "body-too-large": Kind(413, "Request body too large"),
    "body-malformed": Kind(400, "Request body is not one strict JSON object"),
    "body-too-deep": Kind(400, "Request body is nested too deeply"),
    "duplicate-key": Kind(400, "A key appears twice in one JSON object"),
    "unknown-field": Kind(400, "Unknown field"),
    "missing-field": Kind(400, "Required field missing"),
    "wrong-type": Kind(400, "Field has the wrong type"),
    "cursor-invalid": Kind(400, "The pagination cursor is not one this API issued"),
    "uri-too-long": Kind(414, "Request line too long"),  # the front door's (docs/apache.md)
    "request-blocked": Kind(403, "Refused by the front door's request filter"),  # ModSecurity's
    "idempotency-key-missing": Kind(400, "Idempotency-Key header required"),
    "idempotency-key-invalid": Kind(400, "Idempotency-Key header malformed"),
    "idempotency-key-reused": Kind(422, "Idempotency-Key already used for another request"),
    "idempotency-key-in-use": Kind(409, "A request with this Idempotency-Key is still running"),
    # The values (the browser's rules: webapp/records/cards.py, service.py)
    "crm-ref-invalid": Kind(422, "CRM reference has the wrong format"),
    "card-number-in-text": Kind(422, "A card number where none may be"),
    "card-number-invalid": Kind(422, "Card number refused"),
    "cardholder-invalid": Kind(422, "Cardholder name refused"),
    "expiry-invalid": Kind(422, "Expiry refused"),
    "security-code-refused": Kind(422, "Card security codes are never accepted"),
    "read-only": Kind(409, "The record or card is retired: it is read-only"),
    # The vault
    "vault-unavailable": Kind(503, "The vault is sealed or unavailable"),
    "database-unavailable": Kind(503, "The database is unavailable"),
    "database-write-refused": Kind(503, "The database refuses writes"),
    "reveal-budget-exceeded": Kind(429, "Decrypt budget used up"),
    "internal-error": Kind(500, "Unexpected error: nothing was changed"),
}


def type_uri(slug: str) -> str:
    return TYPE_BASE + slug


class Problem(Exception):
    """A refusal of the API. `detail` names the rule (never a value); `event` is what is audited."""

    def __init__(
        self,
        slug: str,
        detail: str,
        *,
        event: Event = Event.INPUT_REFUSED,
        audit: str | None = None,
        keep: bool = False,
        actor: str | None = None,
    ) -> None:
        if slug not in PROBLEMS:
            raise ValueError(f"unknown problem type {slug}")
        super().__init__(slug)
        self.slug = slug
        self.detail = detail
        self.event = event
        self.audit = audit or f"{slug}: {detail}"  # the audit record's detail
        self.keep = keep  # keep what the request wrote (nothing the API does needs it today)
        self.actor = actor  # who the refused caller is, when known before identification

    @property
    def status(self) -> int:
        return PROBLEMS[self.slug].status


def response(slug: str, detail: str, *, status: int | None = None) -> Response:
    """The problem+json response for `slug` (nothing audited here: see views.py and render_refusal)."""
    kind = PROBLEMS[slug]
    code = status or kind.status
    body = {"type": type_uri(slug), "title": kind.title, "status": code, "detail": detail}
    return Response(
        json.dumps(body, ensure_ascii=False, separators=(",", ":")), status=code, mimetype=MEDIA_TYPE
    )


# The app's own refusal pages (webapp/refusals.py), by template, then by audited event, then by status.
_BY_TEMPLATE = {
    "vault_unavailable.html": "vault-unavailable",
    "db_unavailable.html": "database-unavailable",
    "db_write_refused.html": "database-write-refused",
    "quota_exceeded.html": "reveal-budget-exceeded",
    "safe_mode.html": "internal-error",
}
_BY_EVENT = {
    Event.BUDGET_REFUSED: "budget-exceeded",
    Event.ACCESS_DENIED: "permission-denied",
    Event.NOT_FOUND: "not-found",
}
_BY_STATUS = {
    400: "input-refused",
    403: "permission-denied",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    429: "budget-exceeded",
    500: "internal-error",
    503: "vault-unavailable",
}
_DETAILS = {
    "budget-exceeded": "this service account's request budget is used up; see Retry-After",
    "permission-denied": "the permission matrix does not grant this to the service account's role",
    "not-found": "no such resource",
    "method-not-allowed": "this method is not allowed here (only GET, HEAD and POST exist)",
    "vault-unavailable": "keyd is sealed or unreachable; nothing was changed, retry later",
    "database-unavailable": "the database cannot be reached; nothing was changed, retry later",
    "database-write-refused": "the database refuses writes; nothing was changed",
    "reveal-budget-exceeded": "keyd's decrypt budget is used up",
    "internal-error": "unexpected error; nothing was changed",
    "input-refused": "the request breaks the input rules",
    "body-too-large": "the request body is too large",
}


def render_refusal(*, template: str, status: int, **context: Any) -> Response:
    """webapp/refusals.py's page, for a request under /api/: the same refusal as problem+json."""
    event = context.get("event")
    slug = (
        _BY_TEMPLATE.get(template)
        or (_BY_EVENT.get(event) if isinstance(event, Event) else None)
        or _BY_STATUS.get(status, "input-refused")
    )
    detail = _DETAILS.get(slug, "request refused")
    if status == 405:
        slug, detail = "method-not-allowed", _DETAILS["method-not-allowed"]
    # The app's status stands (a refusal the table maps by event keeps the code the app chose).
    return response(slug, detail, status=status)
