"""keyd's event spool read by the watchdog: a REAL keyd produces the events (a wrong key through its
drop file, a refused drop file, a peer with a uid keyd does not allow, an exhausted budget), the
watchdog reads its spool, and the outbox holds one bare alert per kind with counts only. Then the
hostile spools: symlink, FIFO, foreign owner, garbage lines, a line without end. The key-custody events
become records of the web app's audit chain, exactly once, on SQLite and on a private MariaDB as the
web app's own database user."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyd.client import Context, KeydClient
from keyd.errors import Forbidden, QuotaExceeded
from keyd.events import ALERTS, Event, SpoolSink, Value
from ops.checks import Context as CheckContext
from ops.checks import keyd_events
from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.fixtures.mariadb import mariadb  # noqa: F401 - the session fixture
from tests.keyd.conftest import NOBODY, Keyd, raw_key, wait_for
from tests.keyd.test_shares_daemon import drop_and_wait, init_shares, unseal_stdin
from tests.ops.conftest import queued
from tests.support import need_root
from tests.webapp.conftest import MariaBackend, maria_backend  # noqa: F401 - the session fixture
from tests.webapp.helpers import refuse_audit_inserts
from webapp.audit.service import verify
from webapp.db.engine import make_engine
from webapp.db.tables import audit_log
from webapp.events import Event as AuditEvent

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
TIGHT = [
    *(f"--budget=employee.{w}=2" for w in ("minute", "hour", "day")),
    *(f"--budget=global.{w}=1000" for w in ("minute", "hour", "day")),
]


def _pass(settings: Settings, engine: sa.Engine) -> None:
    run_pass(settings, state=StateDir(settings.state_dir), engine=engine, now=NOW, only=("keyd_events",))


def _as_nobody(sock: Path, group: int) -> str:
    """Connect to keyd as uid nobody, in the socket dir's group (so only keyd's peer check stops it)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        try:
            os.setgroups([group])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                with KeydClient(sock, timeout=3) as c:
                    c.status()
                result = "served"
            except Forbidden as exc:
                result = f"forbidden:{exc.reason}"
        except BaseException as exc:  # noqa: BLE001 - reported to the parent through the pipe
            result = f"error:{type(exc).__name__}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        result = f.read()
    os.waitpid(pid, 0)
    return result


def _kinds(engine: sa.Engine) -> dict[str, str]:
    return {event: detail for event, _, detail in queued(engine)}


