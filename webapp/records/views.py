"""Records routes. Each checks the permission matrix (field class × action, access.py), validates
every parameter through a form, and audits what it showed, changed or refused, in the request's one
unit of work. The reveal routes are the step-up flow of reveal.py."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, redirect, request, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import current_user, login_required

from webapp.events import Event
from webapp.records import cards as card_rules
from webapp.records import items as item_rules
from webapp.records import reveal as reveal_flow
from webapp.records import service
from webapp.records.access import load_matrix, may, require, require_item, require_reveal
from webapp.records.errors import Refused
from webapp.records.formatting import first_error, masked, record_resource, render
from webapp.records.forms import (
    CardEditForm,
    CardForm,
    ItemForm,
    RecordForm,
    RetireForm,
    RevealForm,
    SearchForm,
)
from webapp.records.permissions import ITEM_CLASS, Act, FieldClass
from webapp.refusals import refuse
from webapp.request import unit
from webapp.services import services
from webapp.validation import InputRefused, accepts

bp = Blueprint("records", __name__, url_prefix="/records")
CVV_REFUSED = (
    "card security codes (CVV/CVC) are never accepted or stored: the form was refused, nothing was saved"
)
KINDS = "any(bank, identity, note)"


@bp.record_once
def _load_matrix(state: BlueprintSetupState) -> None:
    load_matrix(state.app)  # a bad matrix stops the start, as a bad setting does (webapp/config.py)


_ROW_ID = re.compile(r"[0-9a-f]{32}")


@bp.url_value_preprocessor
def _ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Card and item ids are 32 lowercase hex (random, see service.py) and record ids fit their
    column: anything else is 404 before any view runs, so no records audit row carries it."""
    for name in ("card_id", "item_id", "obj_id"):
        if values and name in values and not _ROW_ID.fullmatch(str(values[name])):
            abort(404)
    # Record ids are INTEGER (at most 10 digits): a 13-19 digit number in their place is never an id
    # (and could be a card number, which must not reach a records audit row as "record:<n>").
    if values and not 0 < int(values.get("record_id", 1)) <= 2**31 - 1:
        abort(404)


def _invalid(form: Any, where: str) -> InputRefused:
    field, message = first_error(form)
    return InputRefused(f"{where}: parameter '{field}' {message}")


def _pattern() -> str:
    return str(current_app.config["CRM_REF_PATTERN"])


def _writable_or_404(record_id: int) -> None:
    """A record that does not exist is 404; a retired one raises Refused (read-only)."""
    if service.writable_record(unit().conn, record_id) is None:
        abort(404)


def _now() -> datetime:
    return services().clock.now()


@bp.get("/")
@accepts(query=SearchForm)
@login_required
@require(FieldClass.RECORD, Act.LIST)
def index() -> ResponseReturnValue:
    form = SearchForm(formdata=request.args)
    rows = None
    if request.args:
        if not form.validate():
            raise _invalid(form, "query")
        try:
            crm_ref = service.check_crm_ref(form.crm_ref.data or "", _pattern())
        except Refused as exc:
            return refuse(Event.RECORD_REFUSED, exc.reason, resource="/records")
        rows = service.find_records(unit().conn, crm_ref)
        unit().record(Event.RECORDS_LISTED, ok=True, resource=f"crm:{crm_ref}", detail=f"rows={len(rows)}")
    else:
        unit().record(Event.PAGE_VIEW, ok=True, resource="/records")
    return render("records/index.html", search=form, add=RecordForm(), rows=rows)


@bp.post("/")
@accepts(form=RecordForm)
@login_required
@require(FieldClass.RECORD, Act.ADD)
def add() -> ResponseReturnValue:
    form = RecordForm()
    if not form.validate():
        raise _invalid(form, "form")
    try:
        crm_ref = service.check_crm_ref(form.crm_ref.data or "", _pattern())
    except Refused as exc:
        return refuse(Event.RECORD_REFUSED, exc.reason, resource="/records")
    record_id = service.add_record(unit().conn, crm_ref, actor=current_user.username, now=_now())
    unit().record(Event.RECORD_ADDED, ok=True, resource=record_resource(record_id), detail=f"crm:{crm_ref}")
    return redirect(url_for("records.view", record_id=record_id))


@bp.get("/<int:record_id>")
@accepts()
@login_required
@require(FieldClass.RECORD, Act.VIEW)
def view(record_id: int) -> ResponseReturnValue:
    conn = unit().conn
    row = service.get_record(conn, record_id)
    if row is None:
        abort(404)
    # Each field class is shown only to a role that may view it: the query does not even fetch it.
    shown = service.masked_cards(conn, record_id) if may(FieldClass.CARD_MASKED, Act.VIEW) else []
    kinds = tuple(k for k, c in ITEM_CLASS.items() if may(c, Act.VIEW))
    found = service.masked_items(conn, record_id, kinds)
    unit().record(
        Event.RECORD_VIEWED,
        ok=True,
        resource=record_resource(record_id),
        detail=f"cards_masked={len(shown)} items_masked={len(found)}",
    )
    # Only the forms this role can send, and none on a retired (read-only) record.
    writable = row.retired_at is None
    return render(
        "records/record.html",
        record=row,
        cards=[(c, masked(c.brand, c.last4)) for c in shown],
        items=found,
        kinds=kinds,
        may_add_card=writable and may(FieldClass.CARD_MASKED, Act.ADD),
        may_add_item=writable and any(may(c, Act.ADD) for c in ITEM_CLASS.values()),
        doc_types=item_rules.DOC_TYPES,
        may_retire=writable and may(FieldClass.RECORD, Act.RETIRE),
    )


