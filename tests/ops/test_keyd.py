"""The keyd check against a real keyd: unsealed is quiet, sealed alerts, unreachable alerts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from ops.runner import run_pass
from ops.settings import Settings
from ops.state import StateDir
from tests.keyd.conftest import GENEROUS, make_keyd, raw_key, traversable_tmp, unsealed_keyd
from tests.ops.conftest import queued

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _pass(settings: Settings, engine: sa.Engine) -> None:
    run_pass(settings, state=StateDir(settings.state_dir), engine=engine, now=NOW, only=("keyd",))


def test_unsealed_is_quiet_and_a_stopped_keyd_is_unreachable(
    make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    with unsealed_keyd() as running:
        s = make_settings(keyd_socket=str(running.keyd.socket))
        _pass(s, engine)
        assert queued(engine) == []
        running.keyd.kill()
        _pass(s, engine)
        _pass(s, engine)  # still down: alerted once
    assert queued(engine) == [("ops.keyd_unreachable", str(running.keyd.socket), "Unavailable")]


def test_sealed_alerts(make_settings: Callable[..., Settings], engine: sa.Engine) -> None:
    with traversable_tmp() as tmp:
        k = make_keyd(tmp / "k", extra=GENEROUS)
        k.init(raw_key(), "--key-kind", "raw")
        k.start()
        try:
            s = make_settings(keyd_socket=str(k.socket))
            _pass(s, engine)
        finally:
            k.kill()
    assert queued(engine) == [("ops.keyd_sealed", str(k.socket), "-")]


def test_no_socket_at_all_is_unreachable(
    tmp_path: Path, make_settings: Callable[..., Settings], engine: sa.Engine
) -> None:
    s = make_settings(keyd_socket=str(tmp_path / "nothing.sock"))
    _pass(s, engine)
    assert [e for e, _, _ in queued(engine)] == ["ops.keyd_unreachable"]
