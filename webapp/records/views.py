"""Records routes. Each checks the permission matrix, validates every parameter through a form,
and audits what it showed, changed or refused, in the request's one unit of work."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import Blueprint, abort, current_app, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import current_user, login_required

from webapp.auth.forms import LogoutForm
from webapp.config import ConfigError
from webapp.events import Event
from webapp.records import cards as card_rules
from webapp.records import service
from webapp.records.forms import CardForm, RecordForm, RetireForm, SearchForm
from webapp.records.permissions import Action, allowed
from webapp.request import services, unit
from webapp.validation import InputRefused, accepts

bp = Blueprint("records", __name__, url_prefix="/records")
CVV_REFUSED = (
    "card security codes (CVV/CVC) are never accepted or stored: the form was refused, nothing was saved"
)


@bp.record_once
def _configure(state: BlueprintSetupState) -> None:
    cfg = state.app.config
    cfg.setdefault("CRM_REF_PATTERN", service.DEFAULT_CRM_REF_PATTERN)
    pattern = cfg["CRM_REF_PATTERN"]
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        raise ConfigError("STRONGROOM_CRM_REF_PATTERN must be a regular expression") from None
    if not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
        raise ConfigError("STRONGROOM_CRM_REF_PATTERN must be anchored (^...$)")


def require(action: Action) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if not allowed(current_user.role, action):
                abort(403)  # audited as request.access_denied by the app's error page
            return view(*args, **kwargs)

        return checked

    return wrap


def _refuse(event: Event, reason: str, resource: str) -> Response:
    uow = unit()
    uow.discard_writes()
    uow.record(event, ok=False, resource=resource, detail=reason[:200])
    body = render_template("error.html", status=400, message=f"Refused: {reason}.")
    return Response(body, status=400, mimetype="text/html")


def _invalid(form: Any, where: str) -> InputRefused:
    field, errors = next(iter(form.errors.items()))
    return InputRefused(f"{where}: parameter '{field}' {errors[0].lower().rstrip('.')}")


def _pattern() -> str:
    return str(current_app.config["CRM_REF_PATTERN"])


def _page(record_id: int) -> str:
    return f"record:{record_id}"


@bp.get("/")
@accepts(query=SearchForm)
@login_required
@require(Action.RECORD_LIST)
def index() -> ResponseReturnValue:
    form = SearchForm(formdata=request.args)
    rows = None
    if request.args:
        if not form.validate():
            raise _invalid(form, "query")
        try:
            crm_ref = service.check_crm_ref(form.crm_ref.data or "", _pattern())
        except service.RecordRefused as exc:
            return _refuse(Event.RECORD_REFUSED, exc.reason, "/records")
        rows = service.find_records(unit().conn, crm_ref)
        unit().record(Event.RECORDS_LISTED, ok=True, resource=f"crm:{crm_ref}", detail=f"rows={len(rows)}")
    else:
        unit().record(Event.PAGE_VIEW, ok=True, resource="/records")
    return render_template(
        "records/index.html", search=form, add=RecordForm(), rows=rows, user=current_user, logout=LogoutForm()
    )


@bp.post("/")
@accepts(form=RecordForm)
@login_required
@require(Action.RECORD_ADD)
def add() -> ResponseReturnValue:
    form = RecordForm()
    if not form.validate():
        raise _invalid(form, "form")
    try:
        crm_ref = service.check_crm_ref(form.crm_ref.data or "", _pattern())
    except service.RecordRefused as exc:
        return _refuse(Event.RECORD_REFUSED, exc.reason, "/records")
    record_id = service.add_record(
        unit().conn, crm_ref, actor=current_user.username, now=services().clock.now()
    )
    unit().record(Event.RECORD_ADDED, ok=True, resource=_page(record_id), detail=f"crm:{crm_ref}")
    return redirect(url_for("records.view", record_id=record_id))


@bp.get("/<int:record_id>")
@accepts()
@login_required
@require(Action.RECORD_VIEW)
def view(record_id: int) -> ResponseReturnValue:
    conn = unit().conn
    row = service.get_record(conn, record_id)
    if row is None:
        abort(404)
    shown = (
        service.masked_cards(conn, record_id) if allowed(current_user.role, Action.CARD_VIEW_MASKED) else []
    )
    unit().record(
        Event.RECORD_VIEWED, ok=True, resource=_page(record_id), detail=f"cards_masked={len(shown)}"
    )
    return render_template(
        "records/record.html",
        record=row,
        cards=[(c.id, card_rules.masked(c.brand, c.last4)) for c in shown],
        card_form=CardForm(),
        retire_form=RetireForm(),
        user=current_user,
        logout=LogoutForm(),
    )


@bp.post("/<int:record_id>/retire")
@accepts(form=RetireForm)
@login_required
@require(Action.RECORD_RETIRE)
def retire(record_id: int) -> ResponseReturnValue:
    conn = unit().conn
    try:
        if service.writable_record(conn, record_id) is None:
            abort(404)
    except service.RecordRefused as exc:
        return _refuse(Event.RECORD_REFUSED, exc.reason, _page(record_id))
    service.retire_record(conn, record_id, actor=current_user.username, now=services().clock.now())
    unit().record(Event.RECORD_RETIRED, ok=True, resource=_page(record_id))
    return redirect(url_for("records.view", record_id=record_id))


@bp.post("/<int:record_id>/cards")
@accepts(form=CardForm)
@login_required
@require(Action.CARD_ADD)
def add_card(record_id: int) -> ResponseReturnValue:
    resource = _page(record_id)
    # Before anything else, whatever the rest of the form says: a security code is never accepted.
    if any(name in request.form for name in card_rules.CVV_FIELDS):
        return _refuse(Event.CARD_REFUSED, "cvv_present: " + CVV_REFUSED, resource)
    form = CardForm()
    if not form.validate():
        field, _errors = next(iter(form.errors.items()))
        return _refuse(Event.CARD_REFUSED, f"{field}: missing or out of range", resource)
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        if service.writable_record(conn, record_id) is None:
            abort(404)
        card = service.NewCard(
            pan=card_rules.parse_pan(form.pan.data or ""),
            cardholder=card_rules.check_name(form.cardholder.data or ""),
            expiry=card_rules.check_expiry(
                int(form.exp_month.data or 0), int(form.exp_year.data or 0), now=now
            ),
        )
    except (service.RecordRefused, card_rules.CardRefused) as exc:
        return _refuse(Event.CARD_REFUSED, exc.reason, resource)
    card_id = service.add_card(
        conn, service.cipher(svc.vault), record_id, card, actor=current_user.username, now=now
    )
    unit().record(
        Event.CARD_ADDED, ok=True, resource=f"card:{card_id}", detail=f"{resource} {card.pan.brand}"
    )
    return redirect(url_for("records.view", record_id=record_id))