@bp.post("/<int:record_id>/retire")
@accepts(form=RetireForm)
@login_required
@require(FieldClass.RECORD, Act.RETIRE)
def retire(record_id: int) -> ResponseReturnValue:
    conn = unit().conn
    try:
        _writable_or_404(record_id)
    except Refused as exc:
        return refuse(Event.RECORD_REFUSED, exc.reason, resource=record_resource(record_id))
    service.retire_record(conn, record_id, actor=current_user.username, now=_now())
    unit().record(Event.RECORD_RETIRED, ok=True, resource=record_resource(record_id))
    return redirect(url_for("records.view", record_id=record_id))


# --- cards -------------------------------------------------------------------------------------


def _card_fields(form: CardForm | CardEditForm, resource: str) -> Response | None:
    # Before anything else, whatever the rest of the form says: a security code is never accepted.
    if any(name in request.form for name in card_rules.CVV_FIELDS):
        return refuse(Event.CARD_REFUSED, "cvv_present: " + CVV_REFUSED, resource=resource)
    if not form.validate():
        field, _message = first_error(form)
        return refuse(Event.CARD_REFUSED, f"{field}: missing or out of range", resource=resource)
    return None


@bp.post("/<int:record_id>/cards")
@accepts(form=CardForm)
@login_required
@require(FieldClass.CARD_MASKED, Act.ADD)
def add_card(record_id: int) -> ResponseReturnValue:
    resource = record_resource(record_id)
    form = CardForm()
    if (refused := _card_fields(form, resource)) is not None:
        return refused
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        _writable_or_404(record_id)
        card = service.NewCard(
            pan=card_rules.parse_pan(form.pan.data or ""),
            cardholder=card_rules.check_name(form.cardholder.data or ""),
            expiry=card_rules.check_expiry(
                int(form.exp_month.data or 0), int(form.exp_year.data or 0), now=now
            ),
        )
    except Refused as exc:
        return refuse(Event.CARD_REFUSED, exc.reason, resource=resource)
    card_id = service.add_card(conn, svc.vault, record_id, card, actor=current_user.username, now=now)
    unit().record(
        Event.CARD_ADDED, ok=True, resource=f"card:{card_id}", detail=f"{resource} {card.pan.brand}"
    )
    return redirect(url_for("records.view", record_id=record_id))


def _card_or_404(record_id: int, card_id: str) -> sa.Row:
    card = service.get_card(unit().conn, record_id, card_id)
    if card is None:
        abort(404)
    return card


@bp.get("/<int:record_id>/cards/<card_id>")
@accepts()
@login_required
@require(FieldClass.CARD_MASKED, Act.VIEW)
def card(record_id: int, card_id: str) -> ResponseReturnValue:
    row = _card_or_404(record_id, card_id)
    record = service.get_record(unit().conn, record_id)
    unit().record(Event.CARD_VIEWED, ok=True, resource=f"card:{card_id}", detail=record_resource(record_id))
    return render(
        "records/card.html",
        record=record,
        card=row,
        label=masked(row.brand, row.last4),
        edit_form=CardEditForm(),
        retire_form=RetireForm(),
    )


@bp.post("/<int:record_id>/cards/<card_id>/edit")
@accepts(form=CardEditForm)
@login_required
@require(FieldClass.CARD_MASKED, Act.EDIT)
def edit_card(record_id: int, card_id: str) -> ResponseReturnValue:
    resource = f"card:{card_id}"
    form = CardEditForm()
    if (refused := _card_fields(form, resource)) is not None:
        return refused
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        _writable_or_404(record_id)
        service.writable(_card_or_404(record_id, card_id), "card")
        name = card_rules.check_name(form.cardholder.data or "")
        expiry = card_rules.check_expiry(int(form.exp_month.data or 0), int(form.exp_year.data or 0), now=now)
    except Refused as exc:
        return refuse(Event.CARD_REFUSED, exc.reason, resource=resource)
    service.edit_card(
        conn,
        svc.vault,
        card_id,
        cardholder=name,
        expiry=expiry,
        actor=current_user.username,
        now=now,
    )
    unit().record(Event.CARD_EDITED, ok=True, resource=resource, detail=record_resource(record_id))
    return redirect(url_for("records.card", record_id=record_id, card_id=card_id))


