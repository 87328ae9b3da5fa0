"""keyd's event spool read by the watchdog: a REAL keyd produces the events (a wrong key through its
drop file, a refused drop file, a peer with a uid keyd does not allow, an exhausted budget), the
watchdog reads its spool, and the outbox holds one bare alert per kind with counts only. Then the
hostile spools: symlink, FIFO, foreign owner, garbage lines, a line without end."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from keyd.client import Context, KeydClient
from keyd.errors import Forbidden, QuotaExceeded
from keyd.events import ALERTS, Event
from ops.checks import keyd_events
from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.keyd.conftest import NOBODY, Keyd, raw_key, wait_for
from tests.ops.conftest import queued
from tests.support import need_root

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
