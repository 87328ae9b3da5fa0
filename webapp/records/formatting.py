"""How the records pages write things out: the page around every view, card numbers for the employee
(masked, or grouped once revealed), the names records and revealed fields carry in the audit log, and
a form's first error as a refusal reason."""

from __future__ import annotations

from typing import Any

from flask import render_template
from flask_login import current_user

from webapp.records.access import can


def masked(brand: str, last4: str) -> str:
    return f"{brand} •••• {last4}"


def grouped(pan: str) -> str:
    """A revealed card number in groups of four, as it is printed on the card."""
    return " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))


def record_resource(record_id: int) -> str:
    return f"record:{record_id}"


def reveal_target(kind: str, obj_id: str, field: str) -> str:
    """The field a reveal is about; also what a step-up token is bound to."""
    return f"{kind}:{obj_id}:{field}"


def first_error(form: Any) -> tuple[str, str]:
    """The first invalid field of a validated form and its message, lower case without the period."""
    field, errors = next(iter(form.errors.items()))
    return field, str(errors[0]).lower().rstrip(".")


def render(template: str, **context: Any) -> str:
    """A records page with what every one of them shows: the user, the logout button (base.html
    writes its form with the request's CSRF token) and, for the template's `can('bank', 'reveal')`,
    what the permission matrix lets this user do."""
    # The user itself, not Flask-Login's proxy: the page reads it a few times.
    user = current_user._get_current_object()
    return render_template(template, user=user, logout=True, can=can(), **context)
