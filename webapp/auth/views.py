"""Login, logout and the home page."""

from __future__ import annotations

from flask import Blueprint, current_app, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_login import current_user, login_required, login_user, logout_user

from webapp import navigation
from webapp.auth.forms import LoginForm, LogoutForm
from webapp.auth.service import Entry, active_binding, after_login, authenticate, keypad_for
from webapp.auth.sessions import ServerSession
from webapp.db.tables import SERVICE_ROLES
from webapp.events import Event
from webapp.refusals import refuse
from webapp.request import origin, unit
from webapp.services import services
from webapp.validation import accepts
from webapp.vault import require_open

bp = Blueprint("auth", __name__)
LOGIN_FAILED = "Login failed."
# Session keys: this session must choose a new password (a one-time password was used to log in);
# the login before this one (shown on the home page, so an employee notices a login that was not
# theirs); a message for the next page.
MUST_CHANGE = "must_change_password"
PREVIOUS_LOGIN = "previous_login"
NOTICE = "notice"

# What each role is for, said on its home page; the pages themselves come from navigation.LINKS.
ROLE_SUMMARIES = {
    "clerk": "As a clerk you look up, add and retire customer records and their cards, which you see "
    "masked, and keep their bank, identity and note items.",
    "supervisor": "As a supervisor you do what a clerk does and may also reveal a full card number or "
    "a secret item when a case needs it (each reveal asks for your password and a reason); you also "
    "read the audit log and each employee's activity.",
    "auditor": "As an auditor you read the audit log and each employee's activity, and export the log "
    "for review. You see no customer data.",
    "admin": "As an administrator you manage users, their certificates and sessions, the alerts and "
    "the request budgets. You see no customer data.",
}
PAGE_SUMMARIES = {
    "records.index": "Find a customer record by its reference, and add or retire records and cards.",
    "admin.users": "Add users, disable or unlock them, change roles and reset passwords.",
    "admin.certificates": "Bind or unbind a user's client certificate, and see what the CRL says.",
    "admin.sessions": "Who is logged in, from where and since when; end a session.",
    "operations.alerts": "The alert outbox, the mailer's last delivery, and a test alert.",
    "operations.budgets": "Each employee's request budget, the key versions, and keyd's state.",
    "audit.index": "The audit log, filtered by user, event, outcome and time.",
    "audit.activity": "What one employee did, page by page.",
    "account.password": "Change your own password.",
}


@bp.get("/")
@accepts()
@login_required
def home() -> ResponseReturnValue:
    status = require_open(services().vault)
    unit().record(Event.PAGE_VIEW, ok=True, resource="/")
    role = current_user.role
    pages = [
        (label, url_for(endpoint), PAGE_SUMMARIES.get(endpoint, ""))
        for label, endpoint, roles in navigation.LINKS
        if role in roles and endpoint in current_app.view_functions and endpoint != "auth.home"
    ]
    previous = session.get(PREVIOUS_LOGIN)
    return render_template(
        "home.html",
        user=current_user,
        vault=status,
        logout=LogoutForm(),
        summary=ROLE_SUMMARIES.get(role, ""),
        pages=pages,
        previous=previous if isinstance(previous, dict) else None,
        notice=session.pop(NOTICE, None),
    )


@bp.route("/login", methods=["GET", "POST"])
@accepts(form=LoginForm)
def login() -> ResponseReturnValue:
    svc, uow, who = services(), unit(), origin()
    now = svc.clock.now()
    binding = active_binding(uow.conn, who.fingerprint, now=now)
    if binding is None or binding.role in SERVICE_ROLES:
        # Without a certificate bound to an active user the login page is not shown at all; nor to a
        # service account (webapp/api/identity.py refuses service certificates before this runs).
        detail = "no_certificate" if who.cert is None else "certificate_not_bound"
        if binding is not None:
            detail = "service_account_on_browser"
        return refuse(
            Event.CERT_REFUSED,
            detail,
            status=403,
            resource="/login",
            keep=True,
            template="no_certificate.html",
        )
    if current_user.is_authenticated:
        uow.record(Event.PAGE_VIEW, ok=True, resource="/login", detail="already_logged_in")
        return redirect(url_for("auth.home"))
    form = LoginForm()
    mode = current_app.config["LOGIN_ENTRY"]
    error = None
    if request.method == "POST":
        # The layout is single-use: whatever happens next, this page's tokens are dead.
        layout = session.pop("keypad", None)
        valid = form.validate()  # an invalid form is an incomplete entry: nothing is checked
        entry = Entry(
            mode,
            typed=(form.password.data or None) if valid else None,
            clicked=(form.keypad.data or "") if valid else "",
            layout=layout if isinstance(layout, dict) else None,
        )
        checked = authenticate(
            uow,
            svc.hasher,
            binding=binding,
            username=form.username.data or "",
            entry=entry,
            now=now,
            policy=svc.login_policy,
        )
        if checked.incomplete:
            uow.record(Event.LOGIN_FAILURE, ok=False, resource="/login", detail="incomplete_form")
        user = checked.user
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
            logged_in = after_login(uow, user, now=now, ip=who.ip)
            if logged_in.previous_at is not None:
                session[PREVIOUS_LOGIN] = {
                    "at": logged_in.previous_at.strftime("%Y-%m-%d %H:%M UTC"),
                    "ip": logged_in.previous_ip or "-",
                }
            if logged_in.must_change:
                # The one-time password is spent; this session may do nothing but choose a new one.
                session[MUST_CHANGE] = True
                return redirect(url_for("account.forced"))
            return redirect(url_for("auth.home"))
        error = LOGIN_FAILED
    else:
        uow.record(Event.LOGIN_PAGE, ok=True, resource="/login")
    pairs, layout_map = keypad_for(mode)
    if layout_map is not None:
        session["keypad"] = layout_map
    form.password.data = None
    form.keypad.data = None
    return render_template(
        "login.html", form=form, mode=mode, keypad=pairs, error=error, username=binding.username
    )


@bp.post("/logout")
@accepts(form=LogoutForm)
@login_required
def logout() -> ResponseReturnValue:
    unit().record(Event.LOGOUT, ok=True, resource=f"user:{current_user.id}")
    logout_user()
    if isinstance(session, ServerSession):
        session.end("logout")
    return redirect(url_for("auth.login"))
