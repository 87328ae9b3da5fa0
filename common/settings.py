"""Settings as a declared model, read from TOML, refused one line per problem without echoing a value.

A package states its settings once, as a `SettingsModel` subclass: one field per setting with its type,
its default and its limits (`port: int = Field(default=25, ge=1, le=65535)`). The model is strict (a
string is never read as a number, `true` is never 1), refuses unknown keys (a typo must not fall back to
a default silently) and is frozen. `load_toml` reads the file (at most `max_bytes`), validates it, and
turns every problem into one line `<file>: <key>: <rule>`. Reading the file is `common/tomlfile.py`
(standard library only, so keyd can share it without pydantic: docs/keyd.md says why).

A refusal line is built from where (the key) and which rule broke (the limit from the model), never
from the submitted value: a password pasted into the wrong key must not reach a terminal, a log or a
mail. pydantic's own messages can carry the input, so they are not used; a validator a model adds
raises `ValueError` with a rule ("must be an absolute path"), never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Strict, ValidationError

from common.tomlfile import MAX_BYTES, SettingsMissing, SettingsRefused, read_toml

T = TypeVar("T")
M = TypeVar("M", bound="SettingsModel")

MAX_PROBLEMS = 20  # past this the admin has the wrong file, and the rest is noise
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")

__all__ = [
    "MAX_BYTES",
    "AbsolutePath",
    "Array",
    "SettingsMissing",
    "SettingsModel",
    "SettingsRefused",
    "load_toml",
    "problems",
    "read_toml",
    "validate",
]


class SettingsModel(BaseModel):
    """The base of every package's settings: strict, closed and frozen."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
        # Defence in depth: a ValidationError that escapes somewhere still does not print the input.
        hide_input_in_errors=True,
    )


def _absolute(path: Path) -> Path:
    if not path.is_absolute() or "\x00" in str(path):
        raise ValueError("must be an absolute path")
    return path


# A TOML string read as an absolute path (a Path object given in code is accepted as it is).
AbsolutePath = Annotated[Path, Strict(False), AfterValidator(_absolute)]
# A TOML array kept as a tuple, so the settings stay immutable; the items stay strict.
Array = Annotated[tuple[T, ...], Strict(False)]


def validate(model: type[M], raw: Mapping[str, Any], *, source: str, key_prefix: str = "") -> M:
    """`raw` as an instance of `model`, or `SettingsRefused` naming `source` and each key that broke a rule.

    `key_prefix` is put before each top-level key in a refusal (`STRONGROOM_` for settings that came
    from the environment under that prefix)."""
    try:
        # The context tells a model's own validators that a loader will name the source of a refusal.
        return model.model_validate(dict(raw), context={"source": source})
    except ValidationError as exc:
        # from None: the ValidationError holds the input, and a traceback would print its context.
        hints = {f.alias or name: f.description for name, f in model.model_fields.items() if f.description}
        raise SettingsRefused(problems(exc, source=source, key_prefix=key_prefix, hints=hints)) from None


def load_toml(model: type[M], path: Path, *, max_bytes: int = MAX_BYTES) -> M:
    """The settings in the TOML file `path`, validated by `model`."""
    return validate(model, read_toml(path, max_bytes=max_bytes), source=str(path))


# Each pydantic error type as a rule; the placeholders are limits from the model (ctx), never input.
_RULES: dict[str, str] = {
    "missing": "is required",
    "extra_forbidden": "is not a known setting",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "model_attributes_type": "must be a table",
    "path_type": "must be a path",
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_too_short": "must be at least {min_length} characters long",
    "string_too_long": "must be at most {max_length} characters long",
    "too_short": "must have at least {min_length} entries",
    "too_long": "must have at most {max_length} entries",
    "string_pattern_mismatch": "must match {pattern}",
    "literal_error": "must be one of {expected}",
    "enum": "must be one of {expected}",
}
_SAFE_CTX = ("gt", "ge", "lt", "le", "min_length", "max_length", "pattern", "expected")


def problems(
    error: ValidationError, *, source: str, key_prefix: str = "", hints: Mapping[str, str] | None = None
) -> list[str]:
    """One line per problem, `<source>: <key>: <rule>`, built from the key and the rule only.

    `hints` (a field's `description`) say what to set when a required setting is missing."""
    lines = []
    prefix = f"{source}: " if source else ""  # no source: the caller names it (a CLI, once)
    for e in error.errors():
        line = f"{prefix}{_where(e['loc'], key_prefix)}{_rule(e)}"
        hint = (hints or {}).get(str(e["loc"][0])) if e["type"] == "missing" and len(e["loc"]) == 1 else None
        lines.append(f"{line}: {hint}" if hint else line)
    if len(lines) > MAX_PROBLEMS:
        lines = [*lines[:MAX_PROBLEMS], f"{prefix}and {len(lines) - MAX_PROBLEMS} more problems"]
    return lines


def _rule(e: Any) -> str:
    kind = e["type"]
    ctx = e.get("ctx") or {}
    if kind in ("value_error", "assertion_error"):
        # Our own validators' text: a rule, by the convention in this module's docstring.
        return str(ctx.get("error", "is not accepted"))
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    template = _RULES.get(kind)
    if template is None:
        return f"is not accepted ({kind})"
    try:
        return template.format_map({k: _number(ctx[k]) for k in _SAFE_CTX if k in ctx})
    except KeyError:
        return f"is not accepted ({kind})"


def _number(limit: Any) -> Any:
    """`0`, not `0.0`: a limit reads as the admin would write it."""
    return int(limit) if isinstance(limit, float) and limit.is_integer() else limit


def _where(loc: tuple[int | str, ...], key_prefix: str) -> str:
    """`logs.syslog`, `admins[3]`; a key that is not plain is quoted so a line stays one line."""
    out = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if part == "[key]":  # pydantic's marker for "the key just named, not its value"
            continue
        name = part if _PLAIN_KEY.fullmatch(part) else repr(part[:64])
        out += f"{key_prefix}{name}" if index == 0 else f".{name}"
    return f"{out}: " if out else ""
