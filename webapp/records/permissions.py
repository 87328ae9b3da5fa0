"""Who may do what with customer data: a matrix of field classes × actions, loaded as data.

The default matrix is `permissions.json` beside this module; a deployment points
`RECORDS_PERMISSIONS` at its own JSON file (or passes the mapping itself). It is validated strictly
when the app starts and the app refuses to start on anything unknown: a role that does not exist, a
field class or action that does not exist, an action that means nothing for its class (a record is
never "revealed"), or any grant at all to `auditor` or `admin`, who by design see no customer data.
Roles missing from the file get nothing (fail closed).

Every records route and every field asks `Matrix.allows(role, field_class, action)`; templates get
the same answers, so the UI shows only what the server would accept.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from webapp.config import ConfigError
from webapp.db.tables import ROLES

DEFAULT_FILE = Path(__file__).resolve().parent / "permissions.json"
NO_CUSTOMER_DATA = frozenset({"auditor", "admin"})  # separation of duties, not configurable


class FieldClass(StrEnum):
    RECORD = "record"  # the record itself: its CRM reference, its existence
    CARD_MASKED = "card.masked"  # brand and last four; adding, editing, retiring cards
    CARD_PAN = "card.pan"  # the full card number (secret: reveal only)
    CARD_CARDHOLDER = "card.cardholder"  # cardholder name and expiry (secret: reveal only)
    BANK = "bank"  # bank account (IBAN); the list shows a masked hint
    IDENTITY = "identity"  # identity document number; masked hint
    NOTES = "notes"  # free-text notes; the list shows only their length


class Act(StrEnum):
    LIST = "list"
    VIEW = "view"
    ADD = "add"
    EDIT = "edit"
    RETIRE = "retire"
    REVEAL = "reveal"


_ITEM_ACTS = frozenset({Act.VIEW, Act.ADD, Act.EDIT, Act.RETIRE, Act.REVEAL})
# The cells that exist. Anything else in a matrix file is a configuration error.
CELLS: dict[FieldClass, frozenset[Act]] = {
    FieldClass.RECORD: frozenset({Act.LIST, Act.VIEW, Act.ADD, Act.RETIRE}),
    FieldClass.CARD_MASKED: frozenset({Act.VIEW, Act.ADD, Act.EDIT, Act.RETIRE}),
    FieldClass.CARD_PAN: frozenset({Act.REVEAL}),
    FieldClass.CARD_CARDHOLDER: frozenset({Act.REVEAL}),
    FieldClass.BANK: _ITEM_ACTS,
    FieldClass.IDENTITY: _ITEM_ACTS,
    FieldClass.NOTES: _ITEM_ACTS,
}
# Which encrypted fields a class covers, for the reveal route: (object kind, field) -> class.
SECRET_FIELDS: dict[tuple[str, str], FieldClass] = {
    ("card", "pan"): FieldClass.CARD_PAN,
    ("card", "cardholder"): FieldClass.CARD_CARDHOLDER,
    ("card", "expiry"): FieldClass.CARD_CARDHOLDER,
    ("bank", "value"): FieldClass.BANK,
    ("identity", "value"): FieldClass.IDENTITY,
    ("note", "value"): FieldClass.NOTES,
}
ITEM_CLASS = {"bank": FieldClass.BANK, "identity": FieldClass.IDENTITY, "note": FieldClass.NOTES}


@dataclass(frozen=True)
class Matrix:
    grants: Mapping[str, frozenset[tuple[FieldClass, Act]]]

    def allows(self, role: str, field_class: FieldClass, action: Act) -> bool:
        return (field_class, action) in self.grants.get(role, frozenset())

    def can(self, role: str) -> Any:
        """For templates: `can('bank', 'reveal')`."""

        def check(field_class: str, action: str) -> bool:
            return self.allows(role, FieldClass(field_class), Act(action))

        return check


def parse(data: object) -> Matrix:
    """A matrix from `{role: {field class: [actions]}}`; ConfigError names the first problem."""
    if not isinstance(data, dict):
        raise ConfigError("RECORDS_PERMISSIONS: must be an object {role: {field class: [actions]}}")
    grants: dict[str, frozenset[tuple[FieldClass, Act]]] = {}
    for role, classes in data.items():
        if role not in ROLES:
            raise ConfigError(f"RECORDS_PERMISSIONS: unknown role {str(role)[:32]!r}")
        if not isinstance(classes, dict):
            raise ConfigError(f"RECORDS_PERMISSIONS: {role}: must be an object")
        cells: set[tuple[FieldClass, Act]] = set()
        for name, actions in classes.items():
            try:
                field_class = FieldClass(name)
            except ValueError:
                raise ConfigError(
                    f"RECORDS_PERMISSIONS: {role}: unknown field class {str(name)[:32]!r}"
                ) from None
            if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
                raise ConfigError(f"RECORDS_PERMISSIONS: {role}.{name}: must be a list of actions")
            for raw in actions:
                try:
                    action = Act(raw)
                except ValueError:
                    raise ConfigError(
                        f"RECORDS_PERMISSIONS: {role}.{name}: unknown action {raw[:32]!r}"
                    ) from None
                if action not in CELLS[field_class]:
                    raise ConfigError(f"RECORDS_PERMISSIONS: {role}.{name}: '{action}' does not apply")
                cells.add((field_class, action))
        if cells and role in NO_CUSTOMER_DATA:
            raise ConfigError(f"RECORDS_PERMISSIONS: {role} may not be granted customer data")
        grants[role] = frozenset(cells)
    return Matrix(grants)


def load(setting: object) -> Matrix:
    """The configured matrix: None (the shipped default), a path to a JSON file, or the mapping."""
    if setting is None or isinstance(setting, str | Path):
        path = DEFAULT_FILE if setting is None else Path(setting)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"RECORDS_PERMISSIONS: cannot read {path} ({type(exc).__name__})") from None
        return parse(data)
    return parse(setting)
