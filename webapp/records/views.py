"""Records routes. Each checks the permission matrix (field class × action, access.py), validates
every parameter through a form, and audits what it showed, changed or refused, in the request's one
unit of work. The reveal routes are the step-up flow of reveal.py."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, flash, redirect, request, url_for
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
from webapp.records.formatting import masked, record_resource, render
from webapp.records.forms import (
    CardEditForm,
    CardForm,
    ItemForm,
    RecordForm,
    RetireForm,
    RevealForm,
    SearchForm,
)
from webapp.records.invalid import Invalid
from webapp.records.permissions import ITEM_CLASS, Act, FieldClass
from webapp.refusals import refuse
from webapp.request import unit
from webapp.services import services
from webapp.validation import accepts

bp = Blueprint("records", __name__, url_prefix="/records")
CVV_REFUSED = (
    "card security codes (CVV/CVC) are never accepted or stored: the form was refused, nothing was saved"
)
KINDS = "any(bank, identity, note)"
CARD_FIELDS = ("pan", "cardholder", "exp_month", "exp_year")
EXPIRY = ("exp_month", "exp_year")
CRM_LABELS = {"crm_ref": "CRM reference"}
# What the value of each kind of item is called next to its field.
ITEM_LABELS = {"bank": "IBAN", "identity": "document number", "note": "note"}
ITEM_NAMES = {"bank": "Bank account", "identity": "Identity document", "note": "Note"}


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


def _form_invalid(invalid: Invalid, event: Event, resource: str, template: str, **context: Any) -> Response:
    """The same page again, status 400, with each error next to its field: nothing the request wrote
    is kept, and the audit record names the form, the fields and the rules, never a value. A typo is
    FORM_INVALID (not alerted); a policy breach (`invalid.alert`: a card number where none may be)
    is `event`, which is alerted."""
    uow = unit()
    uow.discard_writes()
    uow.record(
        event if invalid.alert else Event.FORM_INVALID, ok=False, resource=resource, detail=invalid.detail()
    )
    return Response(render(template, invalid=invalid, **context), status=400, mimetype="text/html")


def _crm_ref(form: SearchForm | RecordForm, name: str) -> tuple[str, Invalid]:
    """The CRM reference of a search or a new record, and what is wrong with it. The rule runs on
    whatever was typed, before the form's length check, so that a card number is named as such."""
    invalid = Invalid(name, ("crm_ref",))
    raw = form.crm_ref.data or ""
    crm_ref = invalid.check(service.check_crm_ref, raw, _pattern()) if raw else None
    if not form.validate():
        invalid.from_form(form, CRM_LABELS)
    invalid.keep(form, ("crm_ref",))
    return crm_ref or "", invalid


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
    crm_ref = ""
    if request.args:
        crm_ref, invalid = _crm_ref(form, "search")
        if invalid:
            return _form_invalid(invalid, Event.RECORD_REFUSED, "/records", "records/index.html", rows=None)
        rows = service.find_records(unit().conn, crm_ref)
        unit().record(Event.RECORDS_LISTED, ok=True, resource=f"crm:{crm_ref}", detail=f"rows={len(rows)}")
    else:
        unit().record(Event.PAGE_VIEW, ok=True, resource="/records")
    return render("records/index.html", searched=crm_ref, rows=rows, invalid=None)


@bp.post("/")
@accepts(form=RecordForm)
@login_required
@require(FieldClass.RECORD, Act.ADD)
def add() -> ResponseReturnValue:
    crm_ref, invalid = _crm_ref(RecordForm(), "record")
    if invalid:
        return _form_invalid(invalid, Event.RECORD_REFUSED, "/records", "records/index.html", rows=None)
    record_id = service.add_record(unit().conn, crm_ref, actor=current_user.username, now=_now())
    unit().record(Event.RECORD_ADDED, ok=True, resource=record_resource(record_id), detail=f"crm:{crm_ref}")
    flash(f"Record {record_id} added for {crm_ref}.", "success")
    return redirect(url_for("records.view", record_id=record_id))


