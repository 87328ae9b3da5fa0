"""Admin pages. User management is by command (`flask --app webapp users ...`) in this issue; the
next issue (roles) adds pages here."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")
