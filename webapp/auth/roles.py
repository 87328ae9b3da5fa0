"""Which role may open a page that is not a records page (the records pages ask the permission
matrix, records/access.py): the admin console, the audit log, the supervisor's activity views."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from flask import request
from flask_login import current_user

from webapp.events import Event
from webapp.refusals import refuse

View = Callable[..., Any]


def require_role(*roles: str) -> Callable[[View], View]:
    """Refuse (403, an audited `access.denied` naming the roles the page needs) unless the logged-in
    user has one of `roles`. Put it under `@login_required`: an anonymous request goes to the login."""
    allowed = frozenset(roles)

    def wrap(view: View) -> View:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if current_user.role not in allowed:
                return refuse(
                    Event.ACCESS_DENIED,
                    f"role:{'|'.join(sorted(allowed))}",
                    status=403,
                    message="You are not allowed to see this page.",
                    resource=str(request.endpoint),
                )
            return view(*args, **kwargs)

        return checked

    return wrap