@bp.get("/<int:record_id>")
@accepts()
@login_required
@require(FieldClass.RECORD, Act.VIEW)
def view(record_id: int) -> ResponseReturnValue:
    context = _record_page(record_id)
    unit().record(
        Event.RECORD_VIEWED,
        ok=True,
        resource=record_resource(record_id),
        detail=f"cards_masked={len(context['cards'])} items_masked={len(context['items'])}",
    )
    return render("records/record.html", invalid=None, **context)


def _record_page(record_id: int) -> dict[str, Any]:
    """What the record page shows: the record, and only what this role may see and send."""
    conn = unit().conn
    row = service.get_record(conn, record_id)
    if row is None:
        abort(404)
    # Each field class is shown only to a role that may view it: the query does not even fetch it.
    shown = service.masked_cards(conn, record_id) if may(FieldClass.CARD_MASKED, Act.VIEW) else []
    kinds = tuple(k for k, c in ITEM_CLASS.items() if may(c, Act.VIEW))
    found = service.masked_items(conn, record_id, kinds)
    # Only the forms this role can send, and none on a retired (read-only) record.
    writable = row.retired_at is None
    return {
        "record": row,
        "cards": [(c, masked(c.brand, c.last4)) for c in shown],
        "items": found,
        "kinds": kinds,
        "may_add_card": writable and may(FieldClass.CARD_MASKED, Act.ADD),
        "may_add_item": writable and any(may(c, Act.ADD) for c in ITEM_CLASS.values()),
        "doc_types": item_rules.DOC_TYPES,
        "may_retire": writable and may(FieldClass.RECORD, Act.RETIRE),
    }


def _record_invalid(record_id: int, invalid: Invalid, event: Event) -> Response:
    """The record page again with the errors of one of its forms (the form named `invalid.form`)."""
    return _form_invalid(
        invalid, event, record_resource(record_id), "records/record.html", **_record_page(record_id)
    )


def _read_only(event: Event, exc: Refused, resource: str) -> Response:
    """A change to a retired record, card or item: the forms are not offered there, so this is a
    stale page or a hand-made request, not a typo: the refusal page, alerted (docs/alerts.md)."""
    return refuse(event, exc.reason, resource=resource, heading="Not saved: read-only")


@bp.post("/<int:record_id>/retire")
@accepts(form=RetireForm)
@login_required
@require(FieldClass.RECORD, Act.RETIRE)
def retire(record_id: int) -> ResponseReturnValue:
    conn = unit().conn
    try:
        _writable_or_404(record_id)
    except Refused as exc:
        return _read_only(Event.RECORD_REFUSED, exc, record_resource(record_id))
    service.retire_record(conn, record_id, actor=current_user.username, now=_now())
    unit().record(Event.RECORD_RETIRED, ok=True, resource=record_resource(record_id))
    flash(f"Record {record_id} retired: it is now read-only.", "success")
    return redirect(url_for("records.view", record_id=record_id))


# --- cards -------------------------------------------------------------------------------------


def _cvv_sent(resource: str) -> Response | None:
    """Before anything else, whatever the rest of the form says: a security code is never accepted.
    No page of ours has a field for one, so a request carrying one was made by hand or by a tool:
    the refusal page, alerted (docs/alerts.md)."""
    if any(name in request.form for name in card_rules.CVV_FIELDS):
        return refuse(
            Event.CARD_REFUSED, "cvv_present: " + CVV_REFUSED, resource=resource, heading="Card not saved"
        )
    return None


