"""The /api/v1 blueprint, and how it answers a refusal: problem+json, audited, nothing kept.

Routes are added by views.py (and bulk.py); setup.py registers the blueprint. Every module that adds
routes imports `bp` from here, so no module of the API imports another one back.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, abort, current_app, request
from flask.wrappers import Response
from werkzeug.exceptions import RequestEntityTooLarge

from webapp.api import problems
from webapp.api.problems import Problem
from webapp.events import Event
from webapp.request import unit
from webapp.validation import InputRefused

PREFIX = "/api/v1"
bp = Blueprint("api", __name__, url_prefix=PREFIX)
_ROW_ID = re.compile(r"[0-9a-f]{32}")
# What a refused request shape is audited as: a security code is a card refusal (alerted), as in the
# browser; every other shape the API refuses is input.refused (alerted: no correct client sends it).
_SHAPE_EVENTS = {"security-code-refused": Event.CARD_REFUSED}


@bp.url_value_preprocessor
def _ids(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    """As the records pages: a card id is 32 lowercase hex and a record id fits its column, or 404
    before any view runs (a card number typed in their place reaches no audit record)."""
    if values and "card_id" in values and not _ROW_ID.fullmatch(str(values["card_id"])):
        abort(404)
    if values and not 0 < int(values.get("record_id", 1)) <= 2**31 - 1:
        abort(404)


def _resource() -> str:
    """The route and its record, never the raw path (whatever the client typed into it)."""
    record_id = (request.view_args or {}).get("record_id")
    where = str(request.endpoint or request.path[:100])
    return f"{where}:{record_id}" if record_id is not None else where


def handle_problem(exc: Problem) -> Response:
    uow = unit()
    if not exc.keep:
        uow.discard_writes()
    uow.record(exc.event, ok=False, resource=_resource(), detail=exc.audit[:200], actor=exc.actor)
    return problems.response(exc.slug, exc.detail)


_QUOTED = re.compile(r"'([^']*)'")


def _named_safely(reason: str) -> str:
    """The form guard's reason (webapp/validation.py) quotes the parameter's name: kept when it is one
    the route declares, else not echoed (a name is whatever the client sent)."""
    view = current_app.view_functions.get(request.endpoint or "")
    declared: frozenset[str] = getattr(view, "_strongroom_accepts", (frozenset(), frozenset()))[0]
    return _QUOTED.sub(lambda m: f"'{m[1]}'" if m[1] in declared else "a parameter", reason)


@bp.errorhandler(InputRefused)
def _input_refused(exc: InputRefused) -> Response:
    slug = exc.problem or "input-refused"
    reason = exc.reason if exc.problem else _named_safely(exc.reason)
    return handle_problem(Problem(slug, reason, event=_SHAPE_EVENTS.get(slug, Event.INPUT_REFUSED)))


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> Response:
    return handle_problem(Problem("body-too-large", "the request body is too large"))
