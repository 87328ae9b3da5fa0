"""The admin console, its people part (role `admin`): users, certificate bindings, live sessions.

Every page: login, `require_role("admin")`, declared forms (`accepts`), CSRF, and an audit record for
each read and each change, allowed or refused. The changes run the same service functions as the
`flask --app webapp users|certs` commands (webapp/admin/service.py).

Every change on these pages asks for a reason and the admin's password again (webapp/auth/confirm.py),
the reason recorded in the change's audit detail: adding a user, enabling, unlocking, changing a role,
resetting a password and binding a certificate grant access; disabling, ending sessions and unbinding
take it away, and a stolen admin session must not be able to lock the staff out either. Reads ask for
nothing more than the session.

A form error (a typo) is shown next to its field with what was typed kept (never a password or a
private key), audited as FORM_INVALID and not alerted; hostile shapes (unknown parameters, a role that
is not one of the options) stay the validation guard's 400 INPUT_REFUSED.

One-time passwords: adding a user and resetting a password generate one (service.one_time_password),
stored with must_change_password set and shown on the response page only, once: never in a URL, a
redirect, a flash message, a log or an audit record.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from flask import Blueprint, abort, current_app, flash, redirect, render_template, session, url_for
from flask.typing import ResponseReturnValue
from flask.wrappers import Response
from flask_login import current_user, login_required

from webapp.admin import crl as crl_module
from webapp.admin import service
from webapp.admin.forms import ActionForm, AddUserForm, BindForm, RoleForm
from webapp.auth import confirm
from webapp.auth.certs import PEM_BEGIN, BadCertificate, CertInfo, der_from_folded_pem
from webapp.auth.confirm import ConfirmForm, Unconfirmed
from webapp.auth.roles import require_role
from webapp.auth.sessions import ServerSession, sid_hash
from webapp.clock import from_db
from webapp.db.tables import PERSON_ROLES, SERVICE_ROLES
from webapp.events import Event
from webapp.redact import contains_pan
from webapp.request import unit
from webapp.services import services
from webapp.validation import InputRefused, accepts

bp = Blueprint("admin", __name__, url_prefix="/admin")

_FINGERPRINT = re.compile(r"[0-9a-f]{64}")
_HANDLE = re.compile(rf"[0-9a-f]{{{service.HANDLE_LEN}}}")
_LONG_DIGITS = re.compile(r"\d(?:[ -]?\d){7,}")  # as confirm.py: a card or account number's shape


@dataclass(frozen=True)
class Action:
    heading: str  # "<heading> <username>"
    explain: str
    button: str
    done: str  # the success message, "{username}" and "{ended}" filled in


ACTIONS: dict[str, Action] = {
    "disable": Action(
        "Disable",
        "They can no longer log in, and every session of theirs ends now. Their certificate binding stays.",
        "Disable",
        "{username} is disabled; {ended} session(s) ended.",
    ),
    "enable": Action(
        "Enable",
        "They can log in again with their certificate and their password.",
        "Enable",
        "{username} is enabled again.",
    ),
    "unlock": Action(
        "Unlock",
        "Lifts the lockout after too many wrong passwords, before it runs out by itself. "
        "Find out first who typed them.",
        "Unlock",
        "{username} is unlocked.",
    ),
    "reset-password": Action(
        "Reset the password of",
        "A one-time password is generated and shown to you once, on the next page; their old password "
        "stops working, a lockout is cleared and their sessions end. Their first login with it must "
        "choose a new password, so you never know a working one.",
        "Reset the password",
        "",
    ),
    "end-sessions": Action(
        "End every session of",
        "They must log in again. Ending your own sessions keeps the one you are using.",
        "End their sessions",
        "{ended} session(s) of {username} ended.",
    ),
}
_ACTION_NAMES = "any(" + ", ".join(f"'{a}'" for a in ACTIONS) + ")"


@bp.url_value_preprocessor
def _ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """Ids that cannot be one are 404 before any view runs (and before they reach an audit row)."""
    if not values:
        return
    if "user_id" in values and not 0 < int(values["user_id"]) <= 2**31 - 1:
        abort(404)
    if "fingerprint" in values and not _FINGERPRINT.fullmatch(str(values["fingerprint"])):
        abort(404)
    if "handle" in values and not _HANDLE.fullmatch(str(values["handle"])):
        abort(404)


# --- helpers -----------------------------------------------------------------------------------


def _now() -> datetime:
    return services().clock.now()


def _ctx() -> service.AdminContext:
    svc = services()
    return service.AdminContext(
        uow=unit(), hasher=svc.hasher, now=svc.clock.now(), min_score=current_app.config["PASSWORD_MIN_SCORE"]
    )


def _page(template: str, *, status: int = 200, ask: bool = False, **context: Any) -> Response:
    """A console page; `ask`: it shows a confirmation (a fresh keypad layout where one is used)."""
    if ask:
        context["c"] = confirm.prompt()
    form = context.get("form")
    if isinstance(form, ConfirmForm):
        _scrub(form, *(name for name in ("username", "pem") if hasattr(form, name)))
    user = current_user._get_current_object()
    html = render_template(
        template, user=user, logout=True, roles=PERSON_ROLES, services=SERVICE_ROLES, **context
    )
    return Response(html, status=status, mimetype="text/html")


def _errors(form: ConfirmForm) -> dict[str, str]:
    """The form's field errors (field -> message), for the page; the CSRF token is the guard's."""
    form.validate()
    return {name: str(msgs[0]) for name, msgs in form.errors.items() if name != "csrf_token"}


def _form_invalid(errors: dict[str, str], resource: str) -> None:
    """A typo: audited, not alerted; the page shows each message next to its field."""
    unit().record(
        Event.FORM_INVALID, ok=False, resource=resource[:200], detail="fields:" + ",".join(sorted(errors))
    )


def _scrub(form: ConfirmForm, *fields: str) -> None:
    """Never write a card or account number back into a page: a field that holds one is emptied."""
    for name in ("reason", *fields):
        field = getattr(form, name)
        if isinstance(field.data, str) and (contains_pan(field.data) or _LONG_DIGITS.search(field.data)):
            field.data = ""


Show = Callable[[dict[str, str], int], Response]  # the form's page again, with errors, at a status


def _confirmed(form: ConfirmForm, resource: str, show: Show, errors: dict[str, str]) -> str | Response:
    """Every console change's first steps: the confirmed reason, or the answer to send instead.

    Typos (`errors`) come back on the form's page (400, audited as FORM_INVALID, not alerted); then the
    confirmation (auth/confirm.py): a refused one is already audited, and a wrong password counted and
    kept, so the page comes back with the message at its field; a confirmation that locked the account
    has ended the session, so the way out is the login page."""
    if errors:
        _form_invalid(errors, resource)
        return show(errors, 400)
    try:
        return confirm.confirm(form, resource=resource)
    except Unconfirmed as exc:
        if exc.locked:
            return redirect(url_for("auth.login"))  # type: ignore[return-value]
        return show({exc.field: exc.message}, 400 if exc.field == "reason" else 403)


def _role(form: AddUserForm | RoleForm) -> str:
    role = form.role.data
    if role not in PERSON_ROLES:  # a select's value outside its options is tampering, not a typo
        raise InputRefused("form: parameter 'role' is not one of the roles")
    return str(role)


def _own_sid() -> str | None:
    return session.sid if isinstance(session, ServerSession) else None


def _target(user_id: int) -> str:
    username = service.username_of(unit().conn, user_id)
    if username is None:
        abort(404)
    return username


def ago(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def when(value: datetime | None) -> str:
    return from_db(value).strftime("%Y-%m-%d %H:%M UTC") if value else "never"


@dataclass(frozen=True)
class FieldError:
    """What the confirmation macro (_confirm.html) shows next to a field: .field and .message."""

    field: str
    message: str


@bp.app_template_global("admin_confirm_error")
def _confirm_error(errors: dict[str, str]) -> FieldError | None:
    for name in ("reason", "confirm_typed", "keypad"):
        if name in errors:
            return FieldError("reason" if name == "reason" else "confirm_typed", errors[name])
    return None


@bp.app_template_global("admin_when")
def _when_global(value: datetime | None) -> str:
    return when(value)


def _crl() -> crl_module.CrlStatus:
    return crl_module.status(current_app.config.get("CA_CRL_FILE"), now=_now())


# --- users ---------------------------------------------------------------------------------------


@bp.get("/")
@accepts()
@login_required
@require_role("admin")
def index() -> ResponseReturnValue:
    unit().record(Event.PAGE_VIEW, ok=True, resource="/admin")
    return redirect(url_for("admin.users"))


@bp.get("/users")
@accepts()
@login_required
@require_role("admin")
def users() -> ResponseReturnValue:
    ctx = _ctx()
    rows = service.list_users(ctx)  # audited: USERS_LISTED
    bound = service.active_bindings(ctx.uow.conn)
    now, crl = ctx.now, _crl()
    people = []
    for r in rows:
        if not r.active:
            state = "disabled"
        elif r.locked_until is not None and from_db(r.locked_until) > now:
            state = f"locked until {when(r.locked_until)}"
        else:
            state = "active"
        certs = [(b, from_db(b.not_after) <= now, crl.revocation(b.serial)) for b in bound.get(r.id, [])]
        people.append((r, state, certs))
    return _page("admin/users.html", people=people, crl=crl, me=current_user.id)


@bp.get("/users/new")
@accepts()
@login_required
@require_role("admin")
def new_user() -> ResponseReturnValue:
    unit().record(Event.PAGE_VIEW, ok=True, resource="/admin/users/new")
    return _page("admin/users_new.html", form=AddUserForm(formdata=None), errors={}, ask=True)


@bp.post("/users/new")
@accepts(form=AddUserForm)
@login_required
@require_role("admin")
def add_user() -> ResponseReturnValue:
    form = AddUserForm()
    role = _role(form)
    username = (form.username.data or "").strip()
    resource = f"username:{username[:64]}"
    errors = _errors(form)
    if not errors:
        try:
            service.check_username(username)
        except service.AdminError as exc:
            errors["username"] = str(exc)
        else:
            if service.user_id_of(unit().conn, username) is not None:
                errors["username"] = f"{username} already exists: choose another name"
    reason = _confirmed(
        form,
        resource,
        lambda shown, status: _page("admin/users_new.html", status=status, form=form, errors=shown, ask=True),
        errors,
    )
    if isinstance(reason, Response):
        return reason
    ctx = _ctx()
    try:
        password = service.one_time_password(ctx, username)
        user_id = service.add_user(ctx, username, role, password, one_time=True, reason=reason)
    except service.AdminError as exc:
        unit().discard_writes()
        return _page("admin/users_new.html", status=409, form=form, errors={"username": str(exc)}, ask=True)
    # Shown here, once: not redirected to (a URL), not flashed (the session), not recorded.
    return _page(
        "admin/users_otp.html",
        username=username,
        user_id=user_id,
        password=password,
        added=True,
        role=role,
    )


@bp.get(f"/users/<int:user_id>/<{_ACTION_NAMES}:action>")
@accepts()
@login_required
@require_role("admin")
def user_action_form(user_id: int, action: str) -> ResponseReturnValue:
    username = _target(user_id)
    unit().record(Event.PAGE_VIEW, ok=True, resource=f"user:{user_id}", detail=f"confirm:{action}")
    return _action_page(user_id, username, action, ActionForm(formdata=None), {})


def _action_page(
    user_id: int, username: str, action: str, form: ConfirmForm, errors: dict[str, str], status: int = 200
) -> Response:
    return _page(
        "admin/users_action.html",
        status=status,
        user_id=user_id,
        username=username,
        action=action,
        what=ACTIONS[action],
        form=form,
        errors=errors,
        ask=True,
    )


@bp.post(f"/users/<int:user_id>/<{_ACTION_NAMES}:action>")
@accepts(form=ActionForm)
@login_required
@require_role("admin")
def user_action(user_id: int, action: str) -> ResponseReturnValue:
    username = _target(user_id)
    resource = f"user:{user_id}"
    form = ActionForm()
    reason = _confirmed(
        form,
        resource,
        lambda shown, status: _action_page(user_id, username, action, form, shown, status),
        _errors(form),
    )
    if isinstance(reason, Response):
        return reason
    ctx, me = _ctx(), current_user.username
    ended = 0
    try:
        if action == "reset-password":
            password = service.reset_password(ctx, username, reason=reason, actor=me)
            return _page(
                "admin/users_otp.html", username=username, user_id=user_id, password=password, added=False
            )
        if action in ("disable", "enable"):
            ended = service.set_active(ctx, username, active=action == "enable", reason=reason, actor=me)
        elif action == "unlock":
            service.unlock(ctx, username, reason=reason)
        else:
            own = _own_sid()
            keep = sid_hash(own) if own is not None and username == me else None
            ended = service.kill_sessions(ctx, username, reason=reason, keep_sid_hash=keep)
    except service.AdminError as exc:
        unit().discard_writes()  # its audit records stay
        return _action_page(user_id, username, action, form, {"action": str(exc)}, 409)
    flash(ACTIONS[action].done.format(username=username, ended=ended), "success")
    return redirect(url_for("admin.users"))


@bp.get("/users/<int:user_id>/role")
@accepts()
@login_required
@require_role("admin")
def role_form(user_id: int) -> ResponseReturnValue:
    username = _target(user_id)
    unit().record(Event.PAGE_VIEW, ok=True, resource=f"user:{user_id}", detail="confirm:role")
    return _role_page(user_id, username, RoleForm(formdata=None), {})


def _role_page(
    user_id: int, username: str, form: RoleForm, errors: dict[str, str], status: int = 200
) -> Response:
    current = service.role_of(unit().conn, user_id)
    if not form.role.data:
        form.role.data = current
    return _page(
        "admin/users_role.html",
        status=status,
        user_id=user_id,
        username=username,
        current=current,
        form=form,
        errors=errors,
        ask=True,
    )


@bp.post("/users/<int:user_id>/role")
@accepts(form=RoleForm)
@login_required
@require_role("admin")
def change_role(user_id: int) -> ResponseReturnValue:
    username = _target(user_id)
    resource = f"user:{user_id}"
    form = RoleForm()
    role = _role(form)
    reason = _confirmed(
        form,
        resource,
        lambda shown, status: _role_page(user_id, username, form, shown, status),
        _errors(form),
    )
    if isinstance(reason, Response):
        return reason
    try:
        ended = service.change_role(_ctx(), username, role, reason=reason, actor=current_user.username)
    except service.AdminError as exc:
        unit().discard_writes()
        return _role_page(user_id, username, form, {"role": str(exc)}, 409)
    flash(f"{username} is now {role}; {ended} session(s) ended.", "success")
    return redirect(url_for("admin.users"))


# --- certificates --------------------------------------------------------------------------------


def _cert_page(form: BindForm, errors: dict[str, str], status: int = 200) -> Response:
    ctx = _ctx()
    rows = service.list_certs(ctx)  # audited: CERTS_LISTED
    crl, now = _crl(), ctx.now
    bindings = [(b, from_db(b.not_after) <= now, crl.revocation(b.serial)) for b in rows]
    bound_users = {b.username for b in rows if b.status == "active"}
    unbound = [u.username for u in service.active_users(ctx.uow.conn) if u.username not in bound_users]
    return _page(
        "admin/certificates.html",
        status=status,
        bindings=bindings,
        crl=crl,
        unbound=unbound,
        form=form,
        errors=errors,
        ask=True,
    )


@bp.get("/certificates")
@accepts()
@login_required
@require_role("admin")
def certificates() -> ResponseReturnValue:
    return _cert_page(BindForm(formdata=None), {})


def _read_certificate(text: str, errors: dict[str, str]) -> CertInfo | None:
    """The pasted certificate, or None with the reason in errors["pem"]. A pasted private key is
    refused and never shown again (the caller clears the field)."""
    if "PRIVATE KEY" in text.upper():
        errors["pem"] = (
            "this is a private key, not a certificate: never paste a key anywhere. Paste the "
            "certificate only; if the key left its bundle, issue a new certificate."
        )
        return None
    if text.count("BEGIN") != 1 or not text.startswith(PEM_BEGIN):
        errors["pem"] = "paste exactly one certificate, from -----BEGIN CERTIFICATE----- to its END line"
        return None
    try:
        cert = CertInfo.from_der(der_from_folded_pem(text))
    except BadCertificate as exc:
        errors["pem"] = f"not a readable certificate ({exc})"
        return None
    parsed = x509.load_der_x509_certificate(cert.der)
    try:
        constraints = parsed.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    try:
        usages = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client = ExtendedKeyUsageOID.CLIENT_AUTH in usages
    except x509.ExtensionNotFound:
        client = False
    if is_ca or not client:
        errors["pem"] = "not an employee's client certificate (a CA or server certificate?)"
        return None
    if cert.not_after <= _now():
        errors["pem"] = f"this certificate expired on {cert.not_after:%Y-%m-%d}: issue a new one"
        return None
    crl = _crl()
    if crl.revocation(cert.serial) is crl_module.Revocation.REVOKED:
        errors["pem"] = "the CRL lists this certificate as revoked: issue a new one"
        return None
    if crl.ok and parsed.issuer.rfc4514_string() not in crl.issuers():
        errors["pem"] = "not issued by our CA (its issuer signs none of the CRLs Apache uses)"
        return None
    return cert


@bp.post("/certificates")
@accepts(form=BindForm)
@login_required
@require_role("admin")
def bind() -> ResponseReturnValue:
    form = BindForm()
    username = (form.username.data or "").strip()
    errors = _errors(form)
    cert = None
    if not errors:
        if service.user_id_of(unit().conn, username) is None:
            errors["username"] = "no such user: add the user first (Users, Add a user)"
        cert = _read_certificate((form.pem.data or "").strip(), errors)
    if "pem" in errors and "PRIVATE KEY" in (form.pem.data or "").upper():
        form.pem.data = ""  # a key is never written back into a page
    resource = f"cert:{cert.fingerprint}" if cert else f"username:{username[:64]}"
    reason = _confirmed(form, resource, lambda shown, status: _cert_page(form, shown, status), errors)
    if isinstance(reason, Response):
        return reason
    if cert is None:  # not reached: _read_certificate says why in errors whenever it reads none
        abort(400)
    try:
        service.bind_cert(_ctx(), username, cert, reason=reason)
    except service.AdminError as exc:
        unit().discard_writes()
        return _cert_page(form, {"pem": str(exc)}, 409)
    flash(
        f"Certificate {cert.fingerprint[:16]}… (serial {cert.serial}) is bound to {username}; "
        "a previous binding of theirs, if any, ended with its sessions.",
        "success",
    )
    return redirect(url_for("admin.certificates"))


def _binding_or_404(fingerprint: str) -> Any:
    row = service.binding(unit().conn, fingerprint)
    if row is None or row.status != "active":
        abort(404)
    return row


def _unbind_page(row: Any, form: ActionForm, errors: dict[str, str], status: int = 200) -> Response:
    return _page(
        "admin/certificates_unbind.html",
        status=status,
        b=row,
        revocation=_crl().revocation(row.serial),
        form=form,
        errors=errors,
        ask=True,
    )


@bp.get("/certificates/<fingerprint>/unbind")
@accepts()
@login_required
@require_role("admin")
def unbind_form(fingerprint: str) -> ResponseReturnValue:
    row = _binding_or_404(fingerprint)
    unit().record(Event.PAGE_VIEW, ok=True, resource=f"cert:{fingerprint}", detail="confirm:unbind")
    return _unbind_page(row, ActionForm(formdata=None), {})


@bp.post("/certificates/<fingerprint>/unbind")
@accepts(form=ActionForm)
@login_required
@require_role("admin")
def unbind(fingerprint: str) -> ResponseReturnValue:
    row = _binding_or_404(fingerprint)
    resource = f"cert:{fingerprint}"
    form = ActionForm()
    if row.username == current_user.username:
        # Unbinding the certificate this very session runs on would end the request's own session
        # (and so undo the request); another admin does it, or the CA tool (python -m ca revoke).
        service.refused(_ctx(), resource, "own_certificate")
        msg = "that is your own certificate: another admin must unbind it"
        return _unbind_page(row, form, {"action": msg}, 409)
    reason = _confirmed(
        form, resource, lambda shown, status: _unbind_page(row, form, shown, status), _errors(form)
    )
    if isinstance(reason, Response):
        return reason
    try:
        ended = service.unbind_cert(_ctx(), fingerprint, reason)
    except service.AdminError as exc:
        unit().discard_writes()
        return _unbind_page(row, form, {"action": str(exc)}, 409)
    flash(f"Certificate of {row.username} unbound; {ended} session(s) ended.", "success")
    return redirect(url_for("admin.certificates"))


# --- sessions ------------------------------------------------------------------------------------


def _live(now: datetime) -> list[Any]:
    cfg = current_app.config
    return service.live_sessions(
        unit().conn,
        idle_after=now - timedelta(seconds=cfg["SESSION_IDLE_TIMEOUT"]),
        born_after=now - timedelta(seconds=cfg["SESSION_ABSOLUTE_TIMEOUT"]),
    )


@bp.get("/sessions")
@accepts()
@login_required
@require_role("admin")
def sessions() -> ResponseReturnValue:
    now = _now()
    own = _own_sid()
    mine = sid_hash(own) if own else None
    rows = [
        (
            r,
            service.session_handle(r.id_hash),
            ago(now - from_db(r.created_at)),
            ago(now - from_db(r.last_seen_at)),
            r.id_hash == mine,
        )
        for r in _live(now)
    ]
    unit().record(Event.PAGE_VIEW, ok=True, resource="/admin/sessions", detail=f"live={len(rows)}")
    return _page("admin/sessions.html", rows=rows)


def _session_or_404(handle: str) -> Any:
    found = next((r for r in _live(_now()) if service.session_handle(r.id_hash) == handle), None)
    if found is None:
        abort(404)
    return found


def _end_page(row: Any, handle: str, form: ActionForm, errors: dict[str, str], status: int = 200) -> Response:
    now = _now()
    return _page(
        "admin/sessions_end.html",
        status=status,
        s=row,
        handle=handle,
        since=ago(now - from_db(row.created_at)),
        idle=ago(now - from_db(row.last_seen_at)),
        form=form,
        errors=errors,
        ask=True,
    )


@bp.get("/sessions/<handle>/end")
@accepts()
@login_required
@require_role("admin")
def end_session_form(handle: str) -> ResponseReturnValue:
    row = _session_or_404(handle)
    unit().record(Event.PAGE_VIEW, ok=True, resource=f"session:{handle}", detail="confirm:end")
    return _end_page(row, handle, ActionForm(formdata=None), {})


@bp.post("/sessions/<handle>/end")
@accepts(form=ActionForm)
@login_required
@require_role("admin")
def end_session(handle: str) -> ResponseReturnValue:
    row = _session_or_404(handle)
    resource = f"session:{handle}"
    form = ActionForm()
    reason = _confirmed(
        form, resource, lambda shown, status: _end_page(row, handle, form, shown, status), _errors(form)
    )
    if isinstance(reason, Response):
        return reason
    try:
        username = service.end_session(_ctx(), handle, reason=reason, current=_own_sid())
    except service.AdminError as exc:
        unit().discard_writes()
        return _end_page(row, handle, form, {"action": str(exc)}, 409)
    flash(f"The session {handle} of {username} ended.", "success")
    return redirect(url_for("admin.sessions"))
