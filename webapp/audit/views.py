"""The audit pages: the log with filters and each employee's activity (auditors and supervisors), and a
bounded CSV export of the log (auditors only). Every page viewed, exported or refused is itself an
audit record, written in the request's one unit of work: if it cannot be written, nothing is shown.

A filter the reader typed wrong (user, from, until) is shown next to its field with what was typed,
audited as `request.form_invalid` (not alerted); a value no page offers (an event or outcome not in
the list, a paging cursor that is not a record number) is tampering: 400, `request.input_refused`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, abort, current_app, render_template, request
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import current_user, login_required
from flask_wtf import FlaskForm

from webapp.audit import activity as activity_data
from webapp.audit import export as csv_export
from webapp.audit import service
from webapp.audit.forms import TYPED, ActivityForm, AuditFilterForm, ExportForm, FilterFields
from webapp.auth.roles import require_role
from webapp.clock import audit_timestamp
from webapp.events import Event
from webapp.request import unit
from webapp.services import services
from webapp.validation import InputRefused, accepts

bp = Blueprint("audit", __name__, url_prefix="/audit")
READERS = ("auditor", "supervisor")
EXPORTERS = ("auditor",)
FILTERS = ("actor", "event", "outcome", "since", "until")
RECENT = 20  # rows in each list of the activity page; the full list is one link away
MAX_USER_ID = 2**31 - 1
LINK_TIME = "%Y-%m-%dT%H:%M"  # what a datetime-local field reads


def _render(template: str, *, status: int = 200, **context: Any) -> Response:
    user = current_user._get_current_object()  # the user itself: the page reads it a few times
    html = render_template(template, user=user, logout=True, **context)
    return Response(html, status=status, mimetype="text/html")


def _message(errors: Any) -> str:
    return str(errors[0]).lower().rstrip(".")


def _checked(form: FlaskForm) -> bool:
    """Validate: True if the form is valid, False for a typo in a typed field (the errors stay on
    the form for the page). A field the page sets itself, holding what the page never offers, is
    tampering and raises the validation guard's refusal."""
    if form.validate():
        return True
    for name, errors in form.errors.items():
        if name not in TYPED:
            raise InputRefused(f"query: parameter '{name}' {_message(errors)}")
    return False


def _form_invalid(form: FilterFields, resource: str) -> None:
    """A typo: audited, not alerted. A card number typed into a filter is alerted (input_refused), as
    a card number in any field but the card form's is (docs/alerts.md), though the page still shows
    the error at its field (without the number)."""
    if form.card_numbers:
        detail = f"query: parameter '{form.card_numbers[0]}' holds a card number"
        unit().record(Event.INPUT_REFUSED, ok=False, resource=resource, detail=detail)
        return
    name, errors = next(iter(form.errors.items()))
    detail = f"query: parameter '{name}' {_message(errors)}"
    unit().record(Event.FORM_INVALID, ok=False, resource=resource, detail=detail)


def _utc(value: datetime | None) -> str | None:
    """A filter's date-time (typed in UTC, so naive) as an audit timestamp, which compares as text."""
    return audit_timestamp(value.replace(tzinfo=UTC)) if value is not None else None


def _filter(form: FilterFields) -> service.AuditFilter:
    return service.AuditFilter(
        actor=form.actor.data or None,
        event=form.event.data or None,
        outcome=form.outcome.data or None,
        since=_utc(form.since.data),
        until=_utc(form.until.data),
    )


def _filter_args() -> dict[str, str]:
    """The request's filter parameters as given (already validated), for links that keep them."""
    return {name: request.args[name] for name in FILTERS if request.args.get(name)}


def _log_page(form: FilterFields, *, status: int = 200, **context: Any) -> Response:
    return _render(
        "audit/index.html",
        status=status,
        form=form,
        args=_filter_args(),
        may_export=current_user.role in EXPORTERS,
        **context,
    )


@bp.get("/")
@accepts(query=AuditFilterForm)
@login_required
@require_role(*READERS)
def index() -> ResponseReturnValue:
    form = AuditFilterForm(formdata=request.args)
    if not _checked(form):
        _form_invalid(form, "/audit")
        return _log_page(form, status=400, found=None)
    flt = _filter(form)
    found = service.page(
        unit().conn,
        flt,
        size=current_app.config["AUDIT_PAGE_SIZE"],
        before=form.before.data,
        after=form.after.data,
    )
    where = f"before={form.before.data} " if form.before.data else ""
    where += f"after={form.after.data} " if form.after.data else ""
    unit().record(
        Event.AUDIT_VIEWED,
        ok=True,
        resource="/audit",
        detail=f"rows={len(found.rows)} {where}{flt.summary()}",
    )
    return _log_page(form, found=found)


