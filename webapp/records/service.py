"""Records and cards in the request's transaction; card secrets only through keyd.

A card's id is random and generated before anything is encrypted, so each ciphertext is bound
(keyd context = card id + field name) to the row it is written into, and the row is inserted only
after every encryption succeeded: keyd sealed or unavailable leaves nothing half-written.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from keyd.client import Context
from keyd.errors import KeydError
from webapp.clock import to_db
from webapp.records.cards import Pan
from webapp.records.errors import Refused
from webapp.records.tables import cards, customer_records, items
from webapp.redact import PAN_MIN, PAN_REFUSAL, contains_pan
from webapp.vault import Vault


def check_crm_ref(value: str, pattern: str) -> str:
    # Whatever pattern the site configured: a card number typed into the search box is named as such.
    if contains_pan(value):
        raise Refused(f"CRM reference: {PAN_REFUSAL}", field="crm_ref", alert=True)
    if not re.fullmatch(pattern, value):
        raise Refused("CRM reference: wrong format", field="crm_ref")
    return value


def add_record(conn: sa.Connection, crm_ref: str, *, actor: str, now: datetime) -> int:
    result = conn.execute(
        sa.insert(customer_records).values(crm_ref=crm_ref, created_at=to_db(now), created_by=actor)
    )
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the database returned no record id")
    return int(key[0])


def find_records(conn: sa.Connection, crm_ref: str) -> list[sa.Row]:
    return list(
        conn.execute(
            sa.select(customer_records)
            .where(customer_records.c.crm_ref == crm_ref)
            .order_by(customer_records.c.id)
        )
    )


# The reads of every record page, built once: building a statement costs more CPU than SQLite takes
# to run it.
_RECORD = sa.select(customer_records).where(customer_records.c.id == sa.bindparam("record_id"))
_RECORD_FOR_UPDATE = _RECORD.with_for_update()
_MASKED_CARDS = (
    sa.select(cards.c.id, cards.c.brand, cards.c.last4, cards.c.created_at, cards.c.retired_at)
    .where(cards.c.record_id == sa.bindparam("record_id"))
    .order_by(cards.c.created_at, cards.c.id)
)
_MASKED_ITEMS = (
    sa.select(items.c.id, items.c.kind, items.c.hint, items.c.created_at, items.c.retired_at)
    .where(
        items.c.record_id == sa.bindparam("record_id"),
        items.c.kind.in_(sa.bindparam("kinds", expanding=True)),
    )
    .order_by(items.c.created_at, items.c.id)
)


def get_record(conn: sa.Connection, record_id: int, *, for_update: bool = False) -> sa.Row | None:
    q = _RECORD_FOR_UPDATE if for_update else _RECORD
    return conn.execute(q, {"record_id": record_id}).one_or_none()


def writable_record(conn: sa.Connection, record_id: int) -> sa.Row | None:
    """The record, locked; Refused when it is retired (retired records are read-only)."""
    row = get_record(conn, record_id, for_update=True)
    if row is not None and row.retired_at is not None:
        raise Refused("record is retired: it is read-only")
    return row


def retire_record(conn: sa.Connection, record_id: int, *, actor: str, now: datetime) -> None:
    conn.execute(
        sa.update(customer_records)
        .where(customer_records.c.id == record_id, customer_records.c.retired_at.is_(None))
        .values(retired_at=to_db(now), retired_by=actor)
    )


def masked_cards(conn: sa.Connection, record_id: int) -> list[sa.Row]:
    """Brand and last four only: the ciphertexts are not even selected (index on record_id)."""
    return list(conn.execute(_MASKED_CARDS, {"record_id": record_id}))


def masked_items(conn: sa.Connection, record_id: int, kinds: tuple[str, ...]) -> list[sa.Row]:
    """Kind and hint only, for the kinds the caller may see."""
    if not kinds:
        return []
    return list(conn.execute(_MASKED_ITEMS, {"record_id": record_id, "kinds": list(kinds)}))


def get_card(conn: sa.Connection, record_id: int, card_id: str) -> sa.Row | None:
    return conn.execute(
        sa.select(cards.c.id, cards.c.brand, cards.c.last4, cards.c.retired_at, cards.c.created_at).where(
            cards.c.id == card_id, cards.c.record_id == record_id
        )
    ).one_or_none()


def get_item(conn: sa.Connection, record_id: int, kind: str, item_id: str) -> sa.Row | None:
    """The item of this record and this kind (the URL's kind is what the permission matrix checked)."""
    return conn.execute(
        sa.select(items.c.id, items.c.kind, items.c.hint, items.c.retired_at, items.c.created_at).where(
            items.c.id == item_id, items.c.record_id == record_id, items.c.kind == kind
        )
    ).one_or_none()


def get_object(conn: sa.Connection, record_id: int, kind: str, obj_id: str) -> sa.Row | None:
    """The card (kind "card") or item of this record that a URL names."""
    return get_card(conn, record_id, obj_id) if kind == "card" else get_item(conn, record_id, kind, obj_id)


def writable(row: sa.Row | None, what: str) -> None:
    if row is not None and row.retired_at is not None:
        raise Refused(f"{what} is retired: it is read-only")


@dataclass(frozen=True)
class NewCard:
    pan: Pan
    cardholder: str
    expiry: str  # MM/YYYY


_PAN_LONG_RUN = re.compile(rf"[0-9]{{{PAN_MIN}}}")  # the shortest card number, as a hex id could spell it


def new_id() -> str:
    """A card's or item's id: 128 random bits as 32 lowercase hex, with no run of 13 digits, so that
    no scan for card numbers (the audit's masking, the pages', the API's answers, a log scan) can
    ever take an id for one. About one id in 25 is drawn again: a negligible loss of randomness."""
    while True:
        candidate = secrets.token_hex(16)
        if not _PAN_LONG_RUN.search(candidate):
            return candidate


def _seal(
    vault: Vault, card_id: str, fields: Sequence[tuple[str, str]], *, actor: str, purpose: str
) -> list[bytes]:
    """A card's fields, each under its own context (card id, field name), in one keyd round trip.
    Any field keyd refuses raises its error: nothing is stored half-sealed."""
    sealed = vault.encrypt_batch(
        [(Context(card_id, field), value.encode("utf-8")) for field, value in fields],
        actor=actor,
        purpose=purpose,
    )
    for result in sealed:
        if isinstance(result, KeydError):
            raise result
    return [r for r in sealed if isinstance(r, bytes)]


def add_card(
    conn: sa.Connection, vault: Vault, record_id: int, card: NewCard, *, actor: str, now: datetime
) -> str:
    card_id = new_id()
    # All three first: Sealed/Unavailable raised here leaves the transaction without a card row.
    pan_ct, name_ct, expiry_ct = _seal(
        vault,
        card_id,
        [("pan", card.pan.digits), ("cardholder", card.cardholder), ("expiry", card.expiry)],
        actor=actor,
        purpose="card.add",
    )
    conn.execute(
        sa.insert(cards).values(
            id=card_id,
            record_id=record_id,
            brand=card.pan.brand,
            last4=card.pan.last4,
            pan_ct=pan_ct,
            name_ct=name_ct,
            expiry_ct=expiry_ct,
            created_at=to_db(now),
            created_by=actor,
        )
    )
    return card_id


def edit_card(
    conn: sa.Connection,
    vault: Vault,
    card_id: str,
    *,
    cardholder: str,
    expiry: str,
    actor: str,
    now: datetime,
) -> None:
    """Re-encrypt cardholder and expiry under the same id (same context); the PAN never changes:
    a new number is a new card."""
    name_ct, expiry_ct = _seal(
        vault, card_id, [("cardholder", cardholder), ("expiry", expiry)], actor=actor, purpose="card.edit"
    )
    conn.execute(
        sa.update(cards)
        .where(cards.c.id == card_id, cards.c.retired_at.is_(None))
        .values(name_ct=name_ct, expiry_ct=expiry_ct, updated_at=to_db(now), updated_by=actor)
    )


def retire_card(conn: sa.Connection, card_id: str, *, actor: str, now: datetime) -> None:
    conn.execute(
        sa.update(cards)
        .where(cards.c.id == card_id, cards.c.retired_at.is_(None))
        .values(retired_at=to_db(now), retired_by=actor)
    )


def add_item(
    conn: sa.Connection,
    vault: Vault,
    record_id: int,
    kind: str,
    value: str,
    hint: str,
    *,
    actor: str,
    now: datetime,
) -> str:
    item_id = new_id()
    value_ct = vault.encrypt(
        value.encode("utf-8"), context=Context(item_id, "value"), actor=actor, purpose=f"{kind}.add"
    )
    conn.execute(
        sa.insert(items).values(
            id=item_id,
            record_id=record_id,
            kind=kind,
            hint=hint,
            value_ct=value_ct,
            created_at=to_db(now),
            created_by=actor,
        )
    )
    return item_id


def edit_item(
    conn: sa.Connection,
    vault: Vault,
    item_id: str,
    kind: str,
    value: str,
    hint: str,
    *,
    actor: str,
    now: datetime,
) -> None:
    value_ct = vault.encrypt(
        value.encode("utf-8"), context=Context(item_id, "value"), actor=actor, purpose=f"{kind}.edit"
    )
    conn.execute(
        sa.update(items)
        .where(items.c.id == item_id, items.c.retired_at.is_(None))
        .values(value_ct=value_ct, hint=hint, updated_at=to_db(now), updated_by=actor)
    )


def retire_item(conn: sa.Connection, item_id: str, *, actor: str, now: datetime) -> None:
    conn.execute(
        sa.update(items)
        .where(items.c.id == item_id, items.c.retired_at.is_(None))
        .values(retired_at=to_db(now), retired_by=actor)
    )


_FIELDS = {
    "pan": cards.c.pan_ct,
    "cardholder": cards.c.name_ct,
    "expiry": cards.c.expiry_ct,
    "value": items.c.value_ct,
}


def unchecked_decrypt(
    conn: sa.Connection, vault: Vault, card_id: str, field: str, *, actor: str, purpose: str
) -> bytes:
    """¡DANGER! Decrypts a card or item field with no permission, step-up or budget check of its own.

    Only the reveal view calls this, after the matrix, the one-time step-up token, the password and
    the reason have all passed. The row's own id is the keyd context, so a ciphertext copied from
    another row fails (IntegrityFailure).
    """
    column = _FIELDS[field]
    blob = conn.execute(sa.select(column).where(column.table.c.id == card_id)).scalar_one()
    return vault.decrypt(bytes(blob), context=Context(card_id, field), actor=actor, purpose=purpose)
