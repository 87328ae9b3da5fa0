"""A records form whose values break a rule: what the page shows next to each field, and what of the
typed values it may put back.

A well-formed request (the validation guard, webapp/validation.py, passed it: declared parameters,
no control characters, sizes bounded) whose values break a form or input rule is a typo, not an
attack: the page is shown again with each rule's reason next to its field, audited as FORM_INVALID
and not alerted. Two exceptions stay alerted while still shown next to the field: a card number
where none may be stored (`Refused(alert=True)`, docs/alerts.md). The reasons name the rule, never
the value.

What was typed is put back only for the fields listed as `keep` by the caller (the CRM reference,
the expiry month and year, the document type), and never when it holds a card number in any
spelling. The card number, the cardholder name and every item value are secret (they are stored
encrypted): they never make the round trip through an HTML page in clear.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from webapp.records.errors import Refused
from webapp.redact import contains_pan

T = TypeVar("T")
_NUMBER = re.compile(r"[0-9]{1,4}")
DETAIL_MAX = 200


class Invalid:
    """The errors of one form of a page (`form` names it: two forms of a page may share a field
    name), in the order the page shows the fields."""

    def __init__(self, form: str, order: Iterable[str]) -> None:
        self.form = form
        self.order = tuple(order)
        self.errors: dict[str, str] = {}
        self.kept: dict[str, str] = {}
        self.alert = False

    def __bool__(self) -> bool:
        return bool(self.errors)

    def add(self, field: str, message: str, *, alert: bool = False) -> None:
        self.errors.setdefault(field, message)
        self.alert = self.alert or alert

    def check(self, rule: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """The rule's result, or None with its reason noted next to its field. A refusal that is
        about no field is not a typo: it propagates."""
        try:
            return rule(*args, **kwargs)
        except Refused as exc:
            if exc.field is None:
                raise
            self.add(exc.field, exc.reason, alert=exc.alert)
            return None

    def from_form(self, form: Any, labels: dict[str, str] | None = None) -> None:
        """The WTForms errors of a validated form, each as "<label>: <message>"."""
        for name, errors in form.errors.items():
            label = (labels or {}).get(name) or str(form[name].label.text).lower()
            self.add(name, f"{label}: {str(errors[0]).lower().rstrip('.')}")

    def keep(self, form: Any, names: Iterable[str], *, numbers: Iterable[str] = ()) -> None:
        """Put back what was typed in the non-secret fields `names` (and `numbers`, kept only as the
        short number a number input can hold), unless it holds a card number."""
        numeric = frozenset(numbers)
        for name in (*names, *numeric):
            raw = form[name].raw_data[0] if form[name].raw_data else ""
            value = str(raw).strip() if name in numeric else str(raw)
            if name in numeric and not _NUMBER.fullmatch(value):
                continue
            if contains_pan(value):
                continue
            self.kept[name] = value

    @property
    def fields(self) -> list[str]:
        """The invalid fields, in the page's order (unknown names last)."""
        rank = {name: i for i, name in enumerate(self.order)}
        return sorted(self.errors, key=lambda name: rank.get(name, len(rank)))

    @property
    def first(self) -> str | None:
        fields = self.fields
        return fields[0] if fields else None

    def detail(self) -> str:
        """The audit detail: the form, each field and its rule; never a value."""
        parts = "; ".join(f"{name}: {self.errors[name]}" for name in self.fields)
        return f"form={self.form} {parts}"[:DETAIL_MAX]
