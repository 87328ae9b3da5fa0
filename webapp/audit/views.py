"""The audit log viewer: auditors read and filter. Viewing is itself audited."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required

from webapp.audit import service
from webapp.audit.forms import AuditFilterForm
from webapp.auth.forms import LogoutForm
from webapp.auth.roles import require_role
from webapp.events import Event
from webapp.request import unit
from webapp.validation import InputRefused, accepts

bp = Blueprint("audit", __name__, url_prefix="/audit")


@bp.get("/")
@accepts(query=AuditFilterForm)
@login_required
@require_role("auditor")
def index() -> ResponseReturnValue:
    form = AuditFilterForm(formdata=request.args)
    if request.args and not form.validate():
        field, errors = next(iter(form.errors.items()))
        raise InputRefused(f"query: parameter '{field}' {errors[0].lower().rstrip('.')}")
    flt = service.AuditFilter(
        actor=form.actor.data or None,
        event=form.event.data or None,
        outcome=form.outcome.data or None,
        since=form.since.data.isoformat() if form.since.data else None,
        until=form.until.data.isoformat() if form.until.data else None,
    )
    size = current_app.config["AUDIT_PAGE_SIZE"]
    page = form.page.data or 1
    rows = service.search(unit().conn, flt, limit=size, offset=(page - 1) * size)
    unit().record(Event.AUDIT_VIEWED, ok=True, resource="/audit", detail=f"page={page} rows={len(rows)}")
    return render_template(
        "audit.html", form=form, rows=rows, page=page, user=current_user, logout=LogoutForm()
    )
