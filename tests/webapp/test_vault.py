"""webapp/vault.py: `Vault` is exactly what the web app calls on keyd's client, every stand-in has
the same signatures, the missing client refuses every call, and the records service works through
any of them (the in-memory fake here; the real keyd in test_records.py and the reveal suites)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask import Flask

from keyd.client import Context, KeydClient
from keyd.errors import IntegrityFailure, Sealed, Unavailable
from tests.webapp.fakes import FakeVault
from webapp.records import service
from webapp.records.cards import parse_pan
from webapp.records.tables import cards
from webapp.vault import MissingKeydClient, Vault, make_vault, require_open

# status: home page, health check, key commands; encrypt/decrypt: records; encrypt_batch: the bulk
# import; rewrap_batch: key rotation.
CALLED_BY_THE_WEB_APP = ("decrypt", "encrypt", "encrypt_batch", "rewrap_batch", "status")
CTX = Context("0" * 32, "pan")


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_the_interface_is_what_the_web_app_calls_on_keyd() -> None:
    declared = _methods(Vault)
    assert sorted(declared) == list(CALLED_BY_THE_WEB_APP)
    for name, signature in declared.items():
        assert signature == inspect.signature(getattr(KeydClient, name)), name


@pytest.mark.parametrize("stand_in", [MissingKeydClient, FakeVault])
def test_every_stand_in_has_exactly_the_interface(stand_in: type) -> None:
    assert _methods(stand_in) == _methods(Vault)


MISSING_CALLS: list[tuple[str, Callable[[MissingKeydClient], object]]] = [
    ("status", lambda v: v.status()),
    ("encrypt", lambda v: v.encrypt(b"x", context=CTX, actor="a", purpose="p")),
    ("decrypt", lambda v: v.decrypt(b"x", context=CTX, actor="a", purpose="p")),
    ("encrypt_batch", lambda v: v.encrypt_batch([(CTX, b"x")], actor="a", purpose="p")),
    ("rewrap_batch", lambda v: v.rewrap_batch([(CTX, b"x")], actor="a", purpose="p")),
]


@pytest.mark.parametrize(("name", "call"), MISSING_CALLS, ids=[n for n, _ in MISSING_CALLS])
def test_the_missing_client_refuses_every_call(
    name: str, call: Callable[[MissingKeydClient], object]
) -> None:
    assert sorted(n for n, _ in MISSING_CALLS) == list(CALLED_BY_THE_WEB_APP)
    with pytest.raises(Unavailable):
        call(MissingKeydClient())


def test_the_real_client_is_made_from_the_settings() -> None:
    vault = make_vault("/nonexistent/keyd.sock", timeout=0.5)
    assert isinstance(vault, KeydClient)
    with pytest.raises(Unavailable):
        require_open(vault)
    vault.close()


def test_a_sealed_vault_is_not_open() -> None:
    fake = FakeVault()
    assert require_open(fake).sealed is False
    fake.sealed = True
    with pytest.raises(Sealed):
        require_open(fake)


def _add_card(app: Flask, vault: Vault) -> str:
    svc = app.extensions["strongroom"]
    card = service.NewCard(pan=parse_pan("4111 1111 1111 1111"), cardholder="Ada Lovelace", expiry="12/2028")
    with svc.engine.begin() as conn:
        record_id = service.add_record(conn, "C1234567", actor="t", now=svc.clock.now())
        return service.add_card(conn, vault, record_id, card, actor="t", now=svc.clock.now())


def _card_rows(app: Flask) -> int:
    with app.extensions["strongroom"].engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(cards)).scalar_one())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_records_service_stores_and_opens_through_the_vault(app: Flask, vault: FakeVault) -> None:
    card_id = _add_card(app, vault)
    with app.extensions["strongroom"].engine.connect() as conn:
        (pan_ct,) = conn.execute(sa.select(cards.c.pan_ct).where(cards.c.id == card_id)).one()
        assert b"4111" not in pan_ct
        got = service.unchecked_decrypt(conn, vault, card_id, "pan", actor="t", purpose="test")
        assert got == b"4111111111111111"
        # Bound to its row and field: the name's ciphertext does not open as the number.
        (name_ct,) = conn.execute(sa.select(cards.c.name_ct).where(cards.c.id == card_id)).one()
        conn.execute(sa.update(cards).where(cards.c.id == card_id).values(pan_ct=name_ct))
        with pytest.raises(IntegrityFailure):
            service.unchecked_decrypt(conn, vault, card_id, "pan", actor="t", purpose="test")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("broken", ["missing", "sealed"])
def test_without_an_open_vault_no_card_is_written(app: Flask, vault: FakeVault, broken: str) -> None:
    vault.sealed = broken == "sealed"
    chosen: Vault = MissingKeydClient() if broken == "missing" else vault
    with pytest.raises(Unavailable if broken == "missing" else Sealed):
        _add_card(app, chosen)
    assert _card_rows(app) == 0
