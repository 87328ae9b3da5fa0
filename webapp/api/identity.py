"""Who may use which door: service certificates on /api/v1 only, people's certificates never there.

`gate` runs before anything else reads the request's user (app.py registers it first):
- Under /api/ the caller must present a service certificate (OU=Services and the service policy,
  webapp/auth/certs.py) whose binding is active, unexpired and belongs to an active service account
  (a role in SERVICE_ROLES). The binding is read from the database on every request: disabling the
  account, or unbinding / revoking the certificate (`python -m ca revoke` unbinds it), stops the very
  next request. A request carrying the browser's session cookie is refused before anything else.
  What is refused raises a `Problem` (audited by the blueprint's handler, answered as problem+json).
- Everywhere else, a service certificate (or an ambiguous one) is refused with the refusal page,
  audited and alerted (auth.cert_refused): a machine never gets a login page or a session.

The service account is then Flask-Login's user of the request (`load_service_user`, the login
manager's request loader): the budgets count it, the matrix asks its role, the audit names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app, g, request
from flask.wrappers import Response

from webapp.api.problems import Problem
from webapp.auth.certs import AMBIGUOUS, SERVICE
from webapp.auth.service import User, active_binding
from webapp.clock import from_db
from webapp.db.tables import SERVICE_ROLES, cert_bindings, users
from webapp.events import Event
from webapp.refusals import refuse
from webapp.request import origin, unit
from webapp.services import services

API_PREFIX = "/api/"


def is_api_request() -> bool:
    return request.path.startswith(API_PREFIX)


@dataclass(frozen=True)
class ServiceIdentity:
    user_id: int
    username: str
    role: str
    fingerprint: str


def _why_not_bound(conn: sa.Connection, fingerprint: str) -> tuple[str, str | None]:
    """Why a service certificate has no usable binding: the problem type, and the account it names."""
    row = conn.execute(
        sa.select(cert_bindings.c.status, cert_bindings.c.not_after, users.c.username, users.c.active)
        .join(users, users.c.id == cert_bindings.c.user_id)
        .where(cert_bindings.c.fingerprint == fingerprint)
    ).first()
    if row is None:
        return "certificate-not-bound", None
    if row.status != "active":
        return "certificate-revoked", row.username
    if not row.active:
        return "account-disabled", row.username
    if from_db(row.not_after) <= services().clock.now():
        return "certificate-expired", row.username
    return "certificate-not-bound", row.username


def _api_identity() -> ServiceIdentity:
    if current_app.config["SESSION_COOKIE_NAME"] in request.cookies:
        raise Problem(
            "session-cookie-refused",
            "the API takes no cookies: send the request without the browser's session cookie",
            event=Event.INPUT_REFUSED,
        )
    who = origin()
    cert = who.cert
    if cert is None:
        if who.problem:  # a forged or malformed certificate header: raised as the browser's pages do
            unit().record(
                Event.CERT_HEADER_UNTRUSTED, ok=False, resource=request.path[:200], detail=who.problem
            )
        raise Problem("certificate-required", "present a service certificate", event=Event.CERT_REFUSED)
    conn = unit().conn
    binding = active_binding(conn, cert.fingerprint, now=services().clock.now())
    actor = binding.username if binding is not None else None
    if cert.kind != SERVICE:
        slug = "certificate-ambiguous" if cert.kind == AMBIGUOUS else "person-certificate"
        raise Problem(
            slug,
            "the API takes only a service certificate (python -m ca service NAME)",
            event=Event.CERT_REFUSED,
            actor=actor,
        )
    if binding is None:
        slug, named = _why_not_bound(conn, cert.fingerprint)
        raise Problem(slug, PROBLEM_DETAILS[slug], event=Event.CERT_REFUSED, actor=named)
    if binding.role not in SERVICE_ROLES:
        raise Problem(
            "not-a-service-account",
            "a service certificate must be bound to a service account",
            event=Event.CERT_REFUSED,
            actor=binding.username,
        )
    return ServiceIdentity(binding.user_id, binding.username, binding.role, cert.fingerprint)


PROBLEM_DETAILS = {
    "certificate-not-bound": "this certificate is bound to no service account: an administrator binds it",
    "certificate-revoked": "this certificate's binding was revoked or replaced",
    "account-disabled": "the service account is disabled",
    "certificate-expired": "the certificate has expired: the CA issues a new one",
}


def gate() -> Response | None:
    """The first hook of every request (see the module's docstring)."""
    if request.endpoint == "static" and not is_api_request():
        return None
    if is_api_request():
        identity = _api_identity()
        g.service_identity = identity
        unit().origin.actor = identity.username
        g.actor = identity.username
        return None
    cert = origin().cert
    if cert is not None and cert.kind in (SERVICE, AMBIGUOUS):
        what = "service" if cert.kind == SERVICE else "ambiguous"
        return refuse(
            Event.CERT_REFUSED,
            f"{what}_certificate_on_browser",
            status=403,
            message="A service certificate opens no page of this site: it is for the API alone.",
        )
    return None


def load_service_user(_request: object) -> User | None:
    """Flask-Login's request loader: the service account the gate let in, for this request only
    (no session is ever made for it)."""
    identity: ServiceIdentity | None = g.get("service_identity")
    if identity is None:
        return None
    return User(identity.user_id, identity.username, identity.role)


def service_identity() -> ServiceIdentity:
    found: ServiceIdentity = g.service_identity
    return found
