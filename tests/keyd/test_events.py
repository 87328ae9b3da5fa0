"""Events: named, secret-free, to the spool and to syslog (or stderr when there is no syslog)."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest

from keyd.events import Event, FanoutSink, MemorySink, SpoolSink, SyslogSink


def test_spool_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = SpoolSink(path, clock=lambda: 1234.5)
    sink.emit(Event.UNSEALED, key_version=3)
    sink.emit(Event.PEER_REFUSED, uid=65534, pid=77)
    sink.close()
    # Reopening appends; it never truncates what the watchdog has not read yet.
    SpoolSink(path, clock=lambda: 1235.0).emit(Event.SEALED, why="SIGTERM")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [
        {"ts": 1234.5, "event": "unsealed", "key_version": 3},
        {"ts": 1234.5, "event": "peer_refused", "uid": 65534, "pid": 77},
        {"ts": 1235.0, "event": "sealed", "why": "SIGTERM"},
    ]
    assert oct(os.stat(path).st_mode & 0o777) == "0o640"


@pytest.mark.parametrize("value", [b"bytes", bytearray(b"key"), 1.5, None, ["x"], True])
def test_only_identifiers_travel(tmp_path: Path, value: object) -> None:
    with pytest.raises(TypeError):
        SpoolSink(tmp_path / "e.jsonl").emit(Event.WRONG_KEY, detail=value)  # type: ignore[arg-type]


def test_a_hostile_actor_cannot_forge_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    SpoolSink(path).emit(Event.BUDGET_EXCEEDED, actor='x"}\n{"event":"unsealed"}')
    assert len(path.read_text().splitlines()) == 1


def test_syslog_sink_writes_to_a_syslog_socket(tmp_path: Path) -> None:
    address = tmp_path / "log"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(address))
    server.settimeout(5)
    try:
        SyslogSink(address=str(address)).emit(Event.INTEGRITY_FAILURE, actor="alice", items=2)
        message = server.recv(4096).decode()
    finally:
        server.close()
    assert "event=integrity_failure" in message
    assert 'actor="alice"' in message
    assert message.startswith("<84>")  # authpriv.warning: an alert


def test_syslog_sink_falls_back_to_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SyslogSink(address=str(tmp_path / "no-such-socket")).emit(Event.STARTED, mode="file")
    assert "event=started" in capsys.readouterr().err


def test_fanout_survives_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def emit(self, event: Event, **fields: str | int) -> None:
            raise OSError("disk full")

    memory = MemorySink()
    with caplog.at_level(logging.ERROR, logger="keyd"):
        FanoutSink(Broken(), memory).emit(Event.SEALED, why="test")
    assert memory.names() == [Event.SEALED]
    assert "disk full" in caplog.text
