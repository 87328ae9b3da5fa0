"""The one refusal of the records package.

The card and item input rules, the records service and the step-up all raise `Refused`; its reason
names the rule that refused ("card number: check digit is wrong (Luhn)"), never the value, because it
is shown to the employee and written to the audit log.
"""

from __future__ import annotations


class Refused(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
