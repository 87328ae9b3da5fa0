"""Fixtures for ops: a real SQLite database with the web app's schema (the outbox), a private state dir
and a settings builder."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ops.settings import Settings, parse
from tests.keyd.conftest import keyd_factory  # noqa: F401 - a real keyd for the keyd_events check
from webapp.db import migrate
from webapp.db.engine import make_engine
from webapp.db.tables import outbox

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def schema_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ops-db") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def db_url(tmp_path: Path, schema_template: Path) -> str:
    path = tmp_path / "strongroom.db"
    path.write_bytes(schema_template.read_bytes())
    return f"sqlite:///{path}"


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    e = make_engine(db_url)
    yield e
    e.dispose()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make_settings(state_dir: Path, db_url: str) -> Callable[..., Settings]:
    def build(**raw: Any) -> Settings:
        raw.setdefault("state_dir", str(state_dir))
        raw.setdefault("database_url", db_url)
        return parse(raw, environ={})

    return build


def queued(engine: sa.Engine) -> list[tuple[str, str, str]]:
    """(event, resource, detail) of every outbox row, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(outbox).order_by(outbox.c.id)).all()
    return [(r.event, r.resource, r.detail) for r in rows]


def mail_send(settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The real mailer, `flask --app webapp mail send` as a subprocess, configured by `settings` alone:
    no STRONGROOM_* variable of the environment running the tests leaks into it."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}, **settings}
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "webapp", "mail", "send"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
