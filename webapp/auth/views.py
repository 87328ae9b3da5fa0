"""Login, logout and the home page."""

from __future__ import annotations

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required, login_user, logout_user

from webapp.auth import keypad
from webapp.auth.forms import LoginForm, LogoutForm
from webapp.auth.service import active_binding, attempt_login
from webapp.auth.sessions import ServerSession
from webapp.events import Event
from webapp.request import origin, unit
from webapp.services import services
from webapp.validation import accepts
from webapp.vault import require_open

bp = Blueprint("auth", __name__)
LOGIN_FAILED = "Login failed."


@bp.get("/")
@accepts()
@login_required
def home() -> ResponseReturnValue:
    status = require_open(services().vault)
    unit().record(Event.PAGE_VIEW, ok=True, resource="/")
    return render_template("home.html", user=current_user, vault=status, logout=LogoutForm())


@bp.route("/login", methods=["GET", "POST"])
@accepts(form=LoginForm)
def login() -> ResponseReturnValue:
    svc, uow, who = services(), unit(), origin()
    now = svc.clock.now()
    binding = active_binding(uow.conn, who.fingerprint, now=now)
    if binding is None:
        # Without a certificate bound to an active user the login page is not shown at all.
        detail = "no_certificate" if who.cert is None else "certificate_not_bound"
        uow.record(Event.CERT_REFUSED, ok=False, resource="/login", detail=detail)
        return render_template("no_certificate.html"), 403
    if current_user.is_authenticated:
        uow.record(Event.PAGE_VIEW, ok=True, resource="/login", detail="already_logged_in")
        return redirect(url_for("auth.home"))
    form = LoginForm()
    mode = current_app.config["LOGIN_ENTRY"]
    error = None
    if request.method == "POST":
        # The layout is single-use: whatever happens next, this page's tokens are dead.
        layout = session.pop("keypad", None)
        password, pin = _entered(form, mode, layout if isinstance(layout, dict) else None)
        user = None
        if password is None or (mode == "keypad-pin" and pin is None):
            uow.record(Event.LOGIN_FAILURE, ok=False, resource="/login", detail="incomplete_form")
        else:
            user = attempt_login(
                uow,
                svc.hasher,
                binding=binding,
                username=form.username.data or "",
                password=password,
                now=now,
                policy=svc.login_policy,
                pin=pin,
                require_pin=mode == "keypad-pin",
            )
        if not svc.hours.contains(now):
            uow.record(
                Event.LOGIN_OFF_HOURS,
                ok=user is not None,
                resource=f"user:{binding.user_id}",
                actor=binding.username,
            )
        if user is not None:
            # Crossing an authentication boundary: new session id, new CSRF token, nothing carried over.
            session.clear()
            if isinstance(session, ServerSession):
                session.rotate()
            g.pop("csrf_token", None)
            login_user(user)
            uow.origin.actor = user.username
            return redirect(url_for("auth.home"))
        error = LOGIN_FAILED
    else:
        uow.record(Event.LOGIN_PAGE, ok=True, resource="/login")
    pairs: list[tuple[str, str]] = []
    if mode != "keyboard":
        pairs, layout_map = keypad.new_layout(keypad.DIGITS if mode == "keypad-pin" else keypad.KEYS)
        session["keypad"] = layout_map
    form.password.data = None
    form.keypad.data = None
    return render_template(
        "login.html", form=form, mode=mode, keypad=pairs, error=error, username=binding.username
    )


def _entered(form: LoginForm, mode: str, layout: dict[str, str] | None) -> tuple[str | None, str | None]:
    """(password, PIN) as this deployment's entry mode says they must arrive; None where they did not.

    A secret sent the wrong way (typed where the keypad is required, or the reverse) counts as
    missing: a keylogger-resistant deployment must not quietly accept typed passwords.
    """
    if not form.validate():
        return None, None
    typed, clicked = form.password.data or None, form.keypad.data or ""
    if mode == "keyboard":
        return (typed, None) if not clicked else (None, None)
    decoded = keypad.decode(clicked, layout) if layout is not None else None
    if mode == "keypad":
        return (decoded, None) if typed is None else (None, None)
    return typed, decoded  # keypad-pin: password typed, PIN clicked


@bp.post("/logout")
@accepts(form=LogoutForm)
@login_required
def logout() -> ResponseReturnValue:
    unit().record(Event.LOGOUT, ok=True, resource=f"user:{current_user.id}")
    logout_user()
    if isinstance(session, ServerSession):
        session.end("logout")
    return redirect(url_for("auth.login"))