@bp.get("/export.csv")
@accepts(query=ExportForm)
@login_required
@require_role(*EXPORTERS)
def export() -> ResponseReturnValue:
    """The matching records as CSV, oldest first, or a refusal when more than the bound match. The
    export's audit record is written in this request's unit of work, before the file is sent: if it
    cannot be written the request fails and no file leaves."""
    form = ExportForm(formdata=request.args)
    if not _checked(form):
        _form_invalid(form, "/audit/export")
        return _log_page(form, status=400, found=None)
    flt = _filter(form)
    most = int(current_app.config["AUDIT_EXPORT_MAX_ROWS"])
    rows = service.bounded(unit().conn, flt, most=most)
    if rows is None:
        unit().record(
            Event.AUDIT_EXPORTED,
            ok=False,
            resource="/audit/export",
            detail=f"too_many>{most} {flt.summary()}",
        )
        return _log_page(form, status=400, found=None, too_many=most)
    body = csv_export.to_csv(rows)
    unit().record(
        Event.AUDIT_EXPORTED, ok=True, resource="/audit/export", detail=f"rows={len(rows)} {flt.summary()}"
    )
    response = Response(body.encode("utf-8"), status=200, content_type="text/csv; charset=utf-8")
    name = csv_export.filename(services().clock.now())
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/activity")
@accepts()
@login_required
@require_role(*READERS)
def activity() -> ResponseReturnValue:
    found = activity_data.employees(unit().conn)
    unit().record(Event.AUDIT_VIEWED, ok=True, resource="/audit/activity", detail=f"employees={len(found)}")
    return _render("audit/activity.html", employees=found)


@bp.get("/activity/<int:user_id>")
@accepts(query=ActivityForm)
@login_required
@require_role(*READERS)
def employee(user_id: int) -> ResponseReturnValue:
    form = ActivityForm(formdata=request.args)
    if not form.validate():  # every field is set by the page: anything else is tampering
        name, errors = next(iter(form.errors.items()))
        raise InputRefused(f"query: parameter '{name}' {_message(errors)}")
    conn = unit().conn
    person = activity_data.employee(conn, user_id) if 0 < user_id <= MAX_USER_ID else None
    if person is None:
        abort(404)
    days = int(form.days.data)
    now = services().clock.now()
    start = (now - timedelta(days=days)).astimezone(UTC).replace(second=0, microsecond=0)
    since = audit_timestamp(start)

    def mine(**kw: str) -> service.AuditFilter:
        return service.AuditFilter(actor=person.username, since=since, **kw)

    logins = sorted(
        [
            *service.latest(conn, mine(event=Event.LOGIN_SUCCESS), limit=RECENT),
            *service.latest(conn, mine(event=Event.LOGIN_FAILURE), limit=RECENT),
        ],
        key=lambda r: -int(r.seq),
    )[:RECENT]
    recent = service.page(
        conn,
        service.AuditFilter(actor=person.username),
        size=current_app.config["AUDIT_PAGE_SIZE"],
        before=form.before.data,
        after=form.after.data,
    )
    usage = activity_data.budget_usage(
        conn, current_app.extensions["strongroom.budgets"], user_id=person.id, now=now
    )
    # Named by the user id the database holds, never by what was typed into the URL.
    unit().record(
        Event.AUDIT_VIEWED,
        ok=True,
        resource=f"user:{person.id}",
        detail=f"activity days={days} rows={len(recent.rows)}",
    )
    return _render(
        "audit/employee.html",
        form=form,
        person=person,
        days=days,
        since_link=start.strftime(LINK_TIME),
        since=since,
        counts=service.counts_by_event(conn, mine()),
        logins=logins,
        reveals=service.latest(conn, mine(event=Event.REVEALED), limit=RECENT),
        refusals=service.latest(conn, mine(outcome=service.FAILURE), limit=RECENT),
        recent=recent,
        usage=usage,
        recent_n=RECENT,
        events=Event,
    )
