"""Login, logout and the employee's own password forms. Field limits are the first line; the
validation guard is the outer one."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import DataRequired, Length, Optional

from webapp.auth.passwords import MAX_LENGTH

# A keypad token per character: 8 hex digits and a separator.
KEYPAD_MAX = MAX_LENGTH * 9
# A new password's field takes more than the policy allows, so that an overlong one reaches the
# policy and is refused next to its field with the rule it breaks (the guard still caps every value).
NEW_PASSWORD_FIELD_MAX = 1024


class LoginForm(FlaskForm):
    username = StringField("Username", validators=[DataRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[Optional(), Length(max=MAX_LENGTH)])
    keypad = StringField("Keypad", validators=[Optional(), Length(max=KEYPAD_MAX)])


class LogoutForm(FlaskForm):
    pass


class NewPasswordForm(FlaskForm):
    """The forced change after an admin's reset: the new password twice (typed, or clicked on the
    keypad where the deployment enters passwords on one). The one-time password is already spent."""

    new_password = PasswordField("New password", validators=[Optional(), Length(max=NEW_PASSWORD_FIELD_MAX)])
    new_password_again = PasswordField(
        "New password again", validators=[Optional(), Length(max=NEW_PASSWORD_FIELD_MAX)]
    )
    new_keypad = StringField("New password (keypad)", validators=[Optional(), Length(max=KEYPAD_MAX)])
    again_keypad = StringField("New password again (keypad)", validators=[Optional(), Length(max=KEYPAD_MAX)])


class ChangePasswordForm(NewPasswordForm):
    """Self-service: the current password (entered as at login: typed, keypad, or typed + PIN keypad)
    and the new one twice."""

    current_password = PasswordField("Current password", validators=[Optional(), Length(max=MAX_LENGTH)])
    keypad = StringField("Current password (keypad)", validators=[Optional(), Length(max=KEYPAD_MAX)])
