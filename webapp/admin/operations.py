"""The admin console's operations pages (role `admin`): the alert outbox and the mailer, and the
request and reveal budgets with keyd's state and the key versions.

- Alerts (/admin/alerts): the outbox, newest first, a page at a time: per row what its mail says
  (the event, the count, the first and last time: webapp/mail/texts.py) and its delivery state
  (queued, failed and retrying, sent; attempts; the class of the last failure). A row's actor, IP,
  resource and detail are never shown here: the mail never carries them either, and whoever needs
  them reads the audit log (or, for the watchdog's and backups' findings, their own logs). "Send a
  test alert" records admin.test_alert, which goes to the outbox and is mailed like any alert.
- Budgets and keys (/admin/budgets): each user's request counts against every window's alert
  threshold and limit and, beside them, their reveal counts against the reveal limits (the web app's
  global reveal budget, STRONGROOM_REVEAL_BUDGETS), who is refused now and until when, for either
  kind; the shared (total) counts of both kinds; whether keyd is sealed (unreachable is shown as
  unreachable, never as a state it did not report), and the stored ciphertexts per key version.
  Lifting an employee's spent budgets is a confirmed change (reason + the admin's password,
  webapp/auth/confirm.py), audited and alerted as admin.budget_lifted (webapp/budgets.py `lift`): it
  resets their request and reveal counters of the current windows, and its message names the kinds
  that had a count (the audit detail lists them with their counts). keyd's own per-node decrypt
  budgets are not lifted from here, by design: the page says what keyd's operator does instead
  (docs/admin-guide.md, docs/keyd.md).

Every view: logged in, role admin (an audited 403 otherwise), every parameter declared, CSRF on every
POST, and an audit record for every read and write, allowed or refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectChoice, SelectField
from wtforms.validators import NumberRange, Optional

from keyd.client import Status
from keyd.errors import KeydError
from webapp import budgets
from webapp.auth import confirm
from webapp.auth.roles import require_role
from webapp.clock import from_db
from webapp.db.tables import outbox, users
from webapp.events import Event
from webapp.keys import service as keys
from webapp.mail.texts import notification
from webapp.outbox import DEFAULT_RETENTION_DAYS, valid_event_name
from webapp.refusals import refuse
from webapp.request import unit
from webapp.services import services
from webapp.validation import InputRefused, accepts

bp = Blueprint("operations", __name__, url_prefix="/admin")

PAGE_SIZE = 50  # outbox rows per page, newest first
MAX_PAGE = 100_000
EMPLOYEES_SHOWN = 500  # users on the budgets page, the most used first
STATES = ("queued", "failed", "sent")
UNRECOGNISED = "an unrecognised event"


# --- forms ------------------------------------------------------------------------------------------


class AlertsQuery(FlaskForm):
    """The alerts page's paging and state filter: both set by the page itself, so a value it never
    offers was made by hand and is refused as tampering (400, request.input_refused)."""

    class Meta:
        csrf = False

    page = IntegerField("Page", validators=[Optional(), NumberRange(min=1, max=MAX_PAGE)])
    state = SelectField(
        "Show",
        choices=[SelectChoice("", "all"), *(SelectChoice(s) for s in STATES)],
        default="",
        validators=[Optional()],
    )


class TestAlertForm(FlaskForm):
    """The "send a test alert" button: nothing but the CSRF token."""


class LiftForm(confirm.ConfirmForm):
    """Lifting an employee's spent request and reveal budgets: the confirmation's reason and password
    alone."""


# --- reading ----------------------------------------------------------------------------------------


def _now() -> datetime:
    return services().clock.now()


def _page(template: str, *, status: int = 200, **context: Any) -> Response:
    user = current_user._get_current_object()  # the user itself: the page reads it a few times
    html = render_template(template, user=user, logout=True, **context)
    return Response(html, status=status, mimetype="text/html")


def _state(sent_at: Any, attempts: int) -> str:
    if sent_at is not None:
        return "sent"
    return "failed" if attempts > 0 else "queued"


def _state_of_row() -> sa.Case[Any]:
    """The same states in SQL: for the counts per state and the page's filter."""
    return sa.case(
        (outbox.c.sent_at.is_not(None), "sent"),
        (outbox.c.attempts > 0, "failed"),
        else_="queued",
    )


@dataclass(frozen=True)
class AlertRow:
    """An outbox row as the page shows it: what its mail says, and its delivery state; no more."""

    event: str
    says: str
    count: int
    first: datetime
    last: datetime
    state: str
    attempts: int
    last_error: str | None
    sent_at: datetime | None


