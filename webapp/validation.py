"""Every GET and POST parameter goes through a declared form: anything else is refused with 400.

A view declares what it accepts with `@accepts(query=SomeForm, form=OtherForm)`; the guard runs
before CSRF and before the view and refuses: unknown or repeated parameters, too many, oversized
values, bytes that are not UTF-8, control characters, bodies on GET, and any content type but
urlencoded (so: no file uploads). The refusal names the parameter and the rule, never the value.
The JSON API's views (webapp/api/) declare a JSON body instead (`@json_body`): the same query and
GET rules, and for POST application/json alone, parsed strictly (webapp/api/body.py).
"""

from __future__ import annotations

import unicodedata
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app, request
from werkzeug.exceptions import BadRequest
from wtforms import Form
from wtforms.fields.core import UnboundField

F = TypeVar("F", bound=Callable[..., Any])
CSRF_FIELD = "csrf_token"


class InputRefused(BadRequest):
    def __init__(self, reason: str, *, problem: str | None = None) -> None:
        super().__init__(description=reason)
        self.reason = reason
        # The JSON API's problem type for this refusal (webapp/api/problems.py); None: "input-refused".
        self.problem = problem


def field_names(form: type[Form]) -> frozenset[str]:
    return frozenset(name for name in dir(form) if isinstance(getattr(form, name, None), UnboundField))


def accepts(*, query: type[Form] | None = None, form: type[Form] | None = None) -> Callable[[F], F]:
    q = field_names(query) if query else frozenset()
    f = (field_names(form) | {CSRF_FIELD}) if form else frozenset({CSRF_FIELD})

    def mark(view: F) -> F:
        view._strongroom_accepts = (q, f)  # type: ignore[attr-defined]
        return view

    return mark


def _printable(name: str) -> str:
    clean = "".join(c if c.isprintable() and c.isascii() else "?" for c in name)
    return clean[:40]


def _parse(raw: bytes, allowed: frozenset[str], where: str) -> None:
    cfg = current_app.config
    try:
        text = raw.decode("ascii")
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=cfg["MAX_PARAMETERS"],
        )
    except UnicodeDecodeError:
        raise InputRefused(f"{where}: not valid UTF-8 / percent-encoding") from None
    except ValueError:
        raise InputRefused(f"{where}: malformed or too many parameters") from None
    seen: set[str] = set()
    for name, value in pairs:
        shown = _printable(name)
        if name not in allowed:
            raise InputRefused(f"{where}: unknown parameter '{shown}'")
        if name in seen:
            raise InputRefused(f"{where}: parameter '{shown}' given more than once")
        seen.add(name)
        if len(value) > cfg["MAX_VALUE_LENGTH"]:
            raise InputRefused(f"{where}: parameter '{shown}' is too long")
        if any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") for c in value):
            raise InputRefused(f"{where}: parameter '{shown}' contains control or invalid characters")


def guard() -> None:
    if request.endpoint is None or (request.endpoint == "static" and not request.query_string):
        return  # routing will 404; static files take no parameters
    view = current_app.view_functions.get(request.endpoint)
    query_ok, form_ok = getattr(view, "_strongroom_accepts", (frozenset(), frozenset({CSRF_FIELD})))
    if request.query_string:
        _parse(request.query_string, query_ok, "query")
    if request.method in ("GET", "HEAD"):
        if request.content_length or request.headers.get("Transfer-Encoding"):
            raise InputRefused("a GET request must not have a body")
        return
    json_body = getattr(view, "_strongroom_json", None)
    if json_body is not None:
        # A JSON API view (webapp/api/body.py): its own strict parser, application/json only; a form
        # is refused there as everything but a form is refused here.
        json_body()
        return
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        raise InputRefused("file uploads are not accepted")
    if mimetype != "application/x-www-form-urlencoded":
        raise InputRefused("unsupported content type: send a form")
    _parse(request.get_data(cache=True), form_ok, "form")
