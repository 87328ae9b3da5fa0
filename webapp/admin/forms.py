"""The admin console's forms. Every change carries the confirmation fields (ConfirmForm: a reason and
the admin's password again); field limits are the first line, the validation guard the outer one."""

from __future__ import annotations

from wtforms import StringField
from wtforms.validators import Length, Optional

from webapp.admin.service import USERNAME_MAX
from webapp.auth.confirm import ConfirmForm

# A PEM certificate of our CA is about 1 KiB; the validation guard caps every value anyway.
PEM_FIELD_MAX = 4096


class ActionForm(ConfirmForm):
    """A change with nothing to say but its confirmation: disable, enable, unlock, reset the
    password, end sessions, unbind a certificate, end one session."""


class AddUserForm(ConfirmForm):
    # Longer than allowed, so an overlong name reaches the rule and is refused next to its field.
    username = StringField("Username", validators=[Optional(), Length(max=USERNAME_MAX * 4)])
    # Drawn as a <select> of the roles (the page); a value outside them is tampering (a 400).
    role = StringField("Role", validators=[Optional(), Length(max=16)])


class RoleForm(ConfirmForm):
    role = StringField("New role", validators=[Optional(), Length(max=16)])


class BindForm(ConfirmForm):
    username = StringField("Username", validators=[Optional(), Length(max=USERNAME_MAX * 4)])
    pem = StringField("Certificate (PEM)", validators=[Optional(), Length(max=PEM_FIELD_MAX)])