@bp.post("/<int:record_id>/cards/<card_id>/retire")
@accepts(form=RetireForm)
@login_required
@require(FieldClass.CARD_MASKED, Act.RETIRE)
def retire_card(record_id: int, card_id: str) -> ResponseReturnValue:
    resource = f"card:{card_id}"
    conn = unit().conn
    try:
        _writable_or_404(record_id)
        service.writable(_card_or_404(record_id, card_id), "card")
    except Refused as exc:
        return refuse(Event.CARD_REFUSED, exc.reason, resource=resource)
    service.retire_card(conn, card_id, actor=current_user.username, now=_now())
    unit().record(Event.CARD_RETIRED, ok=True, resource=resource, detail=record_resource(record_id))
    return redirect(url_for("records.view", record_id=record_id))


# --- items (bank accounts, identity documents, notes) ---------------------------------------------


def _item_or_404(record_id: int, kind: str, item_id: str) -> sa.Row:
    item = service.get_item(unit().conn, record_id, kind, item_id)
    if item is None:
        abort(404)
    return item


def _item_value(kind: str, form: ItemForm) -> tuple[str, str]:
    if not form.validate():
        field, message = first_error(form)
        raise Refused(f"{field}: {message}")
    return item_rules.check(kind, form.value.data or "", form.doc_type.data or "")


@bp.post(f"/<int:record_id>/<{KINDS}:kind>")
@accepts(form=ItemForm)
@login_required
@require_item(Act.ADD)
def add_item(record_id: int, kind: str) -> ResponseReturnValue:
    resource = record_resource(record_id)
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        _writable_or_404(record_id)
        value, hint = _item_value(kind, ItemForm())
    except Refused as exc:
        return refuse(Event.ITEM_REFUSED, exc.reason, resource=resource)
    item_id = service.add_item(
        conn, svc.vault, record_id, kind, value, hint, actor=current_user.username, now=now
    )
    unit().record(Event.ITEM_ADDED, ok=True, resource=f"{kind}:{item_id}", detail=resource)
    return redirect(url_for("records.view", record_id=record_id))


@bp.get(f"/<int:record_id>/<{KINDS}:kind>/<item_id>")
@accepts()
@login_required
@require_item(Act.VIEW)
def item(record_id: int, kind: str, item_id: str) -> ResponseReturnValue:
    row = _item_or_404(record_id, kind, item_id)
    record = service.get_record(unit().conn, record_id)
    unit().record(Event.ITEM_VIEWED, ok=True, resource=f"{kind}:{item_id}", detail=record_resource(record_id))
    return render(
        "records/item.html",
        record=record,
        item=row,
        field_class=str(ITEM_CLASS[kind]),
        edit_form=ItemForm(),
        doc_types=item_rules.DOC_TYPES,
        retire_form=RetireForm(),
    )


@bp.post(f"/<int:record_id>/<{KINDS}:kind>/<item_id>/edit")
@accepts(form=ItemForm)
@login_required
@require_item(Act.EDIT)
def edit_item(record_id: int, kind: str, item_id: str) -> ResponseReturnValue:
    resource = f"{kind}:{item_id}"
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        _writable_or_404(record_id)
        service.writable(_item_or_404(record_id, kind, item_id), kind)
        value, hint = _item_value(kind, ItemForm())
    except Refused as exc:
        return refuse(Event.ITEM_REFUSED, exc.reason, resource=resource)
    service.edit_item(conn, svc.vault, item_id, kind, value, hint, actor=current_user.username, now=now)
    unit().record(Event.ITEM_EDITED, ok=True, resource=resource, detail=record_resource(record_id))
    return redirect(url_for("records.item", record_id=record_id, kind=kind, item_id=item_id))


@bp.post(f"/<int:record_id>/<{KINDS}:kind>/<item_id>/retire")
@accepts(form=RetireForm)
@login_required
@require_item(Act.RETIRE)
def retire_item(record_id: int, kind: str, item_id: str) -> ResponseReturnValue:
    resource = f"{kind}:{item_id}"
    conn = unit().conn
    try:
        _writable_or_404(record_id)
        service.writable(_item_or_404(record_id, kind, item_id), kind)
    except Refused as exc:
        return refuse(Event.ITEM_REFUSED, exc.reason, resource=resource)
    service.retire_item(conn, item_id, actor=current_user.username, now=_now())
    unit().record(Event.ITEM_RETIRED, ok=True, resource=resource, detail=record_resource(record_id))
    return redirect(url_for("records.view", record_id=record_id))


# --- reveal (the step-up flow: reveal.py) ---------------------------------------------------------

REVEAL_URL = (
    "/<int:record_id>/reveal/<any(card, bank, identity, note):kind>/<obj_id>"
    "/<any(pan, cardholder, expiry, value):field>"
)


@bp.get(REVEAL_URL)
@accepts()
@login_required
@require_reveal
def reveal_form(record_id: int, kind: str, obj_id: str, field: str) -> ResponseReturnValue:
    return reveal_flow.show_form(record_id, kind, obj_id, field)


@bp.post(REVEAL_URL)
@accepts(form=RevealForm)
@login_required
@require_reveal
def reveal(record_id: int, kind: str, obj_id: str, field: str) -> ResponseReturnValue:
    return reveal_flow.reveal(record_id, kind, obj_id, field)
