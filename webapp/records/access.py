"""Who may call which records route: decorators that ask the permission matrix (permissions.py)
before the view runs. A refusal is 403 with an `access.denied` audit record naming the matrix cell,
and nothing the request wrote is kept."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import abort, current_app, request
from flask.sansio.app import App
from flask.wrappers import Response
from flask_login import current_user

from webapp.events import Event
from webapp.records import permissions
from webapp.records.permissions import ITEM_CLASS, SECRET_FIELDS, Act, FieldClass, Matrix
from webapp.refusals import refuse

MATRIX = "strongroom.records.matrix"
View = Callable[..., Any]


def load_matrix(app: App) -> None:
    """The configured matrix, checked when the app starts: a bad one stops the start (ConfigError)."""
    app.extensions[MATRIX] = permissions.load(app.config["RECORDS_PERMISSIONS"])


def matrix() -> Matrix:
    found: Matrix = current_app.extensions[MATRIX]
    return found


def may(field_class: FieldClass, action: Act) -> bool:
    return matrix().allows(current_user.role, field_class, action)


def can() -> Callable[[str, str], bool]:
    """The current user's `can('bank', 'reveal')` for templates: the UI offers what the server allows."""
    check: Callable[[str, str], bool] = matrix().can(current_user.role)
    return check


def _denied(field_class: FieldClass, action: Act) -> Response:
    # The route's name and record, not the raw path: a path segment is whatever the client typed
    # (a PAN typed into an id would otherwise land in the audit log).
    record_id = (request.view_args or {}).get("record_id")
    resource = f"{request.endpoint}:{record_id}" if record_id is not None else str(request.endpoint)
    return refuse(
        Event.ACCESS_DENIED,
        f"matrix:{field_class}:{action}",
        status=403,
        message="You are not allowed to do this.",
        resource=resource,
    )


def _checked(view: View, field_class_of: Callable[[dict[str, Any]], FieldClass], action: Act) -> View:
    @wraps(view)
    def checked(*args: Any, **kwargs: Any) -> Any:
        field_class = field_class_of(kwargs)
        if not may(field_class, action):
            return _denied(field_class, action)
        return view(*args, **kwargs)

    return checked


def require(field_class: FieldClass, action: Act) -> Callable[[View], View]:
    return lambda view: _checked(view, lambda _kwargs: field_class, action)


def require_item(action: Act) -> Callable[[View], View]:
    """As `require`, with the field class taken from the item kind in the URL, before any lookup."""
    return lambda view: _checked(view, lambda kwargs: ITEM_CLASS[kwargs["kind"]], action)


def _secret_class(kwargs: dict[str, Any]) -> FieldClass:
    field_class = SECRET_FIELDS.get((kwargs["kind"], kwargs["field"]))
    if field_class is None:
        abort(404)
    return field_class


def require_reveal(view: View) -> View:
    """The matrix cell of the field in the URL; a (kind, field) pair that names no secret is 404."""
    return _checked(view, _secret_class, Act.REVEAL)
