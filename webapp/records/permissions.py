"""Who may do what with records: data, so the next slices (reveal, supervisor approval) extend it.

Every records route names its action; a role missing from the action's set gets 403, audited.
Auditors and admins see no customer data at all: they are not in any set.
"""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    RECORD_LIST = "record.list"
    RECORD_VIEW = "record.view"
    RECORD_ADD = "record.add"
    RECORD_RETIRE = "record.retire"
    CARD_ADD = "card.add"
    CARD_VIEW_MASKED = "card.view_masked"


_DESK = frozenset({"clerk", "supervisor"})

PERMISSIONS: dict[Action, frozenset[str]] = {
    Action.RECORD_LIST: _DESK,
    Action.RECORD_VIEW: _DESK,
    Action.RECORD_ADD: _DESK,
    Action.RECORD_RETIRE: _DESK,
    Action.CARD_ADD: _DESK,
    Action.CARD_VIEW_MASKED: _DESK,
}


def allowed(role: str, action: Action) -> bool:
    return role in PERMISSIONS.get(action, frozenset())