def _alert_row(r: Any) -> AlertRow:
    first = from_db(r.created_at)
    last = from_db(r.last_at or r.created_at)
    count = int(r.n_events)
    event = str(r.event) if valid_event_name(str(r.event)) else UNRECOGNISED
    subject = notification(str(r.event), count=count, first=first, last=last).subject
    return AlertRow(
        event=event,
        says=subject.removeprefix("Strongroom: "),
        count=count,
        first=first,
        last=last,
        state=_state(r.sent_at, int(r.attempts)),
        attempts=int(r.attempts),
        last_error=r.last_error,
        sent_at=from_db(r.sent_at) if r.sent_at is not None else None,
    )


def _outbox_summary(conn: sa.Connection) -> dict[str, tuple[int, int]]:
    """Per state: (rows, events), in one statement."""
    found = dict.fromkeys(STATES, (0, 0))
    state_sql = _state_of_row()
    rows = conn.execute(
        sa.select(state_sql.label("state"), sa.func.count(), sa.func.sum(outbox.c.n_events)).group_by(
            state_sql
        )
    )
    for state, n_rows, n_events in rows:
        found[str(state)] = (int(n_rows), int(n_events or 0))
    return found


def _outbox_page(conn: sa.Connection, state: str | None, page: int) -> list[AlertRow]:
    query = sa.select(
        outbox.c.event,
        outbox.c.n_events,
        outbox.c.created_at,
        outbox.c.last_at,
        outbox.c.sent_at,
        outbox.c.attempts,
        outbox.c.last_error,
    )  # never actor, ip, resource, detail: the mail does not carry them
    if state:
        query = query.where(_state_of_row() == state)
    query = query.order_by(outbox.c.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)
    return [_alert_row(r) for r in conn.execute(query)]


def _last_delivery(conn: sa.Connection) -> datetime | None:
    last = conn.execute(sa.select(sa.func.max(outbox.c.sent_at))).scalar_one_or_none()
    return from_db(last) if last is not None else None


# --- alerts -----------------------------------------------------------------------------------------


@bp.get("/alerts")
@accepts(query=AlertsQuery)
@login_required
@require_role("admin")
def alerts() -> ResponseReturnValue:
    form = AlertsQuery(formdata=request.args)
    if request.args and not form.validate():
        name, errors = next(iter(form.errors.items()))
        raise InputRefused(f"query: parameter '{name}' {str(errors[0]).lower().rstrip('.')}")
    page, state = form.page.data or 1, form.state.data or None
    conn = unit().conn
    summary = _outbox_summary(conn)
    rows = _outbox_page(conn, state, page)
    unit().record(
        Event.PAGE_VIEW,
        ok=True,
        resource="/admin/alerts",
        detail=f"page={page} state={state or 'all'} rows={len(rows)}",
    )
    shown = summary[state][0] if state else sum(n for n, _ in summary.values())
    return _page(
        "admin/alerts.html",
        form=form,
        test=TestAlertForm(),
        rows=rows,
        summary=summary,
        last_delivery=_last_delivery(conn),
        retention_days=DEFAULT_RETENTION_DAYS,
        page=page,
        state=state or "",
        has_next=page * PAGE_SIZE < shown,
    )


@bp.post("/alerts/test")
@accepts(form=TestAlertForm)
@login_required
@require_role("admin")
def test_alert() -> ResponseReturnValue:
    # In ALERTS: the unit of work puts it in the outbox with this record; the mailer sends it.
    unit().record(
        Event.TEST_ALERT, ok=True, resource="/admin/alerts", detail="requested from the admin console"
    )
    flash(
        "Test alert queued. The mailer sends it on its next pass; "
        "when it has gone, it shows here as sent and the recipients have a mail "
        "'Strongroom: test alert (sent from the admin console)'."
    )
    return redirect(url_for("operations.alerts"))


# --- budgets and keys -------------------------------------------------------------------------------


def _rules() -> tuple[budgets.Rule, ...]:
    rules: tuple[budgets.Rule, ...] = current_app.extensions["strongroom.budgets"]
    return rules


def _by_window(rules: Any) -> list[budgets.Rule]:
    return sorted(rules, key=lambda r: r.window)


def window_name(seconds: int) -> str:
    for unit_seconds, name in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % unit_seconds == 0:
            n = seconds // unit_seconds
            return f"{name}" if n == 1 else f"{n} {name}s"
    return f"{seconds} seconds"


def level(c: budgets.Count) -> str:
    """How far a count is: "exhausted" (the next request is refused), "alert" (threshold reached), ""."""
    if c.rule.limit is not None and c.n >= c.rule.limit:
        return "exhausted"
    return "alert" if c.n >= c.rule.alert else ""


def _zero(rule: budgets.Rule, now: datetime) -> budgets.Count:
    return budgets.Count(rule, 0, budgets.window_start(now, rule.window))


def _fill(rules: list[budgets.Rule], found: list[budgets.Count], now: datetime) -> list[budgets.Count]:
    """One count per rule, in the rules' order: a rule with no stored counter counts 0."""
    by_window = {c.rule.window: c for c in found}
    return [by_window.get(r.window) or _zero(r, now) for r in rules]


