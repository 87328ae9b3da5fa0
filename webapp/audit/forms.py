"""The auditor's filter form (GET parameters, so no CSRF token: it changes nothing)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import DateField, IntegerField, SelectChoice, SelectField, StringField
from wtforms.validators import Length, NumberRange, Optional

from webapp.events import Event


class AuditFilterForm(FlaskForm):
    class Meta:
        csrf = False

    actor = StringField("User", validators=[Optional(), Length(max=64)])
    event = SelectField(
        "Event", choices=[SelectChoice("", "any"), *(SelectChoice(e.value) for e in Event)], default=""
    )
    outcome = SelectField(
        "Outcome",
        choices=[SelectChoice("", "any"), SelectChoice("success"), SelectChoice("failure")],
        default="",
    )
    since = DateField("From (UTC)", validators=[Optional()])
    until = DateField("Until (UTC, exclusive)", validators=[Optional()])
    page = IntegerField("Page", validators=[Optional(), NumberRange(min=1, max=100000)])
