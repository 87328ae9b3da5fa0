"""The one refusal page: every request the web app refuses with a page is answered here.

`refuse` audits the refusal in the request's unit of work and renders the page; `page` only renders,
for the failure paths (webapp/failures.py) whose unit of work is already rolled back and which
record in a fresh transaction of their own.

Every refusal page says what happened in its heading and has a way back (`back_link`): to the page
the user came from when that is a page of this app, else home. The link is never the Referer as sent:
only the path of one of our own GET routes (no host, no query string, ASCII, no card number in any
spelling, no run of digits as long as a card number) is ever written into the page.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from flask import current_app, render_template, request, url_for
from flask.wrappers import Response
from werkzeug.exceptions import HTTPException

from webapp.events import Event
from webapp.redact import PAN_MIN, contains_pan
from webapp.request import unit

# What a refusal page's heading says when its caller says nothing more specific.
HEADINGS = {
    400: "Request refused",
    403: "Not allowed",
    404: "Page not found",
    405: "Request refused",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}
PATH_MAX = 200
_SAFE_PATH = re.compile(r"/[A-Za-z0-9/_.-]*")
# A run of digits a card number could hide in, Luhn or not. Ids of ours never hold one: record ids fit
# in 10 digits, and a card's or item's 32-hex id holds runs of up to 12 (records.service.new_id).
_LONG_NUMBER = re.compile(rf"[0-9]{{{PAN_MIN},}}")
# Paths answered in another format than HTML (the JSON API's problem+json, webapp/api/): a URL prefix
# -> a function of (template=, status=, heading=, **context) returning the response, in app.extensions.
RENDERERS = "strongroom.refusal_renderers"


@dataclass(frozen=True)
class Back:
    url: str
    label: str


def _page_of_ours(path: str) -> bool:
    """A path (no query) that one of our GET routes answers, which carries nothing but ids."""
    if len(path) > PATH_MAX or not _SAFE_PATH.fullmatch(path) or "//" in path:
        return False
    if _LONG_NUMBER.search(path) or contains_pan(path):
        return False
    try:
        endpoint, _args = current_app.create_url_adapter(request).match(path, method="GET")  # type: ignore[union-attr]
    except HTTPException:  # no such page, not a GET page, or a redirect (a path we do not write)
        return False
    return endpoint not in ("static", "auth.logout")


def _referer_path() -> str | None:
    """The path of the Referer when it is this site (the app sends Referrer-Policy: no-referrer, so
    browsers rarely send one; a client that does gets its path checked like any other)."""
    raw = request.headers.get("Referer", "")
    if not raw or len(raw) > 2 * PATH_MAX:
        return None
    try:
        parts = urllib.parse.urlsplit(raw)
    except ValueError:
        return None
    if (parts.scheme or parts.netloc) and (parts.scheme, parts.netloc) != (request.scheme, request.host):
        return None
    return parts.path or None


def _parents(path: str) -> list[str]:
    """The pages above a path: /records/5/cards/ab/edit -> /records/5/cards/ab, /records/5/cards, ..."""
    segments = path.strip("/").split("/")
    found: list[str] = []
    for n in range(len(segments) - 1, 0, -1):
        above = "/" + "/".join(segments[:n])
        found += [above, above + "/"]
    return found


def back_link() -> Back:
    """Where the refusal page's "Back" goes: the page the user came from (its Referer, else the page
    a refused form was sent from: the same path for a POST, else the nearest page above), when it is
    a page of ours; otherwise home. Never the refused GET itself (it would refuse again)."""
    here = request.path
    candidates = [_referer_path(), *([here] if request.method == "POST" else []), *_parents(here)]
    for path in candidates:
        if path and not (request.method != "POST" and path == here) and _page_of_ours(path):
            return Back(request.script_root + path, "Back to the previous page")
    return Back(url_for("auth.home"), "Back to the home page")


def page(template: str, *, status: int, heading: str | None = None, **context: Any) -> Response:
    """The HTML page `template` with this status (also passed to the template), a heading that says
    what happened and a way back."""
    for prefix, render in current_app.extensions.get(RENDERERS, {}).items():
        if request.path.startswith(prefix):
            rendered: Response = render(template=template, status=status, heading=heading, **context)
            return rendered
    body = render_template(
        template,
        status=status,
        heading=heading or HEADINGS.get(status, "Request refused"),
        back=back_link(),
        **context,
    )
    return Response(body, status=status, mimetype="text/html")


def refuse(
    event: Event,
    reason: str,
    *,
    status: int = 400,
    message: str | None = None,
    resource: str | None = None,
    keep: bool = False,
    template: str = "error.html",
    heading: str | None = None,
) -> Response:
    """Refuse the request: a failed `event` audit record whose detail is `reason`, and the error page.

    The page says "Refused: <reason>." unless `message` says something else to the employee; a reason
    names a rule, never a value. `heading` says what happened (by default from the status).
    `resource` is the request's path unless the caller names a safer one (a route and a record rather
    than whatever the client typed into the path). What the request wrote is rolled back unless
    `keep`: a spent step-up token and a counted wrong password must stay spent and counted.
    """
    uow = unit()
    if not keep:
        uow.discard_writes()
    where = request.path if resource is None else resource
    uow.record(event, ok=False, resource=where[:200], detail=reason[:200])
    return page(
        template,
        status=status,
        heading=heading,
        message=f"Refused: {reason}." if message is None else message,
        event=event,
    )