def test_a_real_keyds_security_events_reach_the_outbox(
    keyd_factory: Callable[..., Keyd], make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    k = keyd_factory(extra=TIGHT)
    key = raw_key()
    k.init(key, "--key-kind", "raw")
    k.start()
    s = make_settings(keyd_spool=str(k.state_dir / "events.jsonl"), keyd_user="root")

    k.drop(b"0" * 64 + b"\n")  # the wrong key, through the real drop-file path
    wait_for(lambda: "wrong_key" in k.event_names(), what="wrong_key")
    k.drop(key, mode=0o644)  # readable by others: refused, the secret is treated as exposed
    wait_for(lambda: "drop_file_refused" in k.event_names(), what="drop_file_refused")
    k.drop_path.unlink()
    assert _as_nobody(k.socket, os.stat(k.socket.parent).st_gid) == "forbidden:peer_not_allowed"
    assert _as_nobody(k.socket, os.stat(k.socket.parent).st_gid) == "forbidden:peer_not_allowed"
    k.unseal(key)
    ctx = Context("r1", "pan")
    with k.client() as c:
        blob = c.encrypt(b"4111111111111111", context=ctx, actor="alice", purpose="t")
        for _ in range(2):
            c.decrypt(blob, context=ctx, actor="alice", purpose="reveal")
        with pytest.raises(QuotaExceeded):
            c.decrypt(blob, context=ctx, actor="alice", purpose="reveal")
    wait_for(lambda: "budget_exceeded" in k.event_names(), what="budget_exceeded")

    _pass(s, engine)
    kinds = _kinds(engine)
    expected = {
        "ops.keyd_wrong_key": "events=1",
        "ops.keyd_drop_file_refused": "events=1",
        "ops.keyd_peer_refused": "events=2",  # coalesced: one alert, a count
        "ops.keyd_budget_exceeded": "events=1",
    }
    # Running as root in a test, keyd may report degraded hardening (no mlock here): also an alarm.
    assert {n: d for n, d in kinds.items() if n != "ops.keyd_hardening_degraded"} == expected
    # Routine events (started, unsealed) are not mailed; nothing from the events' fields leaves.
    rows = " ".join(f"{r} {d}" for _, r, d in queued(engine))
    for secret in ("alice", "reveal", "65534", "bad_mode", "4111"):
        assert secret not in rows

    _pass(s, engine)  # nothing new: nothing queued
    assert len(queued(engine)) == len(kinds)
    assert _as_nobody(k.socket, os.stat(k.socket.parent).st_gid) == "forbidden:peer_not_allowed"
    _pass(s, engine)
    assert queued(engine)[len(kinds) :] == [("ops.keyd_peer_refused", str(s.keyd_spool), "events=1")]
    state = StateDir(s.state_dir).load("check-keyd_events")
    assert state is not None
    assert state["routine"] == {"started": 1, "unsealed": 1}


def test_every_keyd_alarm_has_its_own_alert_and_routine_events_have_none() -> None:
    assert set(keyd_events.ALARMS) == ALERTS
    assert len(set(keyd_events.ALARMS.values())) == len(ALERTS)
    routine = set(Event) - ALERTS
    # The custodians' record (who split, acknowledged, delivered, combined) is kept, never mailed.
    custodians = {"shares_split", "share_acknowledged", "share_delivered", "shares_combined"}
    life = {"started", "stopped", "unsealed", "sealed", "rotated", "retired"}
    rekeying = {"rekeyed", "rekey_refused", "secret_retired"}
    assert {e.value for e in routine} == life | custodians | rekeying
    # The custody record in the audit chain: the custodians' and re-keying events, key versions
    # rotated and retired, and the shares keyd refused (those are alarms as well).
    refused = {"share_refused", "share_duplicate", "share_timed_out"}
    assert {e.value for e in keyd_events.CUSTODY} == custodians | rekeying | refused | {"rotated", "retired"}
    failures = {e.value for e, ok in keyd_events.CUSTODY.items() if not ok}
    assert failures == refused | {"rekey_refused"}
    doc = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    for event in Event:
        assert f"`{event.value}`" in doc
    for alert in keyd_events.ALARMS.values():
        assert f"`{alert.value}`" in doc


GOOD = {"ts": 1.5, "event": "wrong_key", "mode": "raw", "reason": "kcv"}


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (json.dumps(GOOD).encode(), Event.WRONG_KEY),
        (json.dumps({"ts": 3, "event": "started", "uid": 0}).encode(), Event.STARTED),
        (b"not json", None),
        (b"", None),
        (b"\xff\xfe garbage", None),
        (b"[" * 5000 + b"]" * 5000, None),  # over the bound (and deep enough to recurse)
        (b"[" * 2000 + b"]" * 2000, None),  # under the bound, still not an object
        (json.dumps({**GOOD, "pad": "x" * 5000}).encode(), None),  # over the line bound
        (json.dumps(["wrong_key"]).encode(), None),
        (json.dumps({"event": "wrong_key"}).encode(), None),  # no ts
        (json.dumps({"ts": True, "event": "wrong_key"}).encode(), None),
        (json.dumps({"ts": "1", "event": "wrong_key"}).encode(), None),
        (json.dumps({"ts": 1, "event": "drop_tables"}).encode(), None),  # an unknown kind
        (json.dumps({"ts": 1, "event": 7}).encode(), None),
        (json.dumps({"ts": 1, "event": "peer_refused", "uid": [1]}).encode(), None),
        (json.dumps({"ts": 1, "event": "peer_refused", "uid": None}).encode(), None),
        (json.dumps({"ts": 1, "event": "peer_refused", "ok": True}).encode(), None),
        (json.dumps({"ts": 1, "event": "peer_refused", **{f"f{i}": i for i in range(20)}}).encode(), None),
    ],
    ids=[
        "alarm",
        "routine",
        "not-json",
        "empty",
        "bad-utf8",
        "deep-and-long",
        "deep-array",
        "long",
        "array",
        "no-ts",
        "bool-ts",
        "str-ts",
        "unknown-kind",
        "int-kind",
        "list-field",
        "null-field",
        "bool-field",
        "too-many-fields",
    ],
)
def test_parse_is_strict(line: bytes, kind: Event | None) -> None:
    assert keyd_events.parse(line) == kind