def refused_until(counts: list[budgets.Count]) -> datetime | None:
    """Until when the next one of these is refused: a count at or over its limit refuses the next
    request (or reveal) until its window renews; of several, the one renewing last. None: served."""
    spent = [c.renews_at for c in counts if level(c) == "exhausted"]
    return max(spent) if spent else None


@dataclass(frozen=True)
class Refused:
    """One kind ("requests", "reveals") a user is refused now, and until when (UTC)."""

    kind: str
    until: datetime


@dataclass(frozen=True)
class Usage:
    user_id: int
    username: str
    role: str
    active: bool
    counts: list[budgets.Count]  # requests, one per own request rule
    reveals: list[budgets.Count]  # reveals, one per own reveal rule
    refused: list[Refused]  # by their own limits or the whole vault's

    @property
    def used(self) -> float:
        """The largest share of a limit (or, without one, of the alert threshold) used, of either kind."""
        return max((c.n / (c.rule.limit or c.rule.alert) for c in self.counts + self.reveals), default=0.0)

    @property
    def liftable(self) -> bool:
        return any(c.n > 0 for c in self.counts + self.reveals)


@dataclass(frozen=True)
class Keyd:
    state: str  # "unsealed", "sealed" or "unreachable"
    status: Status | None
    error: str | None  # the class of the failure when unreachable


def _keyd() -> Keyd:
    try:
        status = services().vault.status()
    except KeydError as exc:
        return Keyd("unreachable", None, type(exc).__name__)
    return Keyd("sealed" if status.sealed else "unsealed", status, None)


@dataclass(frozen=True)
class Totals:
    """The whole vault's counts: requests and reveals."""

    requests: list[budgets.Count]
    reveals: list[budgets.Count]


def _employees(conn: sa.Connection, now: datetime) -> tuple[list[Usage], int, Totals]:
    rules, reveals = _rules(), budgets.reveal_rules()
    # One statement for both kinds: usage() tells a reveal counter from a request counter by its key.
    found = budgets.usage(conn, rules + reveals, now=now)
    total = Totals(
        _fill(_by_window(budgets.shared(rules)), found.get("total", []), now),
        _fill(_by_window(budgets.shared(reveals)), found.get(f"{budgets.REVEAL}:total", []), now),
    )
    own, own_reveals = _by_window(budgets.own(rules)), _by_window(budgets.own(reveals))
    people = conn.execute(
        sa.select(users.c.id, users.c.username, users.c.role, users.c.active).order_by(users.c.username)
    ).all()
    rows = []
    for p in people:
        # The counters' keys, as Rule.key makes them ("user:<id>", "reveal:user:<id>").
        counts = _fill(own, found.get(f"user:{p.id}", []), now)
        revealed = _fill(own_reveals, found.get(f"{budgets.REVEAL}:user:{p.id}", []), now)
        refused = [
            Refused(kind, until)
            for kind, mine in (("requests", counts + total.requests), ("reveals", revealed + total.reveals))
            if (until := refused_until(mine)) is not None
        ]
        rows.append(Usage(int(p.id), str(p.username), str(p.role), bool(p.active), counts, revealed, refused))
    rows.sort(key=lambda u: (-u.used, u.username))
    return rows[:EMPLOYEES_SHOWN], len(rows), total


