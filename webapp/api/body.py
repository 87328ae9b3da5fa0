"""Strict JSON bodies for the API: one object, exact types, no unknown or repeated keys, bounded.

A view declares its body with `@json_body(Body(...))`; the input guard (webapp/validation.py) runs
the declared parser before the view, in place of the form parser, and refuses the request with an
`InputRefused` whose `problem` names the problem type (webapp/api/problems.py). The parsed object is
`body()`. Every refusal names the rule and a declared field, never a value nor a name the client made up.

Refused: any content type but application/json (charset, if given, utf-8), a body over the declared
size, bytes that are not UTF-8 (or carry a BOM), anything that is not exactly one JSON object,
nesting deeper than MAX_DEPTH, a key twice in one object, NaN/Infinity, a field the body does not
declare, a missing required field, a value of another JSON type than declared (no "5" for 5, no 5.0,
no true for 1), strings longer than the guard's MAX_VALUE_LENGTH or holding control, surrogate,
private-use or unassigned characters (the form guard's rule).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, g, request

from webapp.records.cards import CVV_FIELDS
from webapp.validation import InputRefused

F = TypeVar("F", bound=Callable[..., Any])
MAX_DEPTH = 8
DEFAULT_MAX_BYTES = 8 * 1024
_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", list: "array"}  # list: the bulk import's rows


@dataclass(frozen=True)
class Field:
    name: str
    type: type  # str, int or bool: exact
    required: bool = True


@dataclass(frozen=True)
class Body:
    fields: tuple[Field, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES

    def parse(self, raw: bytes) -> dict[str, Any]:
        if len(raw) > self.max_bytes:
            raise InputRefused(f"body: more than {self.max_bytes} bytes", problem="body-too-large")
        data = loads(raw)
        if not isinstance(data, dict):
            raise InputRefused("body: must be one JSON object", problem="body-malformed")
        declared = {f.name: f for f in self.fields}
        for name in data:
            if name.lower() in CVV_FIELDS:
                raise InputRefused(
                    "body: card security codes (CVV/CVC) are never accepted or stored",
                    problem="security-code-refused",
                )
            if name not in declared:
                # The unknown name is not echoed (it is whatever the client sent): the known ones are.
                known = ", ".join(declared) or "none"
                raise InputRefused(f"body: unknown field (this body takes: {known})", problem="unknown-field")
        limit = current_app.config["MAX_VALUE_LENGTH"]
        for field in self.fields:
            if field.name not in data:
                if field.required:
                    raise InputRefused(f"body: field '{field.name}' is required", problem="missing-field")
                continue
            value = data[field.name]
            if type(value) is not field.type:  # exact: bool is not int, 5.0 is not 5
                raise InputRefused(
                    f"body: field '{field.name}' must be a JSON {_TYPE_NAMES[field.type]}",
                    problem="wrong-type",
                )
            if isinstance(value, str):
                if len(value) > limit:
                    raise InputRefused(f"body: field '{field.name}' is too long", problem="input-refused")
                if any(unicodedata.category(c) in ("Cc", "Cs", "Co", "Cn") for c in value):
                    raise InputRefused(
                        f"body: field '{field.name}' contains control or invalid characters",
                        problem="input-refused",
                    )
        return data


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise InputRefused("body: a key is given more than once in one object", problem="duplicate-key")
        found[key] = value
    return found


def _no_constant(_name: str) -> Any:
    raise InputRefused("body: NaN and Infinity are not JSON", problem="body-malformed")


def depth(text: str) -> int:
    """How deeply arrays and objects nest, counted without parsing (so a hostile body cannot make
    the parser recurse before it is refused). Brackets inside strings do not count."""
    deepest = level = 0
    in_string = escaped = False
    for c in text:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            level += 1
            deepest = max(deepest, level)
        elif c in "]}":
            level -= 1
    return deepest


def loads(raw: bytes) -> Any:
    if raw.startswith(b"\xef\xbb\xbf"):
        raise InputRefused("body: a byte order mark is not accepted", problem="body-malformed")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputRefused("body: not valid UTF-8", problem="body-malformed") from None
    if depth(text) > MAX_DEPTH:
        raise InputRefused(f"body: nested deeper than {MAX_DEPTH}", problem="body-too-deep")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except InputRefused:
        raise
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so is an int too long
        raise InputRefused("body: not valid JSON", problem="body-malformed") from None


def check_content_type() -> None:
    """application/json, with no parameter but charset=utf-8."""
    if request.mimetype != "application/json":
        raise InputRefused(
            "unsupported content type: send application/json", problem="unsupported-media-type"
        )
    params = {k.lower(): v.lower() for k, v in request.mimetype_params.items()}
    if set(params) - {"charset"} or params.get("charset", "utf-8") != "utf-8":
        raise InputRefused(
            "unsupported content type: application/json takes only charset=utf-8",
            problem="unsupported-media-type",
        )


def json_body(spec: Body) -> Callable[[F], F]:
    """Declare a view's JSON body: the input guard parses it (see the module's docstring)."""

    def parse() -> None:
        check_content_type()
        length = request.content_length
        if length is not None and length > spec.max_bytes:
            raise InputRefused(f"body: more than {spec.max_bytes} bytes", problem="body-too-large")
        g.api_body = spec.parse(request.get_data(cache=True))

    def mark(view: F) -> F:
        view._strongroom_json = parse  # type: ignore[attr-defined]
        return view

    return mark


def body() -> dict[str, Any]:
    """The request's parsed body (the guard put it there before the view ran)."""
    found: dict[str, Any] = g.api_body
    return found
