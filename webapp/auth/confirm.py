"""Confirming a change that grants access or destroys something (the admin console's changes): the
user's password again, through the login's own check (entry mode, lockout: a wrong password counts
and can lock the account, which then ends the session), and a reason, both audited.

Use: a change's form subclasses `ConfirmForm`; the page that shows it passes `prompt()` to the template
(the `_confirm.html` macro draws the fields); the view that receives it calls `confirm(form, ...)`
FIRST, before it changes anything. `Unconfirmed` means: nothing may change. Its audit record (and a
counted wrong password) is already written and must be kept: show the form again with the message
next to its field; do not roll the request back.

The reason rules are the reveal's too (records/stepup.py): a reason lands in the audit log, so it
must never carry a card or account number.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from flask import abort, current_app, session
from flask_login import current_user, logout_user
from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import Length, Optional

from webapp.auth.forms import KEYPAD_MAX
from webapp.auth.passwords import MAX_LENGTH
from webapp.auth.service import Checked, Entry, active_binding, authenticate, keypad_for
from webapp.auth.sessions import ServerSession
from webapp.events import Event
from webapp.redact import PAN_REFUSAL, contains_pan
from webapp.request import origin, unit
from webapp.services import services

REASON_MIN, REASON_MAX = 10, 140
# Above REASON_MAX, so an overlong reason reaches the rule and gets its specific message.
REASON_FIELD_MAX = 400
KEYPAD_SESSION = "confirm_keypad"  # the session key of the confirmation's keypad layout
_DIGITS = re.compile(r"\d(?:[ -]?\d){7,}")  # 8+ digits: a PAN fragment, an account number...


class BadReason(ValueError):
    """The reason breaks a rule; the message names the rule, never the value."""


def check_reason(raw: str) -> str:
    """The reason as it will be recorded (trimmed, NFC), or BadReason."""
    reason = unicodedata.normalize("NFC", raw.strip())
    if len(reason) < REASON_MIN:
        raise BadReason(f"at least {REASON_MIN} characters")
    if len(reason) > REASON_MAX:
        raise BadReason(f"at most {REASON_MAX} characters")
    if contains_pan(reason):
        raise BadReason(PAN_REFUSAL)
    if any(unicodedata.category(c).startswith("C") for c in reason):
        raise BadReason("control or invisible characters")
    if _DIGITS.search(reason):
        raise BadReason("must not contain long digit runs (card or account numbers)")
    return reason


class ConfirmForm(FlaskForm):
    """The confirmation fields; a change's own form subclasses this and adds its fields."""

    reason = StringField("Reason", validators=[Optional(), Length(max=REASON_FIELD_MAX)])
    # Not named "password": password managers fill fields by name as well as by type, and the
    # confirmation must be typed by the person at the keyboard (the macro sets autocomplete="off").
    confirm_typed = PasswordField("Your password", validators=[Optional(), Length(max=MAX_LENGTH)])
    keypad = StringField("Keypad", validators=[Optional(), Length(max=KEYPAD_MAX)])

    def kept_reason(self) -> str:
        """The reason as typed, to show again next to an error; never a card or account number."""
        typed = self.reason.data or ""
        return "" if contains_pan(typed) or _DIGITS.search(typed) else typed


class Unconfirmed(Exception):
    """Not confirmed: `field` ("reason" or "confirm_typed") and a message for the page; nothing may change."""

    def __init__(self, field: str, message: str, *, locked: bool = False) -> None:
        super().__init__(message)
        self.field, self.message, self.locked = field, message, locked


def prompt() -> dict[str, Any]:
    """What the `_confirm.html` macro needs for a page showing a confirmation (a fresh keypad layout
    where the deployment uses one, kept in the session until the answer comes back)."""
    mode = current_app.config["LOGIN_ENTRY"]
    pairs, layout = keypad_for(mode)
    if layout is not None:
        session[KEYPAD_SESSION] = layout
    return {"mode": mode, "keypad": pairs, "reason_max": REASON_MAX}


def password_again(entry: Entry, *, failure_event: Event, lockout_reason: str) -> Checked:
    """The logged-in user's password (and PIN) once more, for a request already authenticated (a
    reveal, a confirmed change, a password change): the login's own check, entry mode and lockout. A
    wrong one counts; the attempt that locks the account also ends this session (fail closed), and
    `lockout_reason` is what the session records. `entry` must be complete (the caller says why not)."""
    svc, uow = services(), unit()
    now = svc.clock.now()
    binding = active_binding(uow.conn, origin().fingerprint, now=now)
    if binding is None:
        abort(403)
    checked = authenticate(
        uow,
        svc.hasher,
        binding=binding,
        username=current_user.username,
        entry=entry,
        now=now,
        policy=svc.login_policy,
        success_event=Event.STEPUP_SUCCESS,
        failure_event=failure_event,
    )
    if checked.user is None and checked.locked:
        logout_user()
        if isinstance(session, ServerSession):
            session.end(lockout_reason)
    return checked


def confirm(form: ConfirmForm, *, resource: str) -> str:
    """Check the reason and the password; the checked reason, or Unconfirmed (already audited)."""
    uow = unit()
    layout = session.pop(KEYPAD_SESSION, None)  # single use, whatever happens next
    try:
        reason = check_reason(form.reason.data or "")
    except BadReason as exc:
        uow.record(Event.CONFIRM_REFUSED, ok=False, resource=resource[:200], detail=f"reason:{exc}"[:200])
        raise Unconfirmed("reason", f"Reason: {exc}.") from None
    entry = Entry(
        current_app.config["LOGIN_ENTRY"],
        typed=form.confirm_typed.data or None,
        clicked=form.keypad.data or "",
        layout=layout if isinstance(layout, dict) else None,
    )
    if not entry.complete:
        uow.record(Event.CONFIRM_REFUSED, ok=False, resource=resource[:200], detail="password_missing")
        raise Unconfirmed("confirm_typed", "Your password is required to confirm this change.")
    checked = password_again(entry, failure_event=Event.STEPUP_FAILURE, lockout_reason="stepup_lockout")
    if checked.user is None:
        raise Unconfirmed(
            "confirm_typed", "The password is incorrect: nothing was changed.", locked=checked.locked
        )
    return reason
