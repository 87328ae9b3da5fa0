"""An employee's own account: changing the password, the forced change after an admin's reset, and
the idle warning's "Stay logged in".

Changing the password (`account.password`): the current password goes through the login's own check
(`authenticate`, the deployment's entry mode, the lockout: a wrong one counts, and a lockout ends the
session), then the new password twice and the policy (passwords.check_policy: length, letters and
digits, not the username, guessability, not the current one nor one of the last `HISTORY`). The change
ends every other session of the user and rotates this one's id (keeping its age: the absolute timeout
still counts from the login).

How passwords are entered follows LOGIN_ENTRY:
- "keyboard": all typed;
- "keypad": all clicked on the page's one randomized keypad layout, the current one and the new one
  twice (a keylogger must not learn the password the keypad protects just because it was changed);
- "keypad-pin": passwords are typed in this mode (only the PIN is clicked), so the current password is
  typed with the PIN clicked, exactly as at login, and the new one is typed. The PIN is the admin's
  to set (`flask --app webapp users set-pin`).

The forced change (`account.forced`): a login with an admin's one-time password spends that password
at once (service.after_login) and marks the session; from then on every request of that session but
this page, logout, the idle warning's ping and static files is sent here (audited). It asks for the
new password twice only: the one-time password is spent already. Abandoning it leaves the account
with no working password until an admin resets it again.

Refusals are shown next to their field, audited as PASSWORD_CHANGE_REFUSED (not alerted: a typo is not
an attack); a password field is never filled back in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import current_user, login_required

from webapp.auth import keypad, passwords
from webapp.auth.confirm import password_again
from webapp.auth.forms import ChangePasswordForm, LogoutForm, NewPasswordForm
from webapp.auth.service import (
    KEYPAD,
    Entry,
    keypad_for,
    recent_hashes,
    set_password,
)
from webapp.auth.sessions import ServerSession, end_other_sessions
from webapp.auth.views import MUST_CHANGE, NOTICE
from webapp.events import Event
from webapp.refusals import page
from webapp.request import unit
from webapp.services import services
from webapp.validation import accepts

bp = Blueprint("account", __name__, url_prefix="/account")
KEYPAD_SESSION = "account_keypad"  # the session key of the password pages' keypad layout
# What a session that must change its password may still ask for.
FORCED_ALLOWED = frozenset({"account.forced", "account.still_here", "auth.logout", "static"})


@dataclass
class Problems:
    """Messages next to fields: current, new, again; `reasons` lists the policy's rules broken."""

    by_field: dict[str, str] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.by_field)

    @property
    def first(self) -> str | None:
        for name in ("current", "new", "again"):
            if name in self.by_field:
                return name
        return None


@bp.before_app_request
def _forced_change() -> ResponseReturnValue | None:
    """A session logged in with a one-time password reaches nothing but the change page."""
    if not session.get(MUST_CHANGE) or request.endpoint in FORCED_ALLOWED:
        return None
    if not current_user.is_authenticated:
        return None
    unit().record(Event.PASSWORD_CHANGE_REQUIRED, ok=False, resource=request.path[:200])
    return redirect(url_for("account.forced"))


def _keypad_page() -> dict[str, Any]:
    """This page's keypad (a fresh layout, kept in the session until the answer comes back)."""
    mode = current_app.config["LOGIN_ENTRY"]
    pairs, layout = keypad_for(mode)
    if layout is not None:
        session[KEYPAD_SESSION] = layout
    return {"mode": mode, "keypad": pairs, "max_length": passwords.MAX_LENGTH}


def _render(template: str, form: Any, problems: Problems, *, status: int, **extra: Any) -> Response:
    for name in (
        "current_password",
        "new_password",
        "new_password_again",
        "keypad",
        "new_keypad",
        "again_keypad",
    ):
        if hasattr(form, name):
            getattr(form, name).data = None  # never sent back
    html = render_template(
        template,
        user=current_user,
        logout=LogoutForm(),
        form=form,
        problems=problems,
        k=_keypad_page(),
        **extra,
    )
    return Response(html, status=status, mimetype="text/html")


def _refused(detail: str) -> None:
    unit().record(
        Event.PASSWORD_CHANGE_REFUSED, ok=False, resource=f"user:{current_user.id}", detail=detail[:200]
    )


def _new_passwords(
    form: NewPasswordForm, mode: str, layout: dict[str, str] | None
) -> tuple[str | None, str | None]:
    """The new password and its repetition as the entry mode requires them: clicked on the keypad in
    "keypad" mode, typed otherwise; sent the other way, they count as missing."""
    if mode == KEYPAD:
        if form.new_password.data or form.new_password_again.data or layout is None:
            return None, None
        return (
            keypad.decode(form.new_keypad.data or "", layout),
            keypad.decode(form.again_keypad.data or "", layout),
        )
    if form.new_keypad.data or form.again_keypad.data:
        return None, None
    return form.new_password.data or None, form.new_password_again.data or None


