"""The bulk import call of the API: POST /api/v1/imports (docs/crm-api.md "Bulk import").

Up to bulk.API_MAX_ROWS cards per call as `{"rows": [{"crm_ref", "cardholder", "pan", "expiry"}, ...]}`,
checked by the same rules as a file import (webapp/records/bulk.py) and stored in the request's one
transaction with its Idempotency-Key record and its audit records: a retried call answers the first
call's response and stores nothing twice. Refused rows do not refuse the call: the answer lists them
by row number (1 = the first row), field and rule, never a value; accepted rows answer their card's
id, brand and last four. A malformed call (not an array, too many rows) is refused whole.
"""

from __future__ import annotations

from flask import current_app

from webapp.api.blueprint import bp
from webapp.api.body import Body, Field, body, json_body
from webapp.api.idempotency import Result, idempotent
from webapp.api.problems import Problem
from webapp.events import Event
from webapp.records import bulk
from webapp.records.access import require
from webapp.records.permissions import Act, FieldClass
from webapp.request import unit
from webapp.services import services

IMPORT_BODY = Body((Field("rows", list),), max_bytes=bulk.API_MAX_BYTES)


@bp.post("/imports")
@json_body(IMPORT_BODY)
@require(FieldClass.RECORD, Act.ADD)  # a row whose CRM number has no record yet creates one
@require(FieldClass.CARD_MASKED, Act.ADD)
@idempotent
def import_cards() -> Result:
    rows = body()["rows"]
    importer = bulk.Importer(
        services(), origin=unit().origin, crm_pattern=str(current_app.config["CRM_REF_PATTERN"])
    )
    try:
        report = importer.run_rows(rows, unit())
    except bulk.FileRefused as exc:
        raise _problem(exc, len(rows)) from None
    return 200, {
        "accepted": report.accepted,
        "refused": report.refused,
        "records_created": report.records_created,
        "cards": [{"row": n, "id": i, "brand": b, "last4": last4} for n, i, b, last4 in report.cards],
        "refusals": [{"row": r.line, "field": r.field, "rule": r.rule} for r in report.refusals],
    }


def _problem(exc: bulk.FileRefused, n_rows: int) -> Problem:
    """The whole call refused: a security code or a card number outside its field is alerted (as
    in the browser); a malformed row or too many rows is not."""
    if exc.alert:
        slug = "security-code-refused" if bulk.CVV_RULE in exc.reason else "card-number-in-text"
        return Problem(slug, f"rows: {exc.reason}", event=Event.CARD_REFUSED)
    slug = "body-too-large" if n_rows > bulk.API_MAX_ROWS else "input-refused"
    return Problem(slug, f"rows: {exc.reason}", event=Event.FORM_INVALID)
