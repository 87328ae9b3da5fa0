"""Key versions, rewrap and the retire guard against a real keyd, on SQLite and the private MariaDB."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from flask import Flask

from keyd.client import Context, KeydClient, key_version
from keyd.errors import IntegrityFailure
from tests.keyd.conftest import Running
from tests.webapp.keys.conftest import decrypt_all, rotate, seed_cards, stored, utcnow
from webapp.keys import service
from webapp.keys.tables import key_rewrap_checkpoints
from webapp.records.tables import cards


def versions_of(engine: sa.Engine) -> dict[int | None, int]:
    with engine.connect() as conn:
        return service.totals(service.count_versions(conn))


def test_counts_per_table_field_and_version(
    owner_engine: sa.Engine, keyd_client: KeydClient, daemon: Running
) -> None:
    seed_cards(owner_engine, keyd_client, 5)
    assert rotate(daemon) == 2
    seed_cards(owner_engine, keyd_client, 2)
    with owner_engine.connect() as conn:
        counts = service.count_versions(conn)
    got = {(c.table, c.field, c.version): c.count for c in counts}
    assert got == {("cards", f, v): n for f in ("pan", "cardholder", "expiry") for v, n in ((1, 5), (2, 2))}
    assert versions_of(owner_engine) == {1: 15, 2: 6}


def test_rewrap_moves_every_field_and_all_still_decrypt(
    owner_engine: sa.Engine, keyd_client: KeydClient, daemon: Running
) -> None:
    seeded = seed_cards(owner_engine, keyd_client, 40)
    target = rotate(daemon)
    before = stored(owner_engine)
    report = service.Rewrapper(owner_engine, keyd=keyd_client, actor="tester", now=utcnow, batch_size=7).run(
        target
    )
    assert report.ok
    assert report.rewrapped == 120
    assert report.changed_concurrently == 0
    after = stored(owner_engine)
    assert all(key_version(ct) == 2 for ct in after.values())
    assert all(after[k] != before[k] for k in before)  # new ciphertexts, same contexts
    assert decrypt_all(keyd_client, after) == seeded.plaintexts
    with owner_engine.connect() as conn:
        assert conn.execute(sa.select(key_rewrap_checkpoints)).all() == []  # the pass completed
    # A second run finds nothing to do.
    again = service.Rewrapper(owner_engine, keyd=keyd_client, actor="tester", now=utcnow).run(target)
    assert again.rewrapped == 0
    assert again.already_current == 120


def test_a_concurrent_edit_is_not_overwritten(
    owner_engine: sa.Engine, keyd_client: KeydClient, daemon: Running
) -> None:
    seeded = seed_cards(owner_engine, keyd_client, 6)
    target = rotate(daemon)
    edited: dict[str, bytes] = {}

    def web_edit(table: sa.Table, ids: list[object]) -> None:
        # What a web edit does between the job's read and its update: a fresh ciphertext, committed.
        if edited:
            return
        cid = str(ids[0])
        new = keyd_client.encrypt(
            b"edited-pan", context=Context(cid, "pan"), actor="alice", purpose="card.edit"
        )
        with owner_engine.begin() as conn:
            conn.execute(sa.update(cards).where(cards.c.id == cid).values(pan_ct=new))
        edited[cid] = new

    report = service.Rewrapper(
        owner_engine, keyd=keyd_client, actor="tester", now=utcnow, batch_size=9, between=web_edit
    ).run(target)
    (cid,) = edited
    after = stored(owner_engine)
    assert after[(cid, "pan")] == edited[cid]  # the edit won
    assert report.changed_concurrently == 1
    assert report.rewrapped == 17
    expected = dict(seeded.plaintexts) | {(cid, "pan"): b"edited-pan"}
    assert decrypt_all(keyd_client, after) == expected


def test_a_field_keyd_refuses_is_reported_and_left_alone(
    owner_engine: sa.Engine, keyd_client: KeydClient, daemon: Running
) -> None:
    seed_cards(owner_engine, keyd_client, 4)
    target = rotate(daemon)
    before = stored(owner_engine)
    victim = sorted(before)[0]
    bad = bytearray(before[victim])
    bad[-1] ^= 1
    with owner_engine.begin() as conn:
        column = {"pan": cards.c.pan_ct, "cardholder": cards.c.name_ct, "expiry": cards.c.expiry_ct}[
            victim[1]
        ]
        conn.execute(sa.update(cards).where(cards.c.id == victim[0]).values({column.name: bytes(bad)}))
    report = service.Rewrapper(owner_engine, keyd=keyd_client, actor="tester", now=utcnow).run(target)
    assert [(f.row_id, f.field, f.reason) for f in report.failures] == [
        (victim[0], victim[1], "authentication_failed")
    ]
    assert report.rewrapped == 11
    assert stored(owner_engine)[victim] == bytes(bad)
    again = service.Rewrapper(owner_engine, keyd=keyd_client, actor="tester", now=utcnow).run(target)
    assert [(f.row_id, f.field) for f in again.failures] == [victim]  # reported again, never skipped
    assert again.rewrapped == 0


@pytest.mark.parametrize(
    ("min_version", "reason"),
    [
        (0, "at least 1"),
        (-3, "at least 1"),
        (2, "still use versions below 2"),
    ],
)
def test_retire_guard_refuses(
    owner_engine: sa.Engine, keyd_client: KeydClient, daemon: Running, min_version: int, reason: str
) -> None:
    seed_cards(owner_engine, keyd_client, 2)
    rotate(daemon)
    with owner_engine.connect() as conn, pytest.raises(service.KeysRefused, match=reason):
        service.check_retire(conn, min_version)


def test_retire_guard_refuses_garbage_in_an_encrypted_column(
    owner_engine: sa.Engine, keyd_client: KeydClient
) -> None:
    seed_cards(owner_engine, keyd_client, 1)
    with owner_engine.begin() as conn:
        conn.execute(sa.update(cards).values(pan_ct=b"not a ciphertext at all, plainly"))
    with (
        owner_engine.connect() as conn,
        pytest.raises(service.KeysRefused, match="do not hold a keyd ciphertext"),
    ):
        service.check_retire(conn, 1)


@pytest.mark.parametrize(
    ("blob", "expected"),
    [
        (b"", None),
        (b"\x01\x00\x00\x00\x02", None),  # a header alone: too short
        (b"\x02\x00\x00\x00\x01" + bytes(28), None),  # unknown format
        (b"\x01\x00\x00\x00\x00" + bytes(28), None),  # version 0 does not exist
        (b"\x01\x00\x00\x00\x07" + bytes(28), 7),
        (b"\x01\x00\x01\x00\x00" + bytes(40), 65536),
    ],
)
def test_key_version_reads_the_header_strictly(blob: bytes, expected: int | None) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="not a keyd ciphertext"):
            key_version(blob)
    else:
        assert key_version(blob) == expected


def test_key_version_agrees_with_keyd(keyd_client: KeydClient, daemon: Running) -> None:
    ct = keyd_client.encrypt(b"x", context=Context("r", "f"), actor="t", purpose="t")
    assert key_version(ct) == 1
    rotate(daemon)
    assert key_version(keyd_client.rewrap(ct, context=Context("r", "f"), actor="t", purpose="t")) == 2


def test_rewrap_is_not_charged_to_decrypt_budgets(
    owner_engine: sa.Engine, keyd_client: KeydClient, daemon: Running
) -> None:
    """docs/key-rotation.md says rewrap spends no decrypt budget: a keyd with a budget of 5 rewraps 30."""
    seed_cards(owner_engine, keyd_client, 10)
    daemon.keyd.stop()
    daemon.keyd.extra = [a for a in daemon.keyd.extra if "employee.minute" not in a] + [
        "--budget=employee.minute=5"
    ]
    daemon.keyd.start()
    daemon.keyd.unseal(daemon.key)
    with KeydClient(daemon.keyd.socket, timeout=10.0) as fresh:
        target = rotate(daemon)
        report = service.Rewrapper(owner_engine, keyd=fresh, actor="tester", now=utcnow).run(target)
        assert report.ok
        assert report.rewrapped == 30
        blobs = stored(owner_engine)
        results = fresh.decrypt_batch(
            [(Context(c, f), b) for (c, f), b in sorted(blobs.items())], actor="tester", purpose="x"
        )
    assert sum(isinstance(r, bytes) for r in results) == 5  # decrypts are still limited


def test_retire_cli_refused_then_allowed_after_rewrap(
    keys_app: Flask, daemon: Running, keyd_client: KeydClient, owner_engine: sa.Engine
) -> None:
    seed_cards(owner_engine, keyd_client, 3)
    old = stored(owner_engine)
    rotate(daemon)
    runner = keys_app.test_cli_runner()
    refused = runner.invoke(args=["keys", "retire", "--min-version", "2"])
    assert refused.exit_code == 1
    assert "still use versions below 2" in refused.output
    assert keyd_client.status().min_decrypt_version == 1
    listed = runner.invoke(args=["keys", "versions"])
    assert listed.exit_code == 0
    assert "total\t*\t1\t9" in listed.output
    done = runner.invoke(args=["keys", "rewrap", "--batch-size", "4"])
    assert done.exit_code == 0, done.output
    assert "rewrapped=9" in done.output
    ok = runner.invoke(args=["keys", "retire", "--min-version", "2"])
    assert ok.exit_code == 0, ok.output
    assert keyd_client.status().min_decrypt_version == 2
    (cid, f), blob = next(iter(old.items()))
    with pytest.raises(IntegrityFailure):
        keyd_client.decrypt(blob, context=Context(cid, f), actor="t", purpose="t")
    with owner_engine.connect() as conn:
        events = [r.event for r in conn.execute(sa.text("SELECT event, outcome FROM audit_log ORDER BY seq"))]
    assert events == [
        "keys.retire_refused",
        "keys.versions_listed",
        "keys.rewrapped",
        "keys.retired",
    ]
    with owner_engine.connect() as conn:
        mailed = [r.event for r in conn.execute(sa.text("SELECT event FROM outbox"))]
    assert mailed == ["keys.retire_refused"]  # a refused retire reaches the admins; success is not mailed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "rewrap", "--batch-size", "0"], "0 is not in the range"),
        (["keys", "rewrap", "--batch-size", "1001"], "1001 is not in the range"),
        (["keys", "retire", "--min-version", "x"], "not a valid integer"),
        (["keys", "retire"], "Missing option"),
    ],
)
def test_cli_refuses_bad_arguments(keys_app: Flask, args: list[str], message: str) -> None:
    result = keys_app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 2
    assert message in result.output


class Interrupted(Exception):
    pass


def test_a_checkpoint_from_an_older_rotation_is_not_trusted(
    owner_engine: sa.Engine, keyd_client: KeydClient, daemon: Running
) -> None:
    seeded = seed_cards(owner_engine, keyd_client, 30)
    first = rotate(daemon)
    calls: list[int] = []

    def crash_after_one_batch(_table: sa.Table, _ids: list[object]) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted

    job = service.Rewrapper(
        owner_engine, keyd=keyd_client, actor="t", now=utcnow, batch_size=9, between=crash_after_one_batch
    )
    with pytest.raises(Interrupted):
        job.run(first)
    assert {key_version(ct) for ct in stored(owner_engine).values()} == {1, 2}  # one batch was committed
    second = rotate(daemon)  # rotated again before anyone resumed
    report = service.Rewrapper(owner_engine, keyd=keyd_client, actor="t", now=utcnow).run(second)
    assert report.restarted == ["cards"]
    assert {key_version(ct) for ct in stored(owner_engine).values()} == {3}
    assert decrypt_all(keyd_client, stored(owner_engine)) == seeded.plaintexts
