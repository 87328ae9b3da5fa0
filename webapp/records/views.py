"""Records routes. Each checks the permission matrix (field class × action), validates every
parameter through a form, and audits what it showed, changed or refused, in the request's one unit
of work. The reveal route adds a one-time step-up (token + fresh password) and a typed reason."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import wraps
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, redirect, render_template, request, session, url_for
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import current_user, login_required, logout_user

from keyd.errors import IntegrityFailure, QuotaExceeded
from webapp.auth import keypad
from webapp.auth.forms import LogoutForm
from webapp.auth.service import active_binding, attempt_login
from webapp.auth.sessions import ServerSession
from webapp.clock import from_db
from webapp.config import ConfigError
from webapp.db.tables import users
from webapp.events import Event
from webapp.records import cards as card_rules
from webapp.records import items as item_rules
from webapp.records import permissions, purge, service, stepup
from webapp.records.forms import (
    CardEditForm,
    CardForm,
    ItemForm,
    RecordForm,
    RetireForm,
    RevealForm,
    SearchForm,
)
from webapp.records.permissions import ITEM_CLASS, SECRET_FIELDS, Act, FieldClass, Matrix
from webapp.request import origin, unit
from webapp.services import services
from webapp.validation import InputRefused, accepts

bp = Blueprint("records", __name__, url_prefix="/records")
bp.cli.add_command(purge.purge_retired_command)  # flask --app webapp records purge-retired
MATRIX = "strongroom.records.matrix"
CVV_REFUSED = (
    "card security codes (CVV/CVC) are never accepted or stored: the form was refused, nothing was saved"
)
KINDS = "any(bank, identity, note)"
_RANGES = {
    "REVEAL_HIDE_SECONDS": (5, 300),
    "STEPUP_TTL": (30, 900),
    "RETIRED_RETENTION_DAYS": purge.RETENTION_RANGE,
}


@bp.record_once
def _configure(state: BlueprintSetupState) -> None:
    cfg = state.app.config
    cfg.setdefault("CRM_REF_PATTERN", service.DEFAULT_CRM_REF_PATTERN)
    # Seconds a revealed value stays on screen; seconds a reveal form (its step-up token) stays valid.
    cfg.setdefault("REVEAL_HIDE_SECONDS", 30)
    cfg.setdefault("STEPUP_TTL", 300)
    # Days a retired card or item is kept (masked, never revealed) before `records purge-retired`
    # deletes it; None for PURGE_DATABASE_URL: the app's own database (development, tests).
    cfg.setdefault("RETIRED_RETENTION_DAYS", purge.RETENTION_DEFAULT_DAYS)
    cfg.setdefault("PURGE_DATABASE_URL", None)
    # None: the shipped matrix (webapp/records/permissions.json); else a JSON file path or a mapping.
    cfg.setdefault("RECORDS_PERMISSIONS", None)
    pattern = cfg["CRM_REF_PATTERN"]
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        raise ConfigError("STRONGROOM_CRM_REF_PATTERN must be a regular expression") from None
    if not (isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$")):
        raise ConfigError("STRONGROOM_CRM_REF_PATTERN must be anchored (^...$)")
    for name, (lo, hi) in _RANGES.items():
        value = cfg[name]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise ConfigError(f"STRONGROOM_{name} must be an integer from {lo} to {hi}")
    state.app.extensions[MATRIX] = permissions.load(cfg["RECORDS_PERMISSIONS"])


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


def matrix() -> Matrix:
    found: Matrix = current_app.extensions[MATRIX]
    return found


def may(field_class: FieldClass, action: Act) -> bool:
    return matrix().allows(current_user.role, field_class, action)


def _denied(field_class: FieldClass, action: Act) -> Response:
    uow = unit()
    uow.discard_writes()
    # The route's name and record, not the raw path: a path segment is whatever the client typed
    # (a PAN typed into an id would otherwise land in the audit log).
    record_id = (request.view_args or {}).get("record_id")
    resource = f"{request.endpoint}:{record_id}" if record_id is not None else str(request.endpoint)
    uow.record(
        Event.ACCESS_DENIED, ok=False, resource=resource[:200], detail=f"matrix:{field_class}:{action}"
    )
    body = render_template("error.html", status=403, message="You are not allowed to do this.")
    return Response(body, status=403, mimetype="text/html")


def require(field_class: FieldClass, action: Act) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if not may(field_class, action):
                return _denied(field_class, action)
            return view(*args, **kwargs)

        return checked

    return wrap


def require_item(action: Act) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """As `require`, with the field class taken from the item kind in the URL, before any lookup."""

    def wrap(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            field_class = ITEM_CLASS[kwargs["kind"]]
            if not may(field_class, action):
                return _denied(field_class, action)
            return view(*args, **kwargs)

        return checked

    return wrap


def _refuse(event: Event, reason: str, resource: str, *, status: int = 400, keep: bool = False) -> Response:
    """A specific refusal, audited. Nothing the action wrote is kept unless `keep` (a spent step-up
    token and a counted wrong password must stay spent and counted)."""
    uow = unit()
    if not keep:
        uow.discard_writes()
    uow.record(event, ok=False, resource=resource[:200], detail=reason[:200])
    body = render_template("error.html", status=status, message=f"Refused: {reason}.")
    return Response(body, status=status, mimetype="text/html")


def _invalid(form: Any, where: str) -> InputRefused:
    field, errors = next(iter(form.errors.items()))
    return InputRefused(f"{where}: parameter '{field}' {errors[0].lower().rstrip('.')}")


def _pattern() -> str:
    return str(current_app.config["CRM_REF_PATTERN"])


def _page(record_id: int) -> str:
    return f"record:{record_id}"


def _writable_or_404(record_id: int) -> None:
    """A record that does not exist is 404; a retired one raises RecordRefused (read-only)."""
    if service.writable_record(unit().conn, record_id) is None:
        abort(404)


def _now() -> Any:
    return services().clock.now()


def _render(template: str, **context: Any) -> str:
    return render_template(
        template, user=current_user, logout=LogoutForm(), can=matrix().can(current_user.role), **context
    )


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
        except service.RecordRefused as exc:
            return _refuse(Event.RECORD_REFUSED, exc.reason, "/records")
        rows = service.find_records(unit().conn, crm_ref)
        unit().record(Event.RECORDS_LISTED, ok=True, resource=f"crm:{crm_ref}", detail=f"rows={len(rows)}")
    else:
        unit().record(Event.PAGE_VIEW, ok=True, resource="/records")
    return _render("records/index.html", search=form, add=RecordForm(), rows=rows)


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
    except service.RecordRefused as exc:
        return _refuse(Event.RECORD_REFUSED, exc.reason, "/records")
    record_id = service.add_record(unit().conn, crm_ref, actor=current_user.username, now=_now())
    unit().record(Event.RECORD_ADDED, ok=True, resource=_page(record_id), detail=f"crm:{crm_ref}")
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
        resource=_page(record_id),
        detail=f"cards_masked={len(shown)} items_masked={len(found)}",
    )
    return _render(
        "records/record.html",
        record=row,
        cards=[(c, card_rules.masked(c.brand, c.last4)) for c in shown],
        items=found,
        kinds=kinds,
        card_form=CardForm(),
        item_form=ItemForm(),
        doc_types=item_rules.DOC_TYPES,
        retire_form=RetireForm(),
    )


@bp.post("/<int:record_id>/retire")
@accepts(form=RetireForm)
@login_required
@require(FieldClass.RECORD, Act.RETIRE)
def retire(record_id: int) -> ResponseReturnValue:
    conn = unit().conn
    try:
        _writable_or_404(record_id)
    except service.RecordRefused as exc:
        return _refuse(Event.RECORD_REFUSED, exc.reason, _page(record_id))
    service.retire_record(conn, record_id, actor=current_user.username, now=_now())
    unit().record(Event.RECORD_RETIRED, ok=True, resource=_page(record_id))
    return redirect(url_for("records.view", record_id=record_id))


# --- cards -------------------------------------------------------------------------------------


def _card_fields(form: CardForm | CardEditForm, resource: str) -> Response | None:
    # Before anything else, whatever the rest of the form says: a security code is never accepted.
    if any(name in request.form for name in card_rules.CVV_FIELDS):
        return _refuse(Event.CARD_REFUSED, "cvv_present: " + CVV_REFUSED, resource)
    if not form.validate():
        field, _errors = next(iter(form.errors.items()))
        return _refuse(Event.CARD_REFUSED, f"{field}: missing or out of range", resource)
    return None


@bp.post("/<int:record_id>/cards")
@accepts(form=CardForm)
@login_required
@require(FieldClass.CARD_MASKED, Act.ADD)
def add_card(record_id: int) -> ResponseReturnValue:
    resource = _page(record_id)
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
    except (service.RecordRefused, card_rules.CardRefused) as exc:
        return _refuse(Event.CARD_REFUSED, exc.reason, resource)
    card_id = service.add_card(
        conn, service.cipher(svc.vault), record_id, card, actor=current_user.username, now=now
    )
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
    unit().record(Event.CARD_VIEWED, ok=True, resource=f"card:{card_id}", detail=_page(record_id))
    return _render(
        "records/card.html",
        record=record,
        card=row,
        label=card_rules.masked(row.brand, row.last4),
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
    except (service.RecordRefused, card_rules.CardRefused) as exc:
        return _refuse(Event.CARD_REFUSED, exc.reason, resource)
    service.edit_card(
        conn,
        service.cipher(svc.vault),
        card_id,
        cardholder=name,
        expiry=expiry,
        actor=current_user.username,
        now=now,
    )
    unit().record(Event.CARD_EDITED, ok=True, resource=resource, detail=_page(record_id))
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
    except service.RecordRefused as exc:
        return _refuse(Event.CARD_REFUSED, exc.reason, resource)
    service.retire_card(conn, card_id, actor=current_user.username, now=_now())
    unit().record(Event.CARD_RETIRED, ok=True, resource=resource, detail=_page(record_id))
    return redirect(url_for("records.view", record_id=record_id))


# --- items (bank accounts, identity documents, notes) ---------------------------------------------


def _item_or_404(record_id: int, kind: str, item_id: str) -> sa.Row:
    item = service.get_item(unit().conn, record_id, item_id)
    if item is None or item.kind != kind:  # the URL's kind is what the matrix checked
        abort(404)
    return item


def _item_value(kind: str, form: ItemForm) -> tuple[str, str]:
    if not form.validate():
        field, errors = next(iter(form.errors.items()))
        raise item_rules.ItemRefused(f"{field}: {errors[0].lower().rstrip('.')}")
    return item_rules.check(kind, form.value.data or "", form.doc_type.data or "")


@bp.post(f"/<int:record_id>/<{KINDS}:kind>")
@accepts(form=ItemForm)
@login_required
@require_item(Act.ADD)
def add_item(record_id: int, kind: str) -> ResponseReturnValue:
    resource = _page(record_id)
    svc, conn = services(), unit().conn
    now = svc.clock.now()
    try:
        _writable_or_404(record_id)
        value, hint = _item_value(kind, ItemForm())
    except (service.RecordRefused, item_rules.ItemRefused) as exc:
        return _refuse(Event.ITEM_REFUSED, exc.reason, resource)
    item_id = service.add_item(
        conn, service.cipher(svc.vault), record_id, kind, value, hint, actor=current_user.username, now=now
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
    unit().record(Event.ITEM_VIEWED, ok=True, resource=f"{kind}:{item_id}", detail=_page(record_id))
    return _render(
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
    except (service.RecordRefused, item_rules.ItemRefused) as exc:
        return _refuse(Event.ITEM_REFUSED, exc.reason, resource)
    service.edit_item(
        conn, service.cipher(svc.vault), item_id, kind, value, hint, actor=current_user.username, now=now
    )
    unit().record(Event.ITEM_EDITED, ok=True, resource=resource, detail=_page(record_id))
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
    except service.RecordRefused as exc:
        return _refuse(Event.ITEM_REFUSED, exc.reason, resource)
    service.retire_item(conn, item_id, actor=current_user.username, now=_now())
    unit().record(Event.ITEM_RETIRED, ok=True, resource=resource, detail=_page(record_id))
    return redirect(url_for("records.view", record_id=record_id))


# --- reveal ----------------------------------------------------------------------------------------

REVEAL_URL = (
    "/<int:record_id>/reveal/<any(card, bank, identity, note):kind>/<obj_id>"
    "/<any(pan, cardholder, expiry, value):field>"
)
STEPUP_KEYPAD = "stepup_keypad"


def require_reveal(view: Callable[..., Any]) -> Callable[..., Any]:
    """The matrix cell of the field in the URL; a (kind, field) pair that names no secret is 404."""

    @wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        field_class = SECRET_FIELDS.get((kwargs["kind"], kwargs["field"]))
        if field_class is None:
            abort(404)
        if not may(field_class, Act.REVEAL):
            return _denied(field_class, Act.REVEAL)
        return view(*args, **kwargs)

    return checked


def _revealable_or_404(record_id: int, kind: str, obj_id: str, *, lock: bool = False) -> str | None:
    """None if the field may be revealed, else why not (a retired card or item, a retired record).

    Retired means no longer readable (docs/webapp.md, "Retirement"): only the masked form is shown.
    With `lock`, the record row is locked for the rest of the request: every retire locks it first
    (service.writable_record), so a retirement cannot land between this check and the decrypt.
    """
    record = service.get_record(unit().conn, record_id, for_update=lock)
    if record is None:
        abort(404)
    row = _card_or_404(record_id, obj_id) if kind == "card" else _item_or_404(record_id, kind, obj_id)
    if record.retired_at is not None:
        return "the record is retired: its values can no longer be revealed"
    if row.retired_at is not None:
        return f"the {'card' if kind == 'card' else 'item'} is retired: it can no longer be revealed"
    return None


def _entered(form: RevealForm, mode: str, layout: dict[str, str] | None) -> tuple[str | None, str | None]:
    """(password, PIN) entered as the login entry mode requires (see auth.views._entered)."""
    typed, clicked = form.stepup_typed.data or None, form.keypad.data or ""
    if mode == "keyboard":
        return (typed, None) if not clicked else (None, None)
    decoded = keypad.decode(clicked, layout) if layout is not None else None
    if mode == "keypad":
        return (decoded, None) if typed is None else (None, None)
    return typed, decoded  # keypad-pin: password typed, PIN clicked


@bp.get(REVEAL_URL)
@accepts()
@login_required
@require_reveal
def reveal_form(record_id: int, kind: str, obj_id: str, field: str) -> ResponseReturnValue:
    cfg, target = current_app.config, f"{kind}:{obj_id}:{field}"
    if (retired := _revealable_or_404(record_id, kind, obj_id)) is not None:
        return _refuse(Event.REVEAL_REFUSED, retired, target, status=403)
    token = stepup.issue(
        unit().conn, user_id=int(current_user.id), target=target, now=_now(), ttl=cfg["STEPUP_TTL"]
    )
    mode = cfg["LOGIN_ENTRY"]
    pairs: list[tuple[str, str]] = []
    if mode != "keyboard":
        pairs, layout = keypad.new_layout(keypad.DIGITS if mode == "keypad-pin" else keypad.KEYS)
        session[STEPUP_KEYPAD] = layout
    unit().record(Event.REVEAL_FORM, ok=True, resource=target)
    form = RevealForm()
    form.stepup.data = token
    return _render(
        "records/reveal.html",
        form=form,
        mode=mode,
        keypad=pairs,
        record_id=record_id,
        kind=kind,
        obj_id=obj_id,
        field=field,
        reason_max=stepup.REASON_MAX,
    )


@bp.post(REVEAL_URL)
@accepts(form=RevealForm)
@login_required
@require_reveal
def reveal(record_id: int, kind: str, obj_id: str, field: str) -> ResponseReturnValue:
    svc, uow, cfg = services(), unit(), current_app.config
    now, target = svc.clock.now(), f"{kind}:{obj_id}:{field}"
    layout = session.pop(STEPUP_KEYPAD, None)  # single use, whatever happens next
    form = RevealForm()
    if not form.validate():
        field_name, _errors = next(iter(form.errors.items()))
        return _refuse(Event.REVEAL_REFUSED, f"{field_name}: missing or too long", target)
    # Checked again here, whatever the form said: a step-up token issued before a retirement is
    # worth nothing after it.
    if (retired := _revealable_or_404(record_id, kind, obj_id, lock=True)) is not None:
        return _refuse(Event.REVEAL_REFUSED, retired, target, status=403)
    try:
        reason = stepup.check_reason(form.reason.data or "")
        # Spent from here on, whatever follows: every password attempt needs a fresh reveal form.
        stepup.consume(uow.conn, form.stepup.data or "", user_id=int(current_user.id), target=target, now=now)
    except stepup.StepUpRefused as exc:
        return _refuse(Event.REVEAL_REFUSED, exc.reason, target)
    mode = cfg["LOGIN_ENTRY"]
    password, pin = _entered(form, mode, layout if isinstance(layout, dict) else None)
    if password is None or (mode == "keypad-pin" and pin is None):
        return _refuse(Event.REVEAL_REFUSED, "password: required for every reveal", target, keep=True)
    binding = active_binding(uow.conn, origin().fingerprint, now=now)
    if binding is None:
        abort(403)
    ok = attempt_login(
        uow,
        svc.hasher,
        binding=binding,
        username=current_user.username,
        password=password,
        now=now,
        policy=svc.login_policy,
        pin=pin,
        require_pin=mode == "keypad-pin",
        success_event=Event.STEPUP_SUCCESS,
        failure_event=Event.STEPUP_FAILURE,
    )
    if ok is None:
        locked = uow.conn.execute(
            sa.select(users.c.locked_until).where(users.c.id == binding.user_id)
        ).scalar()
        if locked is not None and from_db(locked) > now:
            # Locked by wrong step-up passwords: the session ends too (fail closed).
            logout_user()
            if isinstance(session, ServerSession):
                session.end("stepup_lockout")
        return _refuse(
            Event.REVEAL_REFUSED, "password: incorrect, nothing was revealed", target, status=403, keep=True
        )
    purpose = stepup.purpose(reason)
    detail = f"tag={stepup.reason_tag(reason)} reason={reason}"
    try:
        plaintext = service.unchecked_decrypt(
            uow.conn, service.cipher(svc.vault), obj_id, field, actor=current_user.username, purpose=purpose
        )
    except QuotaExceeded as exc:
        uow.record(
            Event.REVEAL_BUDGET_EXCEEDED, ok=False, resource=target, detail=f"keyd:{exc.reason or '-'}"
        )
        page = render_template("quota_exceeded.html", user=current_user, logout=LogoutForm())
        return Response(page, status=429, mimetype="text/html")
    except IntegrityFailure:
        return _refuse(
            Event.REVEAL_INTEGRITY_FAILED,
            "the stored value failed its integrity check; operators have been alerted",
            target,
            status=500,
            keep=True,
        )
    uow.record(Event.REVEALED, ok=True, resource=target, detail=detail[:200])
    value = plaintext.decode("utf-8")
    if field == "pan":
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return _render(
        "records/revealed.html",
        value=value,
        hide_after=cfg["REVEAL_HIDE_SECONDS"],
        record_id=record_id,
        what=f"{kind} {field}",
    )
