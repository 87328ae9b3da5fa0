"""The real daemon in file mode: round trips, batches, rewrap, rotation, sealing, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from keyd.client import Context, KeydAdminClient
from keyd.errors import BadRequest, IntegrityFailure, KeydError, Sealed, Unavailable
from tests.keyd.conftest import ROOT, Keyd, Running, raw_key, wait_for

CTX = Context("cust-42", "pan")
PAN = b"4111111111111111"


def test_round_trip(running: Running) -> None:
    with running.keyd.client() as c:
        blob = c.encrypt(PAN, context=CTX, actor="alice", purpose="create")
        assert PAN not in blob
        assert blob[0] == 1  # format version
        assert c.decrypt(blob, context=CTX, actor="alice", purpose="reveal") == PAN


def test_empty_and_largest_plaintexts(running: Running) -> None:
    with running.keyd.client() as c:
        for pt in (b"", b"x" * 16384):
            blob = c.encrypt(pt, context=CTX, actor="alice", purpose="t")
            assert c.decrypt(blob, context=CTX, actor="alice", purpose="t") == pt
        with pytest.raises(BadRequest) as info:
            c.encrypt(b"x" * 16385, context=CTX, actor="alice", purpose="t")
        assert info.value.reason == "too_large"


def test_nonces_are_fresh(running: Running) -> None:
    with running.keyd.client() as c:
        blobs = {c.encrypt(PAN, context=CTX, actor="alice", purpose="t") for _ in range(50)}
    assert len(blobs) == 50
    assert len({b[5:17] for b in blobs}) == 50


@pytest.mark.parametrize(
    "context",
    [
        Context("cust-43", "pan"),
        Context("cust-42", "cvv"),
        Context("cust-42", "pan2"),
        Context("cust-4", "2pan"),
    ],
    ids=["other-row", "other-field", "longer-field", "shifted-boundary"],
)
def test_wrong_context_fails(running: Running, context: Context) -> None:
    with running.keyd.client() as c:
        blob = c.encrypt(PAN, context=CTX, actor="alice", purpose="t")
        with pytest.raises(IntegrityFailure) as info:
            c.decrypt(blob, context=context, actor="alice", purpose="t")
    assert info.value.reason == "authentication_failed"


# Each tamper: (what, how to change the ciphertext, exception, reason)
TAMPERS = [
    ("flip-tag-bit", lambda b: b[:-1] + bytes([b[-1] ^ 1]), IntegrityFailure, "authentication_failed"),
    (
        "flip-body-bit",
        lambda b: b[:17] + bytes([b[17] ^ 0x80]) + b[18:],
        IntegrityFailure,
        "authentication_failed",
    ),
    (
        "flip-nonce-bit",
        lambda b: b[:6] + bytes([b[6] ^ 1]) + b[7:],
        IntegrityFailure,
        "authentication_failed",
    ),
    ("truncate-tag", lambda b: b[:-1], IntegrityFailure, "authentication_failed"),
    ("too-short", lambda b: b[:32], IntegrityFailure, "bad_ciphertext"),
    ("format-version-2", lambda b: b"\x02" + b[1:], IntegrityFailure, "bad_ciphertext"),
    ("key-version-0", lambda b: b[:1] + b"\x00\x00\x00\x00" + b[5:], IntegrityFailure, "bad_ciphertext"),
    (
        "unknown-key-version",
        lambda b: b[:1] + b"\x00\x00\x01\x00" + b[5:],
        IntegrityFailure,
        "unknown_key_version",
    ),
    ("appended-byte", lambda b: b + b"\x00", IntegrityFailure, "authentication_failed"),
    ("empty", lambda b: b"", IntegrityFailure, "bad_ciphertext"),
]


@pytest.mark.parametrize(("name", "tamper", "exc", "reason"), TAMPERS, ids=[t[0] for t in TAMPERS])
def test_tampered_ciphertext_fails(
    running: Running, name: str, tamper: object, exc: type, reason: str
) -> None:
    with running.keyd.client() as c:
        blob = c.encrypt(PAN, context=CTX, actor="alice", purpose="t")
        with pytest.raises(exc) as info:
            c.decrypt(tamper(blob), context=CTX, actor="alice", purpose="t")  # type: ignore[operator]
    assert info.value.reason == reason
    # Every refusal of a stored value is an event (tests/keyd/test_damage.py has the whole table).
    assert running.keyd.events()[-1]["event"] == "integrity_failure"


def test_batch_bad_item_fails_alone(running: Running) -> None:
    with running.keyd.client() as c:
        good = [(Context(f"r{i}", "pan"), b"%d" % i) for i in range(100)]
        blobs = c.encrypt_batch(good, actor="alice", purpose="import")
        assert all(isinstance(b, bytes) for b in blobs)
        items = [(ctx, b) for (ctx, _), b in zip(good, blobs, strict=True)]
        items[3] = (Context("r3", "cvv"), items[3][1])  # wrong context
        items[7] = (items[7][0], b"garbage")  # not a ciphertext
        out = c.decrypt_batch(items, actor="alice", purpose="export")  # type: ignore[arg-type]
        for i, result in enumerate(out):
            if i == 3:
                assert isinstance(result, IntegrityFailure)
            elif i == 7:
                assert isinstance(result, IntegrityFailure)
                assert result.reason == "bad_ciphertext"
            else:
                assert result == b"%d" % i
        bad_field = c.encrypt_batch([(CTX, b"a"), (Context("r", "bad field"), b"b")], actor="a", purpose="p")
        assert isinstance(bad_field[0], bytes)
        assert isinstance(bad_field[1], KeydError)
        assert c.encrypt_batch([], actor="a", purpose="p") == []


def test_bad_identifiers_are_refused_before_sending(running: Running) -> None:
    with running.keyd.client() as c:
        for kwargs in (
            {"actor": "", "purpose": "p"},
            {"actor": "a\nb", "purpose": "p"},
            {"actor": "a", "purpose": "x" * 65},
            {"actor": "ä", "purpose": "p"},
        ):
            with pytest.raises(BadRequest):
                c.encrypt(PAN, context=CTX, **kwargs)
        with pytest.raises(BadRequest):
            c.encrypt(PAN, context=Context("", "pan"), actor="a", purpose="p")


def test_threads_share_one_client(running: Running) -> None:
    errors: list[BaseException] = []
    with running.keyd.client() as c:

        def work(n: int) -> None:
            try:
                for i in range(200):
                    ctx = Context(f"t{n}-{i}", "pan")
                    blob = c.encrypt(b"%d-%d" % (n, i), context=ctx, actor="alice", purpose="t")
                    assert c.decrypt(blob, context=ctx, actor="alice", purpose="t") == b"%d-%d" % (n, i)
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_status_and_unavailable(running: Running) -> None:
    with running.keyd.client() as c:
        s = c.status()
    assert (s.sealed, s.mode, s.key_version, s.min_decrypt_version) == (False, "file", 1, 1)
    with (
        KeydAdminClient(running.keyd.base / "nope.sock", timeout=0.5) as c2,
        pytest.raises(Unavailable),
    ):
        c2.status()


def test_rotation_rewrap_and_retire(keyd_factory: object) -> None:
    k: Keyd = keyd_factory()  # type: ignore[operator]
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    k.unseal(key)
    with k.client() as c:
        old = [
            c.encrypt(b"v1-%d" % i, context=Context(f"r{i}", "pan"), actor="a", purpose="t") for i in range(3)
        ]
        assert "key_version: 2" in k.cli("rotate").stdout
        new = c.encrypt(b"v2", context=CTX, actor="a", purpose="t")
        assert int.from_bytes(new[1:5], "big") == 2
        # Old ciphertexts still decrypt until retired.
        assert c.decrypt(old[0], context=Context("r0", "pan"), actor="a", purpose="t") == b"v1-0"
        # Rewrap moves them to version 2 without the plaintext leaving keyd.
        wrapped = c.rewrap(old[0], context=Context("r0", "pan"), actor="a", purpose="rotate")
        assert int.from_bytes(wrapped[1:5], "big") == 2
        assert b"v1-0" not in wrapped
        batch = c.rewrap_batch(
            [(Context(f"r{i}", "pan"), old[i]) for i in (1, 2)], actor="a", purpose="rotate"
        )
        assert all(isinstance(b, bytes) and b[1:5] == b"\x00\x00\x00\x02" for b in batch)
        with pytest.raises(IntegrityFailure):
            c.rewrap(old[1], context=Context("r2", "pan"), actor="a", purpose="rotate")
        versions = k.cli("versions").stdout
        assert "current" in versions
        assert k.cli("retire", "--min-version", "3", check=False).returncode == 1
        assert "min_decrypt_version: 2" in k.cli("retire", "--min-version", "2").stdout
        with pytest.raises(IntegrityFailure) as info:
            c.decrypt(old[0], context=Context("r0", "pan"), actor="a", purpose="t")
        assert info.value.reason == "retired_version"
        with pytest.raises(IntegrityFailure):
            c.rewrap(old[0], context=Context("r0", "pan"), actor="a", purpose="t")
        assert c.decrypt(wrapped, context=Context("r0", "pan"), actor="a", purpose="t") == b"v1-0"
    names = k.event_names()
    assert "rotated" in names
    assert "retired" in names
    assert "retired_version_used" in names
    # Rotation and retirement survive a restart; the same operator key unseals every version.
    k.stop()
    k.start()
    k.unseal(key)
    assert k.status() == {"sealed": False, "key_version": 2, "min": 2}
    with k.client() as c:
        assert c.decrypt(new, context=CTX, actor="a", purpose="t") == b"v2"


def test_passphrase_mode_and_wrong_passphrase(keyd_factory: object) -> None:
    k: Keyd = keyd_factory()  # type: ignore[operator]
    phrase = b"correct horse battery staple, twice over\n"
    k.init(phrase, "--key-kind", "passphrase", "--scrypt-n", "16384")
    state = (k.state_dir / "state.json").read_text()
    assert '"n": 16384' in state
    assert "correct horse" not in state
    k.start()
    k.drop(b"correct horse battery staple, twice ovex\n")
    wait_for(lambda: "wrong_key" in k.event_names(), what="wrong_key event")
    assert k.status()["sealed"] is True
    assert not k.drop_path.exists()
    with k.client() as c, pytest.raises(Sealed):
        c.encrypt(PAN, context=CTX, actor="a", purpose="t")
    k.unseal(phrase)
    with k.client() as c:
        blob = c.encrypt(PAN, context=CTX, actor="a", purpose="t")
        assert c.decrypt(blob, context=CTX, actor="a", purpose="t") == PAN
    assert "correct horse" not in k.log_text()
    assert "correct horse" not in (k.state_dir / "events.jsonl").read_text()


@pytest.mark.parametrize(
    "wrong",
    [b"0" * 64 + b"\n", b"not hex at all\n", b"abcd\n", b"0" * 63 + b"g\n"],
    ids=["other-key", "not-hex", "too-short", "bad-digit"],
)
def test_wrong_raw_key_stays_sealed(keyd_factory: object, wrong: bytes) -> None:
    k: Keyd = keyd_factory()  # type: ignore[operator]
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    k.drop(wrong)
    wait_for(lambda: "wrong_key" in k.event_names(), what="wrong_key event")
    assert k.status()["sealed"] is True
    k.unseal(key)  # and the right key still works afterwards


def test_seal_command_and_sigterm(keyd_factory: object) -> None:
    k: Keyd = keyd_factory()  # type: ignore[operator]
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    with k.client() as c:
        assert c.status().sealed is True  # status answers while sealed
        with pytest.raises(Sealed):
            c.decrypt(b"\x01" + b"\x00" * 40, context=CTX, actor="a", purpose="t")
    k.unseal(key)
    assert "sealed: true" in k.cli("seal").stdout
    assert k.status()["sealed"] is True
    k.unseal(key)
    assert k.stop(signal.SIGTERM) == 0
    assert k.event_names()[-2:] == ["sealed", "stopped"]
    assert not k.socket.exists()


def test_client_reconnects_after_restart(keyd_factory: object) -> None:
    k: Keyd = keyd_factory()  # type: ignore[operator]
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    k.unseal(key)
    c = k.client()
    blob = c.encrypt(PAN, context=CTX, actor="a", purpose="t")
    k.kill()
    with pytest.raises(Unavailable):
        c.status()
    k.start()
    k.unseal(key)
    # The pooled connection died with the old keyd: the client replaces it without the caller noticing.
    assert c.decrypt(blob, context=CTX, actor="a", purpose="t") == PAN
    k.kill()
    k.start()
    assert c.status().sealed is True
    c.close()


def test_admin_commands_need_an_admin_uid(keyd_factory: object) -> None:
    k: Keyd = keyd_factory(extra=["--admin-uid", "12345"])  # type: ignore[operator]
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    k.unseal(key)
    result = k.cli("rotate", check=False)
    assert result.returncode == 1
    assert "forbidden: not_admin" in result.stderr
    assert "admin_refused" in k.event_names()
    assert k.status()["key_version"] == 1


def test_nothing_secret_reaches_the_log_or_the_events(running: Running) -> None:
    with running.keyd.client() as c:
        blob = c.encrypt(PAN, context=CTX, actor="alice", purpose="t")
        c.decrypt(blob, context=CTX, actor="alice", purpose="t")
        with pytest.raises(IntegrityFailure):
            c.decrypt(blob, context=Context("other", "pan"), actor="alice", purpose="t")
    key_hex = running.key.strip().decode()
    for text in (running.keyd.log_text(), (running.keyd.state_dir / "events.jsonl").read_text()):
        assert PAN.decode() not in text
        assert key_hex not in text
        assert key_hex.upper() not in text
        assert blob.hex() not in text
    state = (running.keyd.state_dir / "state.json").read_text()
    assert key_hex not in state


def test_status_into_a_closed_pipe_exits_cleanly(running: Running) -> None:
    """`keyd status | head -0`: the reader is gone before keyd writes. No traceback, exit 1."""
    k = running.keyd
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "keyd", "status", *k.flags()],
            cwd=ROOT,
            env=k.env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