def _spool(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_garbage_lines_are_counted_and_alerted_next_to_the_real_events(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    good = json.dumps(GOOD).encode()
    spool = _spool(tmp_path, [good, b"{broken", good, b'{"ts":1,"event":"nope"}'])
    s = make_settings(keyd_spool=str(spool), keyd_user="root")
    _pass(s, engine)
    assert queued(engine) == [
        ("ops.keyd_wrong_key", str(spool), "events=2"),
        ("ops.check_failed", "keyd_events", "malformed_lines=2"),
    ]


def _symlink(tmp_path: Path) -> Path:
    real = _spool(tmp_path, [json.dumps(GOOD).encode()])
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    return link


def _fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo.jsonl"
    os.mkfifo(path)
    return path


def _foreign(tmp_path: Path) -> Path:
    path = _spool(tmp_path, [json.dumps(GOOD).encode()])
    os.chown(path, NOBODY, -1)
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_symlink, "OSError: Too many levels of symbolic links"),
        (_fifo, "LogRefused: fifo.jsonl is not a regular file"),
        (_foreign, f"LogRefused: events.jsonl is owned by uid {NOBODY}, not by its writer (uid 0)"),
        (lambda p: p / "absent.jsonl", "FileNotFoundError: No such file or directory"),
    ],
    ids=["symlink", "fifo", "foreign-owner", "missing"],
)
def test_a_spool_that_is_not_keyds_is_not_read(
    tmp_path: Path,
    make_settings: Callable[..., Settings],
    engine: sa.Engine,
    make: Callable[[Path], Path],
    reason: str,
) -> None:
    if make is _foreign:
        need_root()  # chown
    s = make_settings(keyd_spool=str(make(tmp_path)), keyd_user="root")
    _pass(s, engine)
    assert queued(engine) == [("ops.check_failed", "keyd_events", reason)]


