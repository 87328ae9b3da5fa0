"""The header's links: what each role's pages are, in one table.

A link is shown only when its page exists in this app (a blueprint may be absent from a trimmed
build) and only to the roles that may open it; the page itself still checks (auth/roles.py,
records/access.py): hiding a link is a courtesy, never the control.
"""

from __future__ import annotations

from flask import current_app, request, url_for

# (label, endpoint, roles); every logged-in user sees the entries whose roles include theirs.
LINKS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("Home", "auth.home", frozenset({"admin", "auditor", "clerk", "supervisor"})),
    ("Records", "records.index", frozenset({"clerk", "supervisor"})),
    ("Users", "admin.users", frozenset({"admin"})),
    ("Certificates", "admin.certificates", frozenset({"admin"})),
    ("Sessions", "admin.sessions", frozenset({"admin"})),
    ("Alerts", "operations.alerts", frozenset({"admin"})),
    ("Budgets and keys", "operations.budgets", frozenset({"admin"})),
    ("Audit log", "audit.index", frozenset({"auditor", "supervisor"})),
    ("Activity", "audit.activity", frozenset({"auditor", "supervisor"})),
    ("My password", "account.password", frozenset({"admin", "auditor", "clerk", "supervisor"})),
)


def links(role: str) -> list[tuple[str, str, bool]]:
    """(label, url, is the current page) for this role, in the table's order."""
    found = current_app.view_functions
    return [
        (label, url_for(endpoint), request.endpoint == endpoint)
        for label, endpoint, roles in LINKS
        if role in roles and endpoint in found
    ]