@bp.get("/budgets", endpoint="budgets")  # the endpoint name the header's links reserve
@accepts()
@login_required
@require_role("admin")
def budgets_page() -> ResponseReturnValue:
    conn, now = unit().conn, _now()
    employees, total_users, total = _employees(conn, now)
    keyd = _keyd()
    counts = keys.count_versions(conn)
    per_version = sorted(keys.totals(counts).items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
    unit().record(
        Event.PAGE_VIEW,
        ok=True,
        resource="/admin/budgets",
        detail=f"users={total_users} keyd={keyd.state} "
        + "versions="
        + (",".join(f"{v or 'none'}:{n}" for v, n in per_version) or "-"),
    )
    return _page(
        "admin/budgets.html",
        rules=_rules(),
        own_rules=_by_window(budgets.own(_rules())),
        reveal_rules=_by_window(budgets.own(budgets.reveal_rules())),
        employees=employees,
        total_users=total_users,
        shown_max=EMPLOYEES_SHOWN,
        total=total,
        keyd=keyd,
        counts=counts,
        per_version=per_version,
        me=int(current_user.id),
        window_name=window_name,
        level=level,
    )


def _target(user_id: int) -> Any:
    row = (
        unit()
        .conn.execute(
            sa.select(users.c.id, users.c.username, users.c.role, users.c.active).where(users.c.id == user_id)
        )
        .one_or_none()
    )
    if row is None:
        abort(404)
    return row


def _lift_page(
    target: Any,
    form: LiftForm,
    *,
    status: int = 200,
    error: confirm.Unconfirmed | None = None,
    nothing: bool = False,
) -> Response:
    # What was typed comes back on an error, never a card or account number (ConfirmForm.kept_reason).
    now = _now()
    own, reveals = _by_window(budgets.own(_rules())), _by_window(budgets.own(budgets.reveal_rules()))
    found = budgets.peek(unit().conn, own + reveals, user_id=int(target.id), now=now)
    counts = _fill(own, [x for x in found if x.rule.counts == budgets.REQUEST], now)
    revealed = _fill(reveals, [x for x in found if x.rule.counts == budgets.REVEAL], now)
    c = confirm.prompt()
    return _page(
        "admin/budgets_lift.html",
        status=status,
        target=target,
        counts=counts,
        reveals=revealed,
        form=form,
        c=c,
        error=error,
        nothing=nothing or not any(x.n for x in counts + revealed),
        window_name=window_name,
        level=level,
    )


def _resource(target: Any) -> str:
    return f"budget:user:{target.username}"


def _own(target: Any) -> Response | None:
    """An administrator never lifts their own budget: another one must (separation of duties)."""
    if int(target.id) != int(current_user.id):
        return None
    return refuse(
        Event.ACCESS_DENIED,
        "budget_lift:own",
        status=403,
        message="You cannot lift your own budgets: another administrator must.",
        resource=_resource(target),
    )


@bp.get("/budgets/<int:user_id>/lift")
@accepts()
@login_required
@require_role("admin")
def lift_form(user_id: int) -> ResponseReturnValue:
    target = _target(user_id)
    if (refused := _own(target)) is not None:
        return refused
    unit().record(Event.PAGE_VIEW, ok=True, resource=_resource(target), detail="lift form")
    return _lift_page(target, LiftForm(formdata=None))


@bp.post("/budgets/<int:user_id>/lift")
@accepts(form=LiftForm)
@login_required
@require_role("admin")
def lift(user_id: int) -> ResponseReturnValue:
    target = _target(user_id)
    if (refused := _own(target)) is not None:
        return refused
    resource = _resource(target)
    form = LiftForm()
    if not form.validate():
        # Too long for its field: a typo, shown next to it (the password is never echoed back).
        name, errors = next(iter(form.errors.items()))
        unit().record(
            Event.FORM_INVALID,
            ok=False,
            resource=resource,
            detail=f"form: parameter '{name}' {errors[0]}"[:200],
        )
        field = "reason" if name == "reason" else "confirm_typed"
        message = "Reason: too long." if field == "reason" else "Your password is too long."
        return _lift_page(target, form, status=400, error=confirm.Unconfirmed(field, message))
    rules, reveals, now = _rules(), budgets.reveal_rules(), _now()
    mine = budgets.own(rules) + budgets.own(reveals)
    if not any(c.n for c in budgets.peek(unit().conn, mine, user_id=int(target.id), now=now)):
        unit().record(Event.FORM_INVALID, ok=False, resource=resource, detail="nothing_to_lift")
        return _lift_page(target, form, status=409, nothing=True)
    try:
        reason = confirm.confirm(form, resource=resource)
    except confirm.Unconfirmed as exc:
        # Audited by confirm (and a wrong password counted): kept, nothing else changed.
        if exc.locked:
            return redirect(url_for("auth.login"))
        return _lift_page(target, form, status=400 if exc.field == "reason" else 403, error=exc)
    was = budgets.lift(
        unit().conn, rules, user_id=int(target.id), actor_id=int(current_user.id), now=now, reveals=reveals
    )
    # Reveal counters only when the employee revealed anything in their windows (most never do).
    spent = " ".join(f"{c.rule.name}={c.n}" for c in was if c.rule.counts == budgets.REQUEST or c.n)
    unit().record(
        Event.BUDGET_LIFTED, ok=True, resource=resource, detail=f"reason: {reason}; was {spent}"[:200]
    )
    flash(lifted_message(target.username, was))
    return redirect(url_for("operations.budgets"))


def lifted_message(username: str, was: list[budgets.Count]) -> str:
    """What the lift reset, named by kind: those that had a count in the current windows, the same
    that have a non-zero count in the audit detail (which lists the request counts always, zeros
    included, and the reveal counts only when not zero)."""
    kinds = [
        kind for kind in (budgets.REQUEST, budgets.REVEAL) if any(c.n for c in was if c.rule.counts == kind)
    ]
    if not kinds:  # another admin's lift came first, between the form and this one
        return f"Nothing was left to lift for {username}: their counts were already 0."
    what = " and ".join(kinds).capitalize() + (" budgets" if len(kinds) > 1 else " budget")
    return f"{what} of {username} lifted: the current windows count from 0 again."
