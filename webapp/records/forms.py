"""Records forms. The CVV-like fields are declared only so the validation guard lets them reach the
view, which refuses the whole form with a specific message; they are never read or stored."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import IntegerField, StringField
from wtforms.validators import DataRequired, Length, NumberRange

from webapp.records.cards import CVV_FIELDS


class SearchForm(FlaskForm):
    class Meta:
        csrf = False

    crm_ref = StringField("CRM reference", validators=[DataRequired(), Length(max=32)])


class RecordForm(FlaskForm):
    crm_ref = StringField("CRM reference", validators=[DataRequired(), Length(max=32)])


class RetireForm(FlaskForm):
    pass


class CardForm(FlaskForm):
    pan = StringField("Card number", validators=[DataRequired(), Length(max=40)])
    cardholder = StringField("Cardholder name", validators=[DataRequired(), Length(max=64)])
    exp_month = IntegerField("Expiry month", validators=[DataRequired(), NumberRange(min=1, max=12)])
    exp_year = IntegerField("Expiry year", validators=[DataRequired(), NumberRange(min=2000, max=9999)])


# Declared, never rendered: a client that sends one of these gets the CVV refusal, not "unknown
# parameter".
for _name in CVV_FIELDS:
    setattr(CardForm, _name, StringField(_name))