def _card_values(form: CardForm | CardEditForm, name: str, *, now: datetime) -> tuple[Any, Invalid]:
    """(card number or None, cardholder, expiry) and what is wrong with them, each rule run on its
    own field so that every error is shown at once. Only the expiry is put back."""
    invalid = Invalid(name, CARD_FIELDS)
    if not form.validate():
        invalid.from_form(form)
    pan = None
    if isinstance(form, CardForm) and "pan" not in invalid.errors:
        pan = invalid.check(card_rules.parse_pan, form.pan.data or "")
    holder = (
        None
        if "cardholder" in invalid.errors
        else invalid.check(card_rules.check_name, form.cardholder.data or "")
    )
    expiry = None
    if not invalid.errors.keys() & set(EXPIRY):
        month, year = int(form.exp_month.data or 0), int(form.exp_year.data or 0)
        expiry = invalid.check(card_rules.check_expiry, month, year, now=now)
    invalid.keep(form, (), numbers=EXPIRY)
    return (pan, holder, expiry), invalid


@bp.post("/<int:record_id>/cards")
@accepts(form=CardForm)
@login_required
@require(FieldClass.CARD_MASKED, Act.ADD)
def add_card(record_id: int) -> ResponseReturnValue:
    resource = record_resource(record_id)
    if (refused := _cvv_sent(resource)) is not None:
        return refused
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        _writable_or_404(record_id)
    except Refused as exc:
        return _read_only(Event.CARD_REFUSED, exc, resource)
    (pan, holder, expiry), invalid = _card_values(CardForm(), "card", now=now)
    if invalid or pan is None or holder is None or expiry is None:
        return _record_invalid(record_id, invalid, Event.CARD_REFUSED)
    card = service.NewCard(pan=pan, cardholder=holder, expiry=expiry)
    card_id = service.add_card(conn, svc.vault, record_id, card, actor=current_user.username, now=now)
    unit().record(
        Event.CARD_ADDED, ok=True, resource=f"card:{card_id}", detail=f"{resource} {card.pan.brand}"
    )
    flash(f"Card {masked(pan.brand, pan.last4)} added.", "success")
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
    unit().record(Event.CARD_VIEWED, ok=True, resource=f"card:{card_id}", detail=record_resource(record_id))
    return render("records/card.html", invalid=None, **_card_page(record_id, row))


def _card_page(record_id: int, row: sa.Row) -> dict[str, Any]:
    return {
        "record": service.get_record(unit().conn, record_id),
        "card": row,
        "label": masked(row.brand, row.last4),
    }


@bp.post("/<int:record_id>/cards/<card_id>/edit")
@accepts(form=CardEditForm)
@login_required
@require(FieldClass.CARD_MASKED, Act.EDIT)
def edit_card(record_id: int, card_id: str) -> ResponseReturnValue:
    resource = f"card:{card_id}"
    if (refused := _cvv_sent(resource)) is not None:
        return refused
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        _writable_or_404(record_id)
        row = _card_or_404(record_id, card_id)
        service.writable(row, "card")
    except Refused as exc:
        return _read_only(Event.CARD_REFUSED, exc, resource)
    (_pan, name, expiry), invalid = _card_values(CardEditForm(), "edit", now=now)
    if invalid or name is None or expiry is None:
        return _form_invalid(
            invalid, Event.CARD_REFUSED, resource, "records/card.html", **_card_page(record_id, row)
        )
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
    flash(f"Card {masked(row.brand, row.last4)} updated: cardholder and expiry saved.", "success")
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
        row = _card_or_404(record_id, card_id)
        service.writable(row, "card")
    except Refused as exc:
        return _read_only(Event.CARD_REFUSED, exc, resource)
    service.retire_card(conn, card_id, actor=current_user.username, now=_now())
    unit().record(Event.CARD_RETIRED, ok=True, resource=resource, detail=record_resource(record_id))
    flash(f"Card {masked(row.brand, row.last4)} retired: it is now read-only.", "success")
    return redirect(url_for("records.view", record_id=record_id))


# --- items (bank accounts, identity documents, notes) ---------------------------------------------