def _check_new(
    form: NewPasswordForm, mode: str, layout: dict[str, str] | None
) -> tuple[str | None, Problems]:
    """The new password if it may be stored, else the problems to show (already audited)."""
    problems = Problems()
    new, again = _new_passwords(form, mode, layout)
    if new is None:
        problems.by_field["new"] = "Enter a new password."
    if again is None:
        problems.by_field["again"] = "Enter the new password a second time."
    elif new is not None and new != again:
        problems.by_field["again"] = "The two new passwords are not the same."
    if problems:
        _refused("missing" if new is None or again is None else "mismatch")
        return None, problems
    assert new is not None  # noqa: S101 - checked just above
    result = passwords.check_policy(
        services().hasher,
        new,
        username=current_user.username,
        recent_hashes=recent_hashes(unit().conn, current_user.id),
        min_score=current_app.config["PASSWORD_MIN_SCORE"],
    )
    if not result.ok:
        problems.by_field["new"] = "The new password does not meet the password rules:"
        problems.reasons = result.reasons
        _refused("policy:" + ";".join(result.reasons))
        return None, problems
    return new, problems


def _store(new: str, *, how: str) -> int:
    """Store the new password, end the user's other sessions, rotate this one; the number ended."""
    svc, uow = services(), unit()
    now = svc.clock.now()
    set_password(uow, svc.hasher, current_user.id, new, now=now)
    sid = session.sid if isinstance(session, ServerSession) else None
    ended = end_other_sessions(uow.conn, current_user.id, sid, now=now, reason="password_changed")
    session.pop(MUST_CHANGE, None)
    if isinstance(session, ServerSession):
        session.rotate(keep_age=True)
    uow.record(
        Event.PASSWORD_CHANGED,
        ok=True,
        resource=f"user:{current_user.id}",
        detail=f"{how};other_sessions_ended={ended}",
    )
    return ended


def _others_ended(ended: int) -> str:
    others = {0: "You had no other sessions open.", 1: "Your other open session was ended."}
    return others.get(ended, f"Your {ended} other open sessions were ended.")


@bp.route("/password", methods=["GET", "POST"])
@accepts(form=ChangePasswordForm)
@login_required
def password() -> ResponseReturnValue:
    uow = unit()
    form = ChangePasswordForm()
    if request.method == "GET":
        uow.record(Event.PAGE_VIEW, ok=True, resource="/account/password")
        return _render(
            "account/password.html", form, Problems(), status=200, notice=session.pop(NOTICE, None)
        )
    mode = current_app.config["LOGIN_ENTRY"]
    raw_layout = session.pop(KEYPAD_SESSION, None)  # single use, whatever happens next
    layout = raw_layout if isinstance(raw_layout, dict) else None
    if not form.validate():  # every field is optional: only an overlong one fails here
        problems = Problems()
        for name in form.errors:
            where = {"current_password": "current", "keypad": "current", "new_keypad": "new"}.get(name)
            where = where or ("again" if "again" in name else "new")
            problems.by_field[where] = "This entry is far too long."
        _refused("too_long")
        return _render("account/password.html", form, problems, status=400)
    entry = Entry(
        mode, typed=form.current_password.data or None, clicked=form.keypad.data or "", layout=layout
    )
    if not entry.complete:
        _refused("current_password_missing")
        problems = Problems(
            {"current": "Enter your current password" + (" and PIN." if mode == "keypad-pin" else ".")}
        )
        return _render("account/password.html", form, problems, status=400)
    checked = password_again(
        entry, failure_event=Event.PASSWORD_CHANGE_REFUSED, lockout_reason="password_change_lockout"
    )
    if checked.user is None:
        if checked.locked:
            return page(
                "error.html",
                status=403,
                message="The current password was wrong too many times: your account is locked for now "
                "and you have been logged out. Nothing was changed.",
            )
        problems = Problems({"current": "The current password is not correct: nothing was changed."})
        return _render("account/password.html", form, problems, status=403)
    new, problems = _check_new(form, mode, layout)
    if new is None:
        return _render("account/password.html", form, problems, status=400)
    session[NOTICE] = "Your password was changed. " + _others_ended(_store(new, how="self_service"))
    return redirect(url_for("account.password"))


@bp.route("/new-password", methods=["GET", "POST"])
@accepts(form=NewPasswordForm)
@login_required
def forced() -> ResponseReturnValue:
    uow = unit()
    if not session.get(MUST_CHANGE):
        uow.record(Event.PAGE_VIEW, ok=True, resource="/account/new-password", detail="no_change_pending")
        return redirect(url_for("account.password"))
    form = NewPasswordForm()
    if request.method == "GET":
        uow.record(Event.PAGE_VIEW, ok=True, resource="/account/new-password")
        return _render("account/forced.html", form, Problems(), status=200, forced_change=True)
    raw_layout = session.pop(KEYPAD_SESSION, None)
    layout = raw_layout if isinstance(raw_layout, dict) else None
    if not form.validate():
        problems = Problems(
            {("again" if "again" in n else "new"): "This entry is far too long." for n in form.errors}
        )
        _refused("too_long")
        return _render("account/forced.html", form, problems, status=400, forced_change=True)
    new, problems = _check_new(form, current_app.config["LOGIN_ENTRY"], layout)
    if new is None:
        return _render("account/forced.html", form, problems, status=400, forced_change=True)
    ended = _store(new, how="forced_after_reset")
    session[NOTICE] = "Your new password is set: use it from now on. " + _others_ended(ended)
    return redirect(url_for("auth.home"))


@bp.get("/still-here")
@accepts()
@login_required
def still_here() -> ResponseReturnValue:
    """The idle warning's "Stay logged in": a request like any other, so it moves the idle timer
    exactly as a click would, and nothing else (the absolute timeout stands)."""
    unit().record(Event.PAGE_VIEW, ok=True, resource="/account/still-here", detail="stay_logged_in")
    return Response(status=204)
