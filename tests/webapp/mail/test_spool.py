"""Alerts raised while the database is unusable take the spool (webapp/mail/spool.py) and reach the
admins without it: through the real app, a really stopped MariaDB or an SQLite file made unopenable,
and a real SMTP server (aiosmtpd on loopback)."""

from __future__ import annotations

import gc
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask

from tests.support import free_port
from tests.webapp.conftest import Person, client_for, get, login
from tests.webapp.mail.test_delivery import count_in, mail_config, send
from tests.webapp.smtpsink import Sink, smtp_server
from webapp.clock import FakeClock
from webapp.mail import spool as spool_module
from webapp.mail.spool import Spool, spool_path

NOW = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


@contextmanager
def database_unusable(app: Flask, db_url: str, request: pytest.FixtureRequest) -> Iterator[None]:
    """MariaDB: the server really stopped. SQLite: the database file replaced by a directory."""
    engine = app.extensions["strongroom"].engine
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        hidden = path.parent.parent / (path.parent.name + "-away")
        engine.dispose()
        shutil.move(path.parent, hidden)
        os.makedirs(path.parent / path.name)
        restore: Callable[[], object] = lambda: (shutil.rmtree(path.parent), shutil.move(hidden, path.parent))  # noqa: E731
    else:
        server = request.getfixturevalue("maria_backend").server
        server.stop()
        restore = server.start
    try:
        yield
    finally:
        restore()
        with warnings.catch_warnings():  # PyMySQL's leaked sockets (see test_failures.py)
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.fixture
def spool_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Outside tmp_path: the SQLite outage moves tmp_path (the database's directory) away.
    return tmp_path_factory.mktemp("spool") / "alert-spool"


@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_alerts_raised_while_the_database_is_down_reach_the_admins(
    make_app: Callable[..., Flask],
    people: dict[str, Person],
    db_url: str,
    request: pytest.FixtureRequest,
    spool_dir: Path,
) -> None:
    sink = Sink()
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port), ALERT_SPOOL=str(spool_dir))
        client = client_for(app, people["alice"].cert)
        assert login(client, "alice", people["alice"].password).status_code == 302
        with database_unusable(app, db_url, request):
            for _ in range(40):
                r = get(client, "/")
                assert r.status_code == 503
            files = sorted(os.listdir(spool_dir))
            assert len(files) == 1, files  # coalesced: one worker, one name, one window
            assert oct(os.stat(spool_dir).st_mode & 0o777) == "0o700"
            code, output = send(app)  # the database is still down
            assert code == 1
            assert "database error" in output
            assert "spool: sent 40 alert(s)" in output
        (mail,) = sink.messages
        body = mail.message.get_content()
        assert mail.message["Subject"] == "Strongroom: database unavailable (40 events)"
        assert count_in(body) == 40
        assert "alice" not in mail.raw.decode()
        assert "10.0.0.5" not in mail.raw.decode()
        assert os.listdir(spool_dir) == []  # sent, removed
        assert send(app)[0] == 0  # the database is back: the outbox's own alerts (the setup's)
        subjects = [m.message["Subject"] for m in sink.messages[1:]]
        assert not any("database" in s for s in subjects), subjects  # nothing is sent twice


def test_spooled_alerts_wait_while_the_mail_server_is_down(
    make_app: Callable[..., Flask], clock: FakeClock, spool_dir: Path
) -> None:
    port = free_port()
    app = make_app(**mail_config(port), ALERT_SPOOL=str(spool_dir))
    spool = Spool(spool_dir)
    assert spool.add("error.db_unavailable", now=clock.now())
    code, output = send(app)
    assert code == 1
    assert "spooled error.db_unavailable: ConnectionRefusedError" in output
    assert len(os.listdir(spool_dir)) == 1  # kept for the next pass
    sink = Sink()
    with smtp_server(sink, port=port):
        assert send(app)[0] == 0
    assert [m.message["Subject"] for m in sink.messages] == ["Strongroom: database unavailable"]


def test_the_spool_is_bounded_in_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "MAX_FILES", 5)
    spool = Spool(tmp_path / "s")
    added = [spool.add("error.db_unavailable", now=NOW + timedelta(minutes=10 * i)) for i in range(8)]
    assert added == [True] * 5 + [False] * 3
    assert len(os.listdir(tmp_path / "s")) == 5
    # An existing file still counts up: a full spool keeps counting what it already holds.
    assert spool.add("error.db_unavailable", now=NOW + timedelta(minutes=1))
    (entry,) = spool.collect()
    assert (entry.count, entry.first, entry.last) == (6, NOW, NOW + timedelta(minutes=40))


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("error.db_unavailable.1795600800.42", b"v1 3 1795600800 1795600900\nBcc: x@example.com\n"),
        ("error.db_unavailable.1795600800.42", b"v1 0 1795600800 1795600900\n"),
        ("error.db_unavailable.1795600800.42", b"v1 3 1795600900 1795600800\n"),  # last before first
        ("error.db_unavailable.1795600800.42", b"v1 4111111111111111 1 2\n"),
        ("error.db_unavailable.1795600800.42", b"v1 3 1795600800 1795600900\n" + b"x" * 200),
        ("error.4111111111111111.1795600800.42", b"v1 3 1795600800 1795600900\n"),
        ("ERROR.DB.1795600800.42", b"v1 3 1795600800 1795600900\n"),
        ("something-else", b"v1 3 1795600800 1795600900\n"),
    ],
)
def test_a_file_that_does_not_parse_is_mailed_as_unrecognised(
    make_app: Callable[..., Flask], spool_dir: Path, name: str, body: bytes
) -> None:
    spool_dir.mkdir(mode=0o700)
    (spool_dir / name).write_bytes(body)
    sink = Sink()
    with smtp_server(sink) as port:
        app = make_app(**mail_config(port), ALERT_SPOOL=str(spool_dir))
        assert send(app)[0] == 0
    (mail,) = sink.messages
    assert mail.message["Subject"] == "Strongroom: an unrecognised event"
    raw = mail.raw.decode()
    assert "4111" not in raw
    assert mail.message["Bcc"] is None
    assert "Bcc" not in mail.message.get_content()
    assert os.listdir(spool_dir) == []


@pytest.mark.parametrize(
    "name", ["", "error", "error.db unavailable", "error.db_unavailable/../../x", "e.4111"]
)
def test_only_event_names_are_spooled(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="event names"):
        Spool(tmp_path).add(name, now=NOW)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("value", ["relative/spool", 42, ""])
def test_a_bad_spool_setting_stops_the_mailer(make_app: Callable[..., Flask], value: object) -> None:
    app = make_app(**mail_config(free_port()), ALERT_SPOOL=value)
    result = app.test_cli_runner().invoke(args=["mail", "send"])
    assert result.exit_code == 78
    assert "ALERT_SPOOL" in result.output


def test_the_default_spool_is_in_the_instance_folder(tmp_path: Path) -> None:
    assert spool_path({}, str(tmp_path)) == tmp_path / "alert-spool"
