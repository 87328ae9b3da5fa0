"""Login and logout forms. Field limits are the first line; the validation guard is the outer one."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional

from webapp.auth.passwords import MAX_LENGTH

# A keypad token per character: 8 hex digits and a separator.
KEYPAD_MAX = MAX_LENGTH * 9


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[Optional(), Length(max=MAX_LENGTH)])
    keypad = StringField("Keypad", validators=[Optional(), Length(max=KEYPAD_MAX)])


class LogoutForm(FlaskForm):
    pass
