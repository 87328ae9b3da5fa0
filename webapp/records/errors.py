"""The one refusal of the records package.

The card and item input rules, the records service and the step-up all raise `Refused`; its reason
names the rule that refused ("card number: check digit is wrong (Luhn)"), never the value, because it
is shown to the employee and written to the audit log.

`field` is the form field a rule is about: the page shows the reason next to that field (a typo,
audited as FORM_INVALID, not alerted). A refusal with no field (a retired record is read-only) is not
something the employee can correct in the form: it gets the refusal page. `alert` marks a value that
breaks a policy rather than a format (a card number where none may be stored): still shown next to
the field, never kept, and alerted (docs/alerts.md).
"""

from __future__ import annotations


class Refused(ValueError):
    def __init__(self, reason: str, *, field: str | None = None, alert: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.alert = alert