def test_an_unknown_keyd_user_is_a_failed_check(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    spool = _spool(tmp_path, [json.dumps(GOOD).encode()])
    s = make_settings(keyd_spool=str(spool), keyd_user="no-such-user-here")
    _pass(s, engine)
    assert queued(engine) == [
        ("ops.check_failed", "keyd_events", "keyd_user 'no-such-user-here' does not exist")
    ]


def test_a_line_without_end_longer_than_a_read_is_refused_every_pass(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    spool = tmp_path / "events.jsonl"
    spool.write_bytes(b"x" * 5000)
    s = make_settings(keyd_spool=str(spool), keyd_user="root", max_read_bytes=4096)
    _pass(s, engine)
    assert queued(engine) == [
        ("ops.check_failed", "keyd_events", "LogRefused: a line longer than 4096 bytes")
    ]


def test_events_written_while_the_spool_was_refused_still_alert_afterwards(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    need_root()  # chown
    spool = _spool(tmp_path, [json.dumps(GOOD).encode()])
    s = make_settings(keyd_spool=str(spool), keyd_user="root")
    _pass(s, engine)
    os.chown(spool, NOBODY, -1)
    with spool.open("ab") as fh:
        fh.write(json.dumps({**GOOD, "event": "peer_refused"}).encode() + b"\n")
    _pass(s, engine)  # refused: the position stays
    os.chown(spool, 0, -1)
    _pass(s, engine)
    assert [e for e, _, _ in queued(engine)] == [
        "ops.keyd_wrong_key",
        "ops.check_failed",
        "ops.keyd_peer_refused",
    ]


def test_a_truncated_spool_is_a_gap(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    good = json.dumps(GOOD).encode()
    spool = _spool(tmp_path, [good, good])
    s = make_settings(keyd_spool=str(spool), keyd_user="root")
    _pass(s, engine)
    spool.write_bytes(good + b"\n")  # same inode, shorter: copytruncate, or someone hiding events
    _pass(s, engine)
    assert queued(engine)[1:] == [
        ("ops.keyd_wrong_key", str(spool), "events=1"),
        ("ops.log_gap", "keyd_events", "log shrank (truncated)"),
    ]


# ---- the custody record in the audit chain ---------------------------------------------------------


@dataclass
class AuditDb:
    url: str  # what the watchdog connects as: on MariaDB the web app's user, with grants.sql only
    engine: sa.Engine
    owner: sa.Engine  # to break the database on purpose


@pytest.fixture(params=["sqlite", "mariadb"])
def audit_db(request: pytest.FixtureRequest, db_url: str) -> Iterator[AuditDb]:
    if request.param == "sqlite":
        url, owner_url = db_url, db_url
    else:
        backend: MariaBackend = request.getfixturevalue("maria_backend")
        backend.reset()
        url, owner_url = backend.url, backend.root_url
    db = AuditDb(url, make_engine(url), make_engine(owner_url))
    yield db
    db.engine.dispose()
    db.owner.dispose()


def _audited(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).all())


def _custody(engine: sa.Engine) -> list[tuple[str, str, str, str]]:
    """(kind, outcome, actor, spool line name) of every keyd.custody record, oldest first."""
    out = []
    for r in _audited(engine):
        assert r.event == AuditEvent.KEYD_CUSTODY
        assert r.resource == "keyd"
        words = r.detail.split(" ")
        out.append(
            (words[keyd_events.NAME_PARTS], r.outcome, r.actor, " ".join(words[1 : keyd_events.NAME_PARTS]))
        )
    return out


def _chain_ok(engine: sa.Engine, records: int) -> None:
    with engine.connect() as conn:
        result = verify(conn)
    assert result.ok, result.problems
    assert result.checked == records


def test_a_real_keyds_custody_record_is_in_the_audit_chain_once(
    keyd_factory: Callable[..., Keyd], make_settings: Callable[..., Settings], audit_db: AuditDb
) -> None:
    k = keyd_factory()
    texts = init_shares(k)  # split, and each custodian acknowledges a share
    k.start()
    drop_and_wait(k, b"not a share\n", "share_refused")
    assert unseal_stdin(k, texts[3]).returncode == 0
    unseal_stdin(k, texts[3])  # the same share again: a duplicate
    wait_for(lambda: "share_duplicate" in k.event_names(), what="share_duplicate")
    assert unseal_stdin(k, texts[1]).returncode == 0  # combined, unsealed
    assert "key_version: 2" in k.cli("rotate").stdout
    s = make_settings(
        keyd_spool=str(k.state_dir / "events.jsonl"), keyd_user="root", database_url=audit_db.url
    )

    _pass(s, audit_db.engine)
    got = _custody(audit_db.engine)
    custody = {e.value for e in keyd_events.CUSTODY}
    assert [kind for kind, *_ in got] == [e["event"] for e in k.events() if e["event"] in custody]
    assert [(kind, outcome, actor) for kind, outcome, actor, _ in got[4:]] == [
        ("share_refused", "failure", "uid:0"),  # dropped by hand: the drop file's owner
        ("share_delivered", "success", "custodian1"),  # keyd unseal --stdin under sudo
        ("share_duplicate", "failure", "custodian1"),
        ("share_delivered", "success", "custodian1"),
        ("shares_combined", "success", "keyd"),
        ("rotated", "success", got[-1][2]),
    ]
    assert [kind for kind, *_ in got[:4]] == ["shares_split", *["share_acknowledged"] * 3]
    details = [r.detail for r in _audited(audit_db.engine)]
    assert " custodian=bob " in details[2] + " "
    assert re.search(
        r" share_delivered keyd_at=\d{4}-\d\d-\d\dT[\d:.]+Z index=3 login=custodian1 ", details[5]
    )
    _chain_ok(audit_db.engine, len(got))
    # The refused share still rings, once, as a bare alert.
    assert ("ops.keyd_share_refused", str(s.keyd_spool), "events=1") in queued(audit_db.engine)

    _pass(s, audit_db.engine)  # nothing new in the spool: nothing appended
    assert _custody(audit_db.engine) == got
    # Neither a share nor any part of one reached the chain, the outbox or the watchdog's state.
    stored = " ".join(" ".join(map(str, r)) for r in _audited(audit_db.engine))
    stored += " ".join(" ".join(r) for r in queued(audit_db.engine))
    stored += " ".join(p.read_text() for p in Path(s.state_dir).iterdir() if p.is_file())
    for text in texts.values():
        groups = text.split("-")[2:]  # after the prefix and the index: the value and its check
        for needle in (text, "".join(groups), "-".join(groups[:3]), "".join(groups[:3])):
            assert needle.lower() not in stored.lower()


def _spool_of(
    path: Path, events: list[tuple[Event, dict[str, Value]]], *, ts: float = 1_795_000_000.0
) -> None:
    """Events as keyd writes them: through its own SpoolSink."""
    sink = SpoolSink(path, clock=lambda: ts)
    try:
        for event, fields in events:
            sink.emit(event, **fields)
    finally:
        sink.close()


CEREMONY: list[tuple[Event, dict[str, Value]]] = [
    (Event.STARTED, {"uid": 0}),
    (Event.SHARES_SPLIT, {"threshold": 2, "count": 3, "uid": 0, "login": "olga"}),
    (Event.SHARE_DELIVERED, {"index": 1, "received": 1, "threshold": 2, "uid": 1001, "login": "alice"}),
    (Event.SHARE_REFUSED, {"reason": "wrong_share", "index": 2, "uid": 1002}),
]


def test_a_crash_between_the_append_and_the_state_save_appends_nothing_twice(
    tmp_path: Path, make_settings: Callable[..., Settings], audit_db: AuditDb
) -> None:
    spool = tmp_path / "events.jsonl"
    _spool_of(spool, CEREMONY)
    s = make_settings(keyd_spool=str(spool), keyd_user="root", database_url=audit_db.url)
    # What the runner does, up to the crash: the check ran (and appended), its state was never saved.
    ctx = CheckContext(settings=s, now=NOW, state=None, baseline=None, engine=audit_db.engine)
    assert keyd_events.run(ctx).state is not None
    first = _custody(audit_db.engine)
    assert [(kind, outcome, actor) for kind, outcome, actor, _ in first] == [
        ("shares_split", "success", "olga"),
        ("share_delivered", "success", "alice"),
        ("share_refused", "failure", "uid:1002"),
    ]
    # keyd went on meanwhile (same line, same second: two events, two records).
    _spool_of(spool, [CEREMONY[2], CEREMONY[2]], ts=1_795_000_100.0)
    _pass(s, audit_db.engine)  # reads from the start again: the three are in the chain already
    again = _custody(audit_db.engine)
    assert again[:3] == first
    assert [kind for kind, *_ in again[3:]] == ["share_delivered", "share_delivered"]
    assert len({name for *_, name in again}) == 5
    _pass(s, audit_db.engine)
    assert _custody(audit_db.engine) == again
    _chain_ok(audit_db.engine, 5)
    state = StateDir(s.state_dir).load("check-keyd_events")
    assert state is not None
    assert state["position"]["offset"] == spool.stat().st_size


def test_a_failing_audit_append_fails_the_check_and_loses_no_event(
    tmp_path: Path, make_settings: Callable[..., Settings], audit_db: AuditDb
) -> None:
    spool = tmp_path / "events.jsonl"
    _spool_of(spool, CEREMONY)
    s = make_settings(keyd_spool=str(spool), keyd_user="root", database_url=audit_db.url)
    refuse_audit_inserts(audit_db.owner)
    _pass(s, audit_db.engine)
    alerts = queued(audit_db.engine)
    # The alarm does not wait for the audit database; the failure is alerted with it.
    assert alerts[0] == ("ops.keyd_share_refused", str(spool), "events=1")
    assert alerts[1][:2] == ("ops.check_failed", "keyd_events")
    assert re.fullmatch(r"audit append failed: \w+Error", alerts[1][2])
    assert len(alerts) == 2
    assert _audited(audit_db.engine) == []
    _pass(s, audit_db.engine)  # still failing: nothing mailed twice, nothing appended
    assert queued(audit_db.engine) == alerts
    state = StateDir(s.state_dir).load("check-keyd_events")
    assert state is not None
    assert "position" not in state  # never advanced past what is not in the chain

    with audit_db.owner.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_refuses")
    _pass(s, audit_db.engine)
    assert [kind for kind, *_ in _custody(audit_db.engine)] == [
        "shares_split",
        "share_delivered",
        "share_refused",
    ]
    assert queued(audit_db.engine) == alerts  # the alarm rang once
    _chain_ok(audit_db.engine, 3)
    _pass(s, audit_db.engine)
    assert len(_audited(audit_db.engine)) == 3
    state = StateDir(s.state_dir).load("check-keyd_events")
    assert state is not None
    assert state["position"]["offset"] == spool.stat().st_size
    assert "alerted" not in state
    assert state["routine"] == {"started": 1, "shares_split": 1, "share_delivered": 1}


NEEDLES = ("4111111111111111", "passphrase-hunter2", "0123456789abcdef" * 4, "1-abcd-ef01-2345")


@pytest.mark.parametrize(
    ("fields", "actor", "outcome"),
    [
        ({"uid": 0, "login": "olga", "threshold": 2, "count": 3}, "olga", "success"),
        ({"uid": 7, "actor": "root", "generation": 2, "mode": "file", "key_kind": "raw"}, "root", "success"),
        ({"uid": 1002, "reason": "wrong_share"}, "uid:1002", "failure"),
        ({"indices": "1,3", "threshold": 2}, "keyd", "success"),
        ({"reason": "a reason with spaces", "uid": 3}, "uid:3", "failure"),
    ],
    ids=["login", "actor", "uid-only", "nobody", "quoted"],
)
def test_a_custody_record_names_who_and_carries_identifiers_only(
    fields: dict[str, Value], actor: str, outcome: str
) -> None:
    kind = Event.SHARE_REFUSED if outcome == "failure" else Event.SHARES_SPLIT
    line = json.dumps({"ts": 1_795_000_000.25, "event": kind.value, **fields}).encode()
    record = keyd_events.read_record(line)
    assert record is not None
    name = keyd_events.line_id("dev=1 ino=2 off=0", 4, line)
    entry = keyd_events.custody_entry(name, kind, record)
    assert (entry.actor, entry.outcome, entry.resource) == (actor, outcome, "keyd")
    assert entry.detail.startswith(f"spool {name} {kind.value} keyd_at=2026-11-18T")
    assert ('"a reason with spaces"' in entry.detail) == ("reason" in fields and " " in str(fields["reason"]))
    for needle in NEEDLES:
        assert needle not in entry.detail


def test_a_spool_line_name_never_reads_as_a_card_number() -> None:
    # The audit writer masks card numbers: a name that masked would never match itself again.
    from webapp.redact import mask_pans

    for dev, ino, off in ((2049, 4111111, 11111111), (4111, 111111111, 1111)):
        name = keyd_events.line_id(f"dev={dev} ino={ino} off={off}", 1, b"x")
        assert mask_pans(name) == name
