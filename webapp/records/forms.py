"""Records forms. The CVV-like fields are declared only so the validation guard lets them reach the
view, which refuses the whole form with a specific message; they are never read or stored."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional

from webapp.auth.forms import KEYPAD_MAX
from webapp.auth.passwords import MAX_LENGTH
from webapp.records.cards import CVV_FIELDS

# The messages a form error shows next to its field, after the field's label ("card number: required").
REQUIRED = "required"
TOO_LONG = "at most %(max)d characters"
OUT_OF_RANGE = "must be %(min)s to %(max)s"


def _text(max_len: int) -> list[object]:
    return [DataRequired(REQUIRED), Length(max=max_len, message=TOO_LONG)]


def _number(lo: int, hi: int) -> list[object]:
    return [InputRequired(REQUIRED), NumberRange(min=lo, max=hi, message=OUT_OF_RANGE)]


# Form-level ceilings, above the rules' own limits, so that an oversized value reaches the rule and
# gets its specific message ("at most 2000 characters") rather than a generic one.
NOTE_FIELD_MAX = 2048
REASON_FIELD_MAX = 400


class SearchForm(FlaskForm):
    class Meta:
        csrf = False

    crm_ref = StringField("CRM reference", validators=_text(32))


class RecordForm(FlaskForm):
    crm_ref = StringField("CRM reference", validators=_text(32))


class RetireForm(FlaskForm):
    pass


class CardForm(FlaskForm):
    pan = StringField("Card number", validators=_text(40))
    cardholder = StringField("Cardholder name", validators=_text(64))
    exp_month = IntegerField("Expiry month", validators=_number(1, 12))
    exp_year = IntegerField(
        "Expiry year",
        validators=_number(2000, 9999),
    )


# Declared, never rendered: a client that sends one of these gets the CVV refusal, not "unknown
# parameter".
for _name in CVV_FIELDS:
    setattr(CardForm, _name, StringField(_name))


class CardEditForm(FlaskForm):
    """Cardholder and expiry only: a new card number is a new card."""

    cardholder = StringField("Cardholder name", validators=_text(64))
    exp_month = IntegerField("Expiry month", validators=_number(1, 12))
    exp_year = IntegerField(
        "Expiry year",
        validators=_number(2000, 9999),
    )


for _name in CVV_FIELDS:
    setattr(CardEditForm, _name, StringField(_name))


class ItemForm(FlaskForm):
    """Adding or editing a bank account, identity document or note (the kind is in the URL)."""

    # Generous here; the item rules (items.py) give the specific limit per kind.
    value = StringField("Value", validators=_text(NOTE_FIELD_MAX))
    doc_type = StringField("Document type", validators=[Optional(), Length(max=32, message=TOO_LONG)])


class RevealForm(FlaskForm):
    stepup = StringField("Step-up token", validators=_text(64))
    reason = StringField("Reason", validators=[Optional(), Length(max=REASON_FIELD_MAX)])
    # Not named "password": password managers fill fields by name as well as by type, and the step-up
    # password must be typed by the person at the keyboard (see the template's autocomplete="off").
    stepup_typed = PasswordField("Password", validators=[Optional(), Length(max=MAX_LENGTH)])
    keypad = StringField("Keypad", validators=[Optional(), Length(max=KEYPAD_MAX)])
