"""/api/v1: the CRM's JSON API (docs/crm-api.md; the contract is openapi.json beside this module).

Each route asks the permission matrix like the browser's (records/access.py), validates with the
browser's rules (records/cards.py, records/service.py), and audits what it did or refused in the
request's one unit of work, with the service account as the actor. Nothing here ever reads or
returns a card number: cards are written through keyd and shown as brand and last four.

The blueprint and its refusal handlers are in blueprint.py; setup.py registers it (with the routes of
bulk.py too).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import current_app, request
from flask.wrappers import Response
from wtforms import Form, StringField

from webapp.api import cursor, identity
from webapp.api.blueprint import bp
from webapp.api.body import Body, Field, body, json_body
from webapp.api.idempotency import JSON, Result, idempotent, json_response
from webapp.api.problems import Problem
from webapp.events import Event
from webapp.records import cards as card_rules
from webapp.records import service
from webapp.records.access import require
from webapp.records.errors import Refused
from webapp.records.formatting import record_resource
from webapp.records.permissions import Act, FieldClass
from webapp.records.tables import cards, customer_records
from webapp.request import unit
from webapp.services import services
from webapp.validation import accepts

OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"


# --- answers ---------------------------------------------------------------------------------------


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _record(row: sa.Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "crm_ref": row.crm_ref,
        "created_at": _when(row.created_at),
        "retired": row.retired_at is not None,
    }


def _card(row: sa.Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "brand": row.brand,
        "last4": row.last4,
        "created_at": _when(row.created_at),
        "retired": row.retired_at is not None,
    }


def _ok(payload: dict[str, Any], status: int = 200) -> Response:
    return json_response(status, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def _now() -> datetime:
    return services().clock.now()


def _actor() -> str:
    return identity.service_identity().username


# The browser's rules' refusals, by the field they are about: (problem type, event when not a typo).
_FIELD_PROBLEMS = {
    "crm_ref": "crm-ref-invalid",
    "pan": "card-number-invalid",
    "cardholder": "cardholder-invalid",
    "exp_month": "expiry-invalid",
    "exp_year": "expiry-invalid",
}


def _refused(exc: Refused, alert_event: Event) -> Problem:
    """A rule's refusal: a typo is FORM_INVALID (not alerted), as in the browser; a card number where
    none may be (`exc.alert`) is `alert_event`, alerted; a retired target is read-only (alerted)."""
    if exc.field is None:
        return Problem("read-only", exc.reason, event=alert_event)
    slug = "card-number-in-text" if exc.alert else _FIELD_PROBLEMS.get(exc.field, "input-refused")
    return Problem(slug, exc.reason, event=alert_event if exc.alert else Event.FORM_INVALID)


def _record_or_404(record_id: int, *, for_update: bool = False) -> sa.Row:
    row = service.get_record(unit().conn, record_id, for_update=for_update)
    if row is None:
        raise Problem("not-found", "no record with this id", event=Event.NOT_FOUND)
    return row


# --- records ---------------------------------------------------------------------------------------


class RecordsQuery(Form):
    crm_ref = StringField()
    limit = StringField()
    cursor = StringField()


class PageQuery(Form):
    limit = StringField()
    cursor = StringField()


@bp.get("/records")
@accepts(query=RecordsQuery)
@require(FieldClass.RECORD, Act.LIST)
def find_records() -> Response:
    raw = request.args.get("crm_ref")
    if not raw:
        raise Problem("missing-field", "query: crm_ref is required", event=Event.FORM_INVALID)
    try:
        crm_ref = service.check_crm_ref(raw, str(current_app.config["CRM_REF_PATTERN"]))
    except Refused as exc:
        raise _refused(exc, Event.RECORD_REFUSED) from None
    limit = cursor.limit(request.args.get("limit"))
    listing = f"records:{crm_ref}"
    query = (
        sa.select(customer_records)
        .where(customer_records.c.crm_ref == crm_ref)
        .order_by(customer_records.c.id)
        .limit(limit + 1)
    )
    if after := request.args.get("cursor"):
        (last_id,) = cursor.decode(listing, after)
        query = query.where(customer_records.c.id > int(last_id))
    rows = list(unit().conn.execute(query))
    page, more = rows[:limit], len(rows) > limit
    unit().record(Event.RECORDS_LISTED, ok=True, resource=f"crm:{crm_ref}", detail=f"rows={len(page)}")
    return _ok(
        {
            "records": [_record(r) for r in page],
            "next_cursor": cursor.encode(listing, [page[-1].id]) if more else None,
        }
    )


@bp.post("/records")
@json_body(Body((Field("crm_ref", str),)))
@require(FieldClass.RECORD, Act.ADD)
@idempotent
def add_record() -> Result:
    try:
        crm_ref = service.check_crm_ref(body()["crm_ref"], str(current_app.config["CRM_REF_PATTERN"]))
    except Refused as exc:
        raise _refused(exc, Event.RECORD_REFUSED) from None
    conn = unit().conn
    record_id = service.add_record(conn, crm_ref, actor=_actor(), now=_now())
    unit().record(Event.RECORD_ADDED, ok=True, resource=record_resource(record_id), detail=f"crm:{crm_ref}")
    return 201, _record(_record_or_404(record_id))


@bp.get("/records/<int:record_id>")
@accepts()
@require(FieldClass.RECORD, Act.VIEW)
def get_record(record_id: int) -> Response:
    row = _record_or_404(record_id)
    unit().record(Event.RECORD_VIEWED, ok=True, resource=record_resource(record_id), detail="api")
    return _ok(_record(row))


# --- cards -----------------------------------------------------------------------------------------


@bp.get("/records/<int:record_id>/cards")
@accepts(query=PageQuery)
@require(FieldClass.CARD_MASKED, Act.VIEW)
def list_cards(record_id: int) -> Response:
    _record_or_404(record_id)
    limit = cursor.limit(request.args.get("limit"))
    listing = f"cards:{record_id}"
    # Brand and last four only: the ciphertexts are not even selected.
    query = (
        sa.select(cards.c.id, cards.c.brand, cards.c.last4, cards.c.created_at, cards.c.retired_at)
        .where(cards.c.record_id == record_id)
        .order_by(cards.c.created_at, cards.c.id)
        .limit(limit + 1)
    )
    if after := request.args.get("cursor"):
        position = cursor.decode(listing, after)
        if len(position) != 2 or not all(isinstance(p, str) for p in position):
            raise Problem("cursor-invalid", "the cursor is not one this listing issued")
        created = datetime.strptime(position[0], "%Y-%m-%dT%H:%M:%S.%fZ")
        query = query.where(
            sa.or_(
                cards.c.created_at > created,
                sa.and_(cards.c.created_at == created, cards.c.id > position[1]),
            )
        )
    rows = list(unit().conn.execute(query))
    page, more = rows[:limit], len(rows) > limit
    unit().record(
        Event.RECORD_VIEWED, ok=True, resource=record_resource(record_id), detail=f"cards_masked={len(page)}"
    )
    last = page[-1] if page else None
    return _ok(
        {
            "cards": [_card(r) for r in page],
            "next_cursor": cursor.encode(listing, [_when(last.created_at), last.id])
            if more and last
            else None,
        }
    )


CARD_BODY = Body(
    (
        Field("pan", str),
        Field("cardholder", str),
        Field("exp_month", int),
        Field("exp_year", int),
    )
)


@bp.post("/records/<int:record_id>/cards")
@json_body(CARD_BODY)
@require(FieldClass.CARD_MASKED, Act.ADD)
@idempotent
def add_card(record_id: int) -> Result:
    svc, conn, now = services(), unit().conn, _now()
    data = body()
    try:
        if service.writable_record(conn, record_id) is None:
            raise Problem("not-found", "no record with this id", event=Event.NOT_FOUND)
        # Every rule, in the browser's order; the first refusal answers (its field names the type).
        pan = card_rules.parse_pan(data["pan"])
        holder = card_rules.check_name(data["cardholder"])
        expiry = card_rules.check_expiry(data["exp_month"], data["exp_year"], now=now)
    except Refused as exc:
        raise _refused(exc, Event.CARD_REFUSED) from None
    card = service.NewCard(pan=pan, cardholder=holder, expiry=expiry)
    card_id = service.add_card(conn, svc.vault, record_id, card, actor=_actor(), now=now)
    unit().record(
        Event.CARD_ADDED,
        ok=True,
        resource=f"card:{card_id}",
        detail=f"{record_resource(record_id)} {pan.brand}",
    )
    row = service.get_card(conn, record_id, card_id)
    assert row is not None  # noqa: S101 - inserted just above, in this transaction
    return 201, _card(row)


@bp.post("/records/<int:record_id>/cards/<card_id>/retire")
@json_body(Body(()))
@require(FieldClass.CARD_MASKED, Act.RETIRE)
@idempotent
def retire_card(record_id: int, card_id: str) -> Result:
    conn, resource = unit().conn, f"card:{card_id}"
    try:
        if service.writable_record(conn, record_id) is None:
            raise Problem("not-found", "no record with this id", event=Event.NOT_FOUND)
        row = service.get_card(conn, record_id, card_id)
        if row is None:
            raise Problem("not-found", "no card with this id on this record", event=Event.NOT_FOUND)
        service.writable(row, "card")
    except Refused as exc:
        raise _refused(exc, Event.CARD_REFUSED) from None
    service.retire_card(conn, card_id, actor=_actor(), now=_now())
    unit().record(Event.CARD_RETIRED, ok=True, resource=resource, detail=record_resource(record_id))
    retired = service.get_card(conn, record_id, card_id)
    assert retired is not None  # noqa: S101 - read just above, in this transaction
    return 200, _card(retired)


# --- the contract ----------------------------------------------------------------------------------


@bp.get("/openapi.json")
@accepts()
def openapi() -> Response:
    return Response(OPENAPI_FILE.read_bytes(), status=200, mimetype=JSON)
