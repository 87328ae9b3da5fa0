"""The one refusal page: every request the web app refuses with a page is answered here.

`refuse` audits the refusal in the request's unit of work and renders the page; `page` only renders,
for the failure paths (webapp/failures.py) whose unit of work is already rolled back and which
record in a fresh transaction of their own.
"""

from __future__ import annotations

from typing import Any

from flask import render_template, request
from flask.wrappers import Response

from webapp.events import Event
from webapp.request import unit


def page(template: str, *, status: int, **context: Any) -> Response:
    """The HTML page `template` with this status (also passed to the template)."""
    return Response(render_template(template, status=status, **context), status=status, mimetype="text/html")


def refuse(
    event: Event,
    reason: str,
    *,
    status: int = 400,
    message: str | None = None,
    resource: str | None = None,
    keep: bool = False,
    template: str = "error.html",
) -> Response:
    """Refuse the request: a failed `event` audit record whose detail is `reason`, and the error page.

    The page says "Refused: <reason>." unless `message` says something else to the employee; a reason
    names a rule, never a value. `resource` is the request's path unless the caller names a safer one
    (a route and a record rather than whatever the client typed into the path). What the request
    wrote is rolled back unless `keep`: a spent step-up token and a counted wrong password must stay
    spent and counted.
    """
    uow = unit()
    if not keep:
        uow.discard_writes()
    where = request.path if resource is None else resource
    uow.record(event, ok=False, resource=where[:200], detail=reason[:200])
    return page(template, status=status, message=f"Refused: {reason}." if message is None else message)
