"""`make run`'s customer records: a few customers with well-known TEST card numbers and an item or two,
so that a newcomer logging in as the clerk or the supervisor has something to search for and see.

Run by scripts/run-demo.sh with the demo's STRONGROOM_* environment, keyd unsealed. Everything goes
through the app's own records service (webapp/records/service.py) and its input rules, so the cards
and items are encrypted by keyd like any data, and each addition leaves its audit record, as the
web pages' would (audit actor `cli:<os user>`). A record whose CRM reference is already there is left
alone: running the demo again adds nothing twice.

Prints one line per record, card numbers masked (last four digits): a card number never reaches a
terminal or a log, even a test one.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import sqlalchemy as sa
from flask import current_app

from webapp import create_app
from webapp.cli import actor
from webapp.events import Event
from webapp.records import cards as card_rules
from webapp.records import items as item_rules
from webapp.records import service
from webapp.records.formatting import record_resource
from webapp.services import services
from webapp.unit import Origin


@dataclass(frozen=True)
class Card:
    pan: str  # a card scheme's published TEST number: never a real card
    cardholder: str
    month: int


@dataclass(frozen=True)
class Item:
    kind: str  # bank, identity or note (webapp/records/items.py)
    value: str
    doc_type: str = ""


@dataclass(frozen=True)
class Customer:
    crm_ref: str
    cards: tuple[Card, ...]
    items: tuple[Item, ...] = ()


CUSTOMERS = (
    # The first customer has one item of each kind, so that each kind's pages have something to show.
    Customer(
        "C1000001",
        (Card("4111111111111111", "Ada Lovelace", 12), Card("5555555555554444", "Ada Lovelace", 6)),
        (
            Item("note", "Prefers a call back after 3 pm; demo data"),
            # The IBAN registry's own example number (a German account that does not exist).
            Item("bank", "DE89 3704 0044 0532 0130 00"),
            # The number printed on the German passport specimen.
            Item("identity", "C01X00T47", "passport"),
        ),
    ),
    Customer("C1000002", (Card("378282246310005", "Grace Hopper", 9),)),
    Customer("C1000003", (Card("4012888888881881", "Alan Turing", 3),)),
)


def add_customer(customer: Customer, *, who: str) -> str:
    """Add one customer's record, cards and items in the unit of work; returns the line to print."""
    svc = services()
    uow = svc.unit(Origin(actor=who, ip="local"))
    # keyd's actor names have no colon (as `flask --app webapp keys` passes them): cli.<os user>.
    by = who[:64].replace(":", ".")
    try:
        crm_ref = service.check_crm_ref(customer.crm_ref, str(current_app.config["CRM_REF_PATTERN"]))
        found = service.find_records(uow.conn, crm_ref)
        uow.record(
            Event.RECORDS_LISTED, ok=True, resource=f"crm:{crm_ref}", detail=f"rows={len(found)} demo data"
        )
        if found:
            uow.commit()
            return f"  {crm_ref}: already there"
        now = svc.clock.now()
        record_id = service.add_record(uow.conn, crm_ref, actor=by, now=now)
        resource = record_resource(record_id)
        uow.record(Event.RECORD_ADDED, ok=True, resource=resource, detail=f"crm:{crm_ref} demo data")
        shown = []
        for c in customer.cards:
            card = service.NewCard(
                pan=card_rules.parse_pan(c.pan),
                cardholder=card_rules.check_name(c.cardholder),
                expiry=card_rules.check_expiry(c.month, now.year + 3, now=now),
            )
            card_id = service.add_card(uow.conn, svc.vault, record_id, card, actor=by, now=now)
            uow.record(
                Event.CARD_ADDED, ok=True, resource=f"card:{card_id}", detail=f"{resource} {card.pan.brand}"
            )
            shown.append(f"{card.pan.brand} •••• {card.pan.last4}")
        for i in customer.items:
            value, hint = item_rules.check(i.kind, i.value, i.doc_type)
            item_id = service.add_item(uow.conn, svc.vault, record_id, i.kind, value, hint, actor=by, now=now)
            uow.record(Event.ITEM_ADDED, ok=True, resource=f"{i.kind}:{item_id}", detail=resource)
            shown.append(i.kind)
        uow.commit()
        return f"  {crm_ref}: added ({', '.join(shown)})"
    except BaseException:
        uow.rollback()
        raise
    finally:
        uow.close()


def main() -> int:
    app = create_app()
    who = actor()
    with app.app_context():
        try:
            lines = [add_customer(c, who=who) for c in CUSTOMERS]
        except sa.exc.SQLAlchemyError as exc:
            print(
                f"demo data: database error ({type(exc).__name__}); nothing more was added", file=sys.stderr
            )
            return 1
        finally:
            services().engine.dispose()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
