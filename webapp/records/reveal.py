"""Revealing one stored secret field (a card's number, name or expiry; an item's value).

Two requests. The form (GET) issues a one-time step-up token bound to the user and the exact field
(stepup.py) and, where the deployment uses one, a fresh keypad. The answer (POST) is checked in this
order, each refusal audited: the form's fields; the field is still revealable (not retired, re-checked
under the record's lock); the typed reason; the token, spent from then on whatever follows; the
password (and PIN) through the same check and lockout as the login, a lockout ending the session;
the reveal budget, counted in the shared database (webapp/budgets.py: every web node's reveals
together, exact under concurrency), which refuses without asking keyd; then keyd decrypts, and its
own per-node decrypt budget or an integrity failure is the last refusal.

The permission matrix has already passed (access.require_reveal) when either runs.
"""

from __future__ import annotations

from flask import abort, current_app, session
from flask.typing import ResponseReturnValue
from flask_login import current_user

from keyd.errors import IntegrityFailure, QuotaExceeded
from webapp import budgets
from webapp.auth.confirm import password_again
from webapp.auth.forms import LogoutForm
from webapp.auth.service import Entry, keypad_for
from webapp.events import Event
from webapp.records import service, stepup
from webapp.records.errors import Refused
from webapp.records.formatting import first_error, grouped, render, reveal_target
from webapp.records.forms import RevealForm
from webapp.refusals import page, refuse
from webapp.request import unit
from webapp.services import services

STEPUP_KEYPAD = "stepup_keypad"  # the session key of the reveal form's keypad layout


def _revealable_or_404(record_id: int, kind: str, obj_id: str, *, lock: bool = False) -> str | None:
    """None if the field may be revealed, else why not (a retired card or item, a retired record).

    Retired means no longer readable (docs/webapp.md, "Retirement"): only the masked form is shown.
    With `lock`, the record row is locked for the rest of the request: every retire locks it first
    (service.writable_record), so a retirement cannot land between this check and the decrypt.
    """
    conn = unit().conn
    record = service.get_record(conn, record_id, for_update=lock)
    row = service.get_object(conn, record_id, kind, obj_id)
    if record is None or row is None:
        abort(404)
    if record.retired_at is not None:
        return "the record is retired: its values can no longer be revealed"
    if row.retired_at is not None:
        return f"the {'card' if kind == 'card' else 'item'} is retired: it can no longer be revealed"
    return None


def show_form(record_id: int, kind: str, obj_id: str, field: str) -> ResponseReturnValue:
    cfg, target = current_app.config, reveal_target(kind, obj_id, field)
    if (retired := _revealable_or_404(record_id, kind, obj_id)) is not None:
        return refuse(Event.REVEAL_REFUSED, retired, status=403, resource=target)
    token = stepup.issue(
        unit().conn,
        user_id=int(current_user.id),
        target=target,
        now=services().clock.now(),
        ttl=cfg["STEPUP_TTL"],
    )
    mode = cfg["LOGIN_ENTRY"]
    pairs, layout = keypad_for(mode)
    if layout is not None:
        session[STEPUP_KEYPAD] = layout
    unit().record(Event.REVEAL_FORM, ok=True, resource=target)
    form = RevealForm()
    form.stepup.data = token
    return render(
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


def reveal(record_id: int, kind: str, obj_id: str, field: str) -> ResponseReturnValue:
    svc, uow, cfg = services(), unit(), current_app.config
    now, target = svc.clock.now(), reveal_target(kind, obj_id, field)
    layout = session.pop(STEPUP_KEYPAD, None)  # single use, whatever happens next
    form = RevealForm()
    if not form.validate():
        field_name, _message = first_error(form)
        return refuse(Event.REVEAL_REFUSED, f"{field_name}: missing or too long", resource=target)
    # Checked again here, whatever the form said: a step-up token issued before a retirement is
    # worth nothing after it.
    if (retired := _revealable_or_404(record_id, kind, obj_id, lock=True)) is not None:
        return refuse(Event.REVEAL_REFUSED, retired, status=403, resource=target)
    try:
        reason = stepup.check_reason(form.reason.data or "")
        # Spent from here on, whatever follows: every password attempt needs a fresh reveal form.
        stepup.consume(uow.conn, form.stepup.data or "", user_id=int(current_user.id), target=target, now=now)
    except Refused as exc:
        return refuse(Event.REVEAL_REFUSED, exc.reason, resource=target)
    entry = Entry(
        cfg["LOGIN_ENTRY"],
        typed=form.stepup_typed.data or None,
        clicked=form.keypad.data or "",
        layout=layout if isinstance(layout, dict) else None,
    )
    if not entry.complete:
        return refuse(Event.REVEAL_REFUSED, "password: required for every reveal", resource=target, keep=True)
    # A wrong password counts toward the lockout; the one that locks the account ends the session.
    checked = password_again(entry, failure_event=Event.STEPUP_FAILURE, lockout_reason="stepup_lockout")
    if checked.user is None:
        return refuse(
            Event.REVEAL_REFUSED,
            "password: incorrect, nothing was revealed",
            status=403,
            resource=target,
            keep=True,
        )
    # Counted before keyd is asked, in this transaction (its counter rows locked to the commit that
    # carries the reveal's audit record): the reveal over the budget never reaches keyd, whichever
    # web node it came to. keyd's own budget below stays the last line, per node.
    over = budgets.charge_reveal(
        uow.conn, budgets.reveal_rules(), user_id=int(current_user.id), now=svc.clock.now()
    )
    if over is not None:
        detail = f"web:{budgets.reveal_reason(over)} count={over.n} limit={over.rule.limit}"
        uow.record(Event.REVEAL_BUDGET_EXCEEDED, ok=False, resource=target, detail=detail)
        refused = page("quota_exceeded.html", status=429, user=current_user, logout=LogoutForm())
        refused.headers["Retry-After"] = budgets.retry_after(over, svc.clock.now())
        return refused
    try:
        plaintext = service.unchecked_decrypt(
            uow.conn,
            svc.vault,
            obj_id,
            field,
            actor=current_user.username,
            purpose=stepup.purpose(reason),
        )
    except QuotaExceeded as exc:
        uow.record(
            Event.REVEAL_BUDGET_EXCEEDED, ok=False, resource=target, detail=f"keyd:{exc.reason or '-'}"
        )
        return page("quota_exceeded.html", status=429, user=current_user, logout=LogoutForm())
    except IntegrityFailure:
        return refuse(
            Event.REVEAL_INTEGRITY_FAILED,
            "the stored value failed its integrity check; operators have been alerted",
            status=500,
            resource=target,
            keep=True,
        )
    detail = f"tag={stepup.reason_tag(reason)} reason={reason}"
    uow.record(Event.REVEALED, ok=True, resource=target, detail=detail[:200])
    value = plaintext.decode("utf-8")
    return render(
        "records/revealed.html",
        value=grouped(value) if field == "pan" else value,
        hide_after=cfg["REVEAL_HIDE_SECONDS"],
        record_id=record_id,
        what=f"{kind} {field}",
    )
