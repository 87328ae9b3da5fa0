"""The audit pages' query forms (GET parameters, so no CSRF token: they change nothing).

Two kinds of field, and two kinds of mistake:
- typed by the reader (user, from, until): a bad value is a typo, shown next to the field with what
  was typed kept, and audited as `request.form_invalid` (not alerted);
- set by the page itself (the event and outcome choices, the period, the paging cursors): a value the
  page never offers was made by hand, so it is refused like any other tampering (400,
  `request.input_refused`, alerted), as unknown and repeated parameters are by the validation guard.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask_wtf import FlaskForm
from wtforms import DateTimeLocalField, Field, IntegerField, SelectChoice, SelectField, StringField
from wtforms.validators import Length, NumberRange, Optional, Regexp, ValidationError

from webapp.events import Event
from webapp.redact import contains_pan

# The first format is what the page writes back (an <input type="datetime-local"> reads it); the
# others are what a person types into the address bar or a browser without a date-time picker.
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]
DATETIME_HINT = "a date and time in UTC, like 2026-11-25T09:30"
# A username (1-64 of a-z A-Z 0-9 . _ -), or "-": the records of nobody logged in.
ACTOR_RULE = r"^[A-Za-z0-9._-]{1,64}$"
MAX_SEQ = 2**63 - 1
PERIODS = (1, 7, 30, 90, 365)  # days, for an employee's activity

# The fields a person types; every other field's error is tampering.
TYPED = frozenset({"actor", "since", "until"})


class UtcDateTimeField(DateTimeLocalField):
    """A date-time in UTC. A valid value is written back in the one shape an <input
    type="datetime-local"> shows (a browser blanks any other, and the filter would be lost on the
    next search); an invalid one as typed, next to its error."""

    def _value(self) -> str:
        if isinstance(self.data, datetime) and not self.errors:
            return self.data.strftime("%Y-%m-%dT%H:%M:%S" if self.data.second else "%Y-%m-%dT%H:%M")
        return str(super()._value())


def _cursor(label: str) -> IntegerField:
    return IntegerField(label, validators=[Optional(), NumberRange(min=1, max=MAX_SEQ)])


def _until_after_since(form: Any, field: Field) -> None:
    since: datetime | None = form.since.data
    if since is not None and field.data is not None and field.data <= since:
        raise ValidationError("must be later than From")


class FilterFields(FlaskForm):
    """What the audit log is filtered by; the log page and the export share it."""

    class Meta:
        csrf = False

    def validate(self, extra_validators: Any = None) -> bool:
        """A card number typed into a filter is an error that is not written back: the field is
        emptied, so the page (and its links) never carry it; `card_numbers` names those fields (the
        view alerts on them, as on a card number in any other field that is not the card form)."""
        ok: bool = super().validate(extra_validators)
        self.card_numbers: list[str] = []
        for name in sorted(TYPED):
            field = self[name]
            if field.raw_data and contains_pan(str(field.raw_data[0])):
                field.errors = ["must not be a card number (it was not kept)"]
                field.raw_data, field.data = [], None
                self.card_numbers.append(name)
                ok = False
        return ok

    actor = StringField(
        "User",
        validators=[
            Optional(),
            Length(max=64, message="must be at most 64 characters"),
            Regexp(ACTOR_RULE, message="must be a username: letters, digits, '.', '_' and '-' only"),
        ],
    )
    event = SelectField(
        "Event", choices=[SelectChoice("", "any"), *(SelectChoice(e.value) for e in Event)], default=""
    )
    outcome = SelectField(
        "Outcome",
        choices=[SelectChoice("", "any"), SelectChoice("success"), SelectChoice("failure")],
        default="",
    )
    since = UtcDateTimeField(
        "From (UTC)",
        format=DATETIME_FORMATS,
        validators=[Optional()],
        invalid_value_message=f"must be {DATETIME_HINT}",
    )
    until = UtcDateTimeField(
        "Until (UTC, not included)",
        format=DATETIME_FORMATS,
        validators=[Optional(), _until_after_since],
        invalid_value_message=f"must be {DATETIME_HINT}",
    )


class AuditFilterForm(FilterFields):
    """The log page: the filters and where the page starts (newest first: `before` shows the records
    older than that sequence number, `after` the ones newer; the page's own links set them)."""

    before = _cursor("Older than record")
    after = _cursor("Newer than record")

    def validate(self, extra_validators: Any = None) -> bool:
        ok: bool = super().validate(extra_validators)
        if self.before.data is not None and self.after.data is not None:
            self.before.errors = [*self.before.errors, "cannot be given with 'after'"]
            return False
        return ok


class ExportForm(FilterFields):
    """The CSV export: the log page's filters, no paging (the export is bounded instead)."""


class ActivityForm(FlaskForm):
    """One employee's activity page: the period the counts and lists cover, and the recent records'
    paging cursors."""

    class Meta:
        csrf = False

    days = SelectField(
        "Period",
        choices=[SelectChoice(str(d), f"last {d} day{'s' if d > 1 else ''}") for d in PERIODS],
        default=str(7),
    )
    before = _cursor("Older than record")
    after = _cursor("Newer than record")

    def validate(self, extra_validators: Any = None) -> bool:
        ok: bool = super().validate(extra_validators)
        if self.before.data is not None and self.after.data is not None:
            self.before.errors = [*self.before.errors, "cannot be given with 'after'"]
            return False
        return ok