def _item_or_404(record_id: int, kind: str, item_id: str) -> sa.Row:
    item = service.get_item(unit().conn, record_id, kind, item_id)
    if item is None:
        abort(404)
    return item


def _item_value(kind: str, form: ItemForm) -> tuple[tuple[str, str] | None, Invalid]:
    """(value to encrypt, masked hint) and what is wrong with them. The kind's rule runs on whatever
    was typed, before the form's length check, so that a card number in a note is named as such.
    Only the document type is put back: the value is secret."""
    invalid = Invalid(kind, ("doc_type", "value"))
    raw, doc_type = form.value.data or "", form.doc_type.data or ""
    checked = invalid.check(item_rules.check, kind, raw, doc_type) if raw.strip() else None
    if not form.validate():
        invalid.from_form(form, {"value": ITEM_LABELS[kind]})
    if kind == "identity" and doc_type not in item_rules.DOC_TYPES and "doc_type" not in invalid.errors:
        invalid.add("doc_type", "document type: unknown")
    if kind == "identity" and doc_type in item_rules.DOC_TYPES:
        invalid.kept["doc_type"] = doc_type
    return checked, invalid


def _item_page(record_id: int, kind: str, row: sa.Row) -> dict[str, Any]:
    return {
        "record": service.get_record(unit().conn, record_id),
        "item": row,
        "field_class": str(ITEM_CLASS[kind]),
        "doc_types": item_rules.DOC_TYPES,
        "value_label": ITEM_LABELS[kind],
        "item_name": ITEM_NAMES[kind],
    }


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
    except Refused as exc:
        return _read_only(Event.ITEM_REFUSED, exc, resource)
    checked, invalid = _item_value(kind, ItemForm())
    if invalid or checked is None:
        return _record_invalid(record_id, invalid, Event.ITEM_REFUSED)
    value, hint = checked
    item_id = service.add_item(
        conn, svc.vault, record_id, kind, value, hint, actor=current_user.username, now=now
    )
    unit().record(Event.ITEM_ADDED, ok=True, resource=f"{kind}:{item_id}", detail=resource)
    flash(f"{ITEM_NAMES[kind]} added: {hint}.", "success")
    return redirect(url_for("records.view", record_id=record_id))


@bp.get(f"/<int:record_id>/<{KINDS}:kind>/<item_id>")
@accepts()
@login_required
@require_item(Act.VIEW)
def item(record_id: int, kind: str, item_id: str) -> ResponseReturnValue:
    row = _item_or_404(record_id, kind, item_id)
    unit().record(Event.ITEM_VIEWED, ok=True, resource=f"{kind}:{item_id}", detail=record_resource(record_id))
    return render("records/item.html", invalid=None, **_item_page(record_id, kind, row))


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
        row = _item_or_404(record_id, kind, item_id)
        service.writable(row, kind)
    except Refused as exc:
        return _read_only(Event.ITEM_REFUSED, exc, resource)
    checked, invalid = _item_value(kind, ItemForm())
    if invalid or checked is None:
        invalid.form = "edit"
        return _form_invalid(
            invalid, Event.ITEM_REFUSED, resource, "records/item.html", **_item_page(record_id, kind, row)
        )
    value, hint = checked
    service.edit_item(conn, svc.vault, item_id, kind, value, hint, actor=current_user.username, now=now)
    unit().record(Event.ITEM_EDITED, ok=True, resource=resource, detail=record_resource(record_id))
    flash(f"{ITEM_NAMES[kind]} updated: {hint}.", "success")
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
        row = _item_or_404(record_id, kind, item_id)
        service.writable(row, kind)
    except Refused as exc:
        return _read_only(Event.ITEM_REFUSED, exc, resource)
    service.retire_item(conn, item_id, actor=current_user.username, now=_now())
    unit().record(Event.ITEM_RETIRED, ok=True, resource=resource, detail=record_resource(record_id))
    flash(f"{ITEM_NAMES[kind]} {row.hint} retired: it is now read-only.", "success")
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
