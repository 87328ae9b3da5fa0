"""Fixtures for the CA tool: a fresh CA per test, a movable clock, a recording fake binder."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ca.binding import FakeBinder
from ca.cli import Deps, cli

# Near the real time, so openssl and the ssl module (which use the system clock) agree with the CA;
# tests that move the clock pass -attime to openssl.
START = datetime.now(UTC).replace(microsecond=0)
# Tests lower the PKCS#12 KDF cost to keep the suite fast; test_pki checks the production default.
TEST_KDF_ROUNDS = 2048


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class CA:
    """A CA directory plus a way to run `python -m ca` against it in-process."""

    dir: Path
    work: Path  # where bundles and server keys are written
    root_pass: Path
    issuing_pass: Path
    clock: Clock
    binder: FakeBinder

    def run(self, *args: str, input: str | None = None, passphrase: bool = True) -> Result:
        opts = ["--ca-dir", str(self.dir)]
        if passphrase:
            opts += ["--passphrase-file", str(self.issuing_pass)]
        runner = CliRunner()
        cwd = os.getcwd()
        os.chdir(self.work)
        try:
            return runner.invoke(
                cli,
                [*opts, *args],
                input=input,
                obj=Deps(clock=self.clock, binder=self.binder),
                catch_exceptions=False,
            )
        finally:
            os.chdir(cwd)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self.run(*args, input=input)
        assert result.exit_code == 0, result.output
        return result

    def issue(self, name: str, *extra: str) -> tuple[Path, str, str]:
        """Issue an employee bundle; return (bundle path, generated password, serial)."""
        out = self.work / f"{name}-{len(list(self.work.glob('*.p12')))}.p12"
        result = self.ok("issue", name, "--out", str(out), *extra)
        return out, password_of(result.output), serial_of(result.output)


def password_of(output: str) -> str:
    m = re.search(r"bundle password \(shown ONCE.*\): (\S+)", output)
    assert m, output
    return m.group(1)


def serial_of(output: str) -> str:
    m = re.search(r"serial ([0-9a-f]+)", output)
    assert m, output
    return m.group(1)


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


ROOT_PASSPHRASE = "orbit-walnut-cascade-ferry-31"
ISSUING_PASSPHRASE = "lantern-quartz-meadow-piano-74"


def set_config(ca_dir: Path, **values: object) -> None:
    """Rewrite settings in config.toml (TOML scalars or lists of strings only)."""
    path = ca_dir / "config.toml"
    text = path.read_text()
    for key, value in values.items():
        if isinstance(value, bool):
            rendered = "true" if value else "false"
        elif isinstance(value, list):
            rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]"
        else:
            rendered = str(value)
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {rendered}", text)
        assert n == 1, key
    path.write_text(text)


@pytest.fixture
def make_ca(tmp_path: Path) -> Callable[..., CA]:
    def make(*, bind: bool = True, **config: object) -> CA:
        work = tmp_path / "work"
        work.mkdir(mode=0o700)
        secrets = tmp_path / "secrets"
        secrets.mkdir(mode=0o700)
        ca = CA(
            dir=tmp_path / "ca",
            work=work,
            root_pass=write_secret(secrets / "root.pass", ROOT_PASSPHRASE),
            issuing_pass=write_secret(secrets / "issuing.pass", ISSUING_PASSPHRASE),
            clock=Clock(),
            binder=FakeBinder(),
        )
        result = ca.run("--root-passphrase-file", str(ca.root_pass), "init", *([] if bind else ["--no-bind"]))
        assert result.exit_code == 0, result.output
        set_config(ca.dir, **{"pkcs12_kdf_rounds": TEST_KDF_ROUNDS, "syslog": False, **config})
        return ca

    return make


@pytest.fixture
def ca(make_ca: Callable[..., CA]) -> CA:
    return make_ca()


def snapshot(ca_dir: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and directory under the CA dir with its mode and content, except the ops log."""
    snap: dict[str, tuple[int, bytes]] = {}
    for path in sorted(ca_dir.rglob("*")):
        rel = str(path.relative_to(ca_dir))
        if rel == "ops.log":
            continue
        snap[rel] = (path.stat().st_mode, b"" if path.is_dir() else path.read_bytes())
    return snap
