"""A real gunicorn serving the app over TLS with required client certificates (a throwaway PKI and
a SQLite database with alice and a revoked mallory), for the TLS and browser tests."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.pki import TestCA
from tests.support import component_missing, free_port, stop_process
from tests.webapp.conftest import CHEAP_ARGON2, PASSWORDS, SECRET
from webapp import create_app
from webapp.db import migrate

ROOT = Path(__file__).resolve().parents[2]
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"


@dataclass
class Server:
    port: int
    ca: TestCA
    ca_file: Path
    alice: tuple[Path, Path]
    mallory: tuple[Path, Path]
    stranger: tuple[Path, Path]
    db_url: str

    def context(self, client: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if client:
            ctx.load_cert_chain(str(client[0]), str(client[1]))
        return ctx

    def connection(self, client: tuple[Path, Path] | None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(client), timeout=10)


@contextmanager
def serve(d: Path, extra_env: dict[str, str] | None = None) -> Iterator[Server]:
    if not GUNICORN.exists():
        component_missing("gunicorn is not installed in .venv")
    ca = TestCA("Gunicorn Test CA")
    (d / "ca.pem").write_bytes(ca.pem)
    server_cert = ca.issue("localhost", server=True)
    alice, mallory, stranger = ca.issue("alice"), ca.issue("mallory"), ca.issue("stranger")
    ca.revoke(mallory)
    (d / "crl.pem").write_bytes(ca.crl_pem())
    paths = {
        name: cert.write(d, name)
        for name, cert in {
            "server": server_cert,
            "alice": alice,
            "mallory": mallory,
            "stranger": stranger,
        }.items()
    }
    env = {
        "STRONGROOM_SECRET_KEY": SECRET,
        "STRONGROOM_DATABASE_URL": f"sqlite:///{d / 'strongroom.db'}",
        "STRONGROOM_INSTANCE_PATH": str(d / "instance"),
        "STRONGROOM_WORKING_DAYS": "mon-sun",
        "STRONGROOM_WORKING_HOURS": "00:00-23:59",
        **{f"STRONGROOM_{k}": str(v) for k, v in CHEAP_ARGON2.items()},
        **(extra_env or {}),
    }
    app = create_app({k.removeprefix("STRONGROOM_"): _typed(v) for k, v in env.items()})
    migrate.upgrade(app.extensions["strongroom"].engine)
    runner = app.test_cli_runner()
    for name in ("alice", "mallory"):
        added = runner.invoke(
            args=["users", "add", name, "--role", "clerk", "--password-stdin"],
            input=PASSWORDS.get(name, PASSWORDS["bob"]) + "\n",
        )
        bound = runner.invoke(args=["certs", "bind", name, str(paths[name][0])])
        if added.exit_code or bound.exit_code:
            raise RuntimeError(added.output + bound.output)
    app.extensions["strongroom"].engine.dispose()
    port = free_port()
    env |= {
        "STRONGROOM_TLS_CERT": str(paths["server"][0]),
        "STRONGROOM_TLS_KEY": str(paths["server"][1]),
        "STRONGROOM_CLIENT_CA": str(d / "ca.pem"),
        "STRONGROOM_CRL": str(d / "crl.pem"),
        "STRONGROOM_BIND": f"127.0.0.1:{port}",
        "STRONGROOM_WORKERS": "2",
    }
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")} | env
    log = (d / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [str(GUNICORN), "-c", str(ROOT / "webapp" / "gunicorn_conf.py")],
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError("gunicorn exited: " + (d / "gunicorn.log").read_text())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield Server(
            port,
            ca,
            d / "ca.pem",
            paths["alice"],
            paths["mallory"],
            paths["stranger"],
            env["STRONGROOM_DATABASE_URL"],
        )
    finally:
        stop_process(proc, grace=20)
        log.close()


def _typed(value: str) -> object:
    return int(value) if value.isdigit() else value
