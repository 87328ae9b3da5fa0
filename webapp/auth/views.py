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
from webapp.request import origin, services, unit
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
    use_keypad = current_app.config["LOGIN_ENTRY"] == "keypad"
    error = None
    if request.method == "POST":
        layout = session.pop("keypad", None)
        password: str | None = None
        if form.validate():
            if use_keypad and not form.password.data and isinstance(layout, dict):
                password = keypad.decode(form.keypad.data or "", layout)
            elif not use_keypad and not form.keypad.data:
                password = form.password.data or None
        user = None
        if password is None:
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
    if use_keypad:
        pairs, layout_map = keypad.new_layout()
        session["keypad"] = layout_map
    form.password.data = None
    form.keypad.data = None
    return render_template("login.html", form=form, keypad=pairs, error=error, username=binding.username)


@bp.post("/logout")
@accepts(form=LogoutForm)
@login_required
def logout() -> ResponseReturnValue:
    unit().record(Event.LOGOUT, ok=True, resource=f"user:{current_user.id}")
    logout_user()
    if isinstance(session, ServerSession):
        session.end("logout")
    return redirect(url_for("auth.login"))
