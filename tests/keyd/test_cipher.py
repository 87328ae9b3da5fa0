"""Sealing, opening, associated data and key derivation, without the daemon (the layout: test_envelope.py)."""

from __future__ import annotations

import os

import pytest

from keyd import cipher, envelope


def test_format_and_associated_data() -> None:
    aead = cipher.FileAead(os.urandom(32))
    blob = cipher.encrypt(aead, 7, b"hello", b"rec", b"pan")
    version, head, nonce, body = envelope.split(blob)
    assert (version, head, len(nonce), len(body)) == (7, b"\x01\x00\x00\x00\x07", 12, 5 + 16)
    assert aead.open(nonce, body, cipher.associated_data(head, b"rec", b"pan")) == b"hello"
    # The length prefixes keep ("re", "cpan") apart from ("rec", "pan").
    with pytest.raises(cipher.AuthenticationFailed):
        aead.open(nonce, body, cipher.associated_data(head, b"re", b"cpan"))
    # The header is authenticated: relabelling the key version fails.
    with pytest.raises(cipher.AuthenticationFailed):
        aead.open(nonce, body, cipher.associated_data(envelope.header(8), b"rec", b"pan"))


def test_version_keys_differ_and_are_deterministic() -> None:
    master = os.urandom(32)
    salt = os.urandom(32)
    k1 = cipher.derive_version_key(master, salt=salt, version=1)
    assert k1 == cipher.derive_version_key(master, salt=salt, version=1)
    assert k1 != cipher.derive_version_key(master, salt=salt, version=2)
    assert k1 != cipher.derive_version_key(master, salt=os.urandom(32), version=1)


def test_key_check_value() -> None:
    aead = cipher.FileAead(os.urandom(32))
    nonce, kcv = cipher.make_kcv(aead, 1)
    assert cipher.check_kcv(aead, 1, nonce, kcv)
    assert not cipher.check_kcv(aead, 2, nonce, kcv)
    assert not cipher.check_kcv(cipher.FileAead(os.urandom(32)), 1, nonce, kcv)


def test_a_batch_makes_what_a_single_encrypt_makes() -> None:
    # encrypt_many lays its ciphertexts out inline (a call per field costs): they must split the same.
    aead = cipher.FileAead(os.urandom(32))
    items = [(b"rec", b"pan", b"4111111111111111", None), (b"rec2", b"note", b"", None)]
    for blob, (record_id, field, plaintext, _) in zip(
        cipher.encrypt_many(aead, 3, items), items, strict=True
    ):
        version, head, nonce, body = envelope.split(blob)
        assert (version, head, len(blob)) == (3, envelope.header(3), len(plaintext) + envelope.OVERHEAD)
        assert aead.open(nonce, body, cipher.associated_data(head, record_id, field)) == plaintext


def test_key_length_is_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        cipher.FileAead(b"short")


def test_encrypt_many_refuses_an_item_that_failed_validation() -> None:
    aead = cipher.FileAead(os.urandom(32))
    with pytest.raises(ValueError, match="failed validation"):
        cipher.encrypt_many(aead, 1, [(b"r", b"f", b"ok", None), (b"r", b"f", b"bad", "bad_field")])
