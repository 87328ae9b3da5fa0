"""Every command line of the project: `--help` works with no settings and no environment, and errors are one
line that says what to do next.

One row per entry point. The subcommands of a click command are discovered from the click group itself
(in a subprocess with the same empty environment), so a new command is covered without touching this
file; `test_every_entry_point_is_in_the_table` finds the entry points themselves (every `__main__.py`
and `if __name__ == "__main__"` of the project), so a new one cannot be forgotten either.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Nothing but a PATH with the venv's python first: no STRONGROOM_* settings, no HOME, no locale.
EMPTY_ENV = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}


@dataclass(frozen=True)
class EntryPoint:
    id: str
    argv: tuple[str, ...]  # what runs it, before --help
    # "module:attribute" of its click command, to discover its subcommands; "flask" for the web app's
    # `flask --app webapp` (its commands come with the app); None for a command without subcommands.
    click: str | None
    source: str  # the file that makes it an entry point (see test_every_entry_point_is_in_the_table)


def _m(module: str, click: str | None, source: str) -> EntryPoint:
    return EntryPoint(module, (sys.executable, "-m", module), click, source)


ENTRY_POINTS = [
    _m("ca", "ca.cli:cli", "ca/__main__.py"),
    _m("keyd", "keyd.cli:cli", "keyd/__main__.py"),
    _m("ca.crl_receive", None, "ca/crl_receive.py"),  # a web node's forced command: no subcommands
    _m("apache.private", "apache.private:cli", "apache/private.py"),
    _m("backup", "backup.cli:main", "backup/__main__.py"),
    _m("ops", "ops.watch:cli", "ops/__main__.py"),
    _m("ops.watch", "ops.watch:cli", "ops/watch.py"),
    _m("ops.remote_copy", "ops.remote_copy:cli", "ops/remote_copy.py"),
    _m("ops.rsyslog", "ops.rsyslog.__main__:cli", "ops/rsyslog/__main__.py"),
    _m("ops.postfix", "ops.postfix.__main__:cli", "ops/postfix/__main__.py"),
    _m("hardening.aide", "hardening.aide.__main__:main", "hardening/aide/__main__.py"),
    _m("hardening.dns", "hardening.dns.__main__:main", "hardening/dns/__main__.py"),
    _m("hardening.firewall", "hardening.firewall.__main__:main", "hardening/firewall/__main__.py"),
    _m("hardening.kernel", "hardening.kernel.__main__:main", "hardening/kernel/__main__.py"),
    _m("hardening.mariadb", "hardening.mariadb.__main__:main", "hardening/mariadb/__main__.py"),
    _m("hardening.ports", "hardening.ports:main", "hardening/ports.py"),
    _m("hardening.ssh", "hardening.ssh.__main__:main", "hardening/ssh/__main__.py"),
    _m("hardening.vpn", "hardening.vpn.__main__:main", "hardening/vpn/__main__.py"),
    _m("deploy.server", None, "deploy/server/__main__.py"),  # strongroom-install: argparse, no subcommands
    # sshd's ForceCommand, run as installed: the system's python3 in isolated mode, standard library only.
    EntryPoint(
        "ssh-session-hook",
        ("/usr/bin/python3", "-I", str(ROOT / "hardening/ssh/session_hook.py")),
        None,
        "hardening/ssh/session_hook.py",
    ),
    EntryPoint("flask", (sys.executable, "-m", "flask", "--app", "webapp"), "flask", "webapp"),
    # `make audit` and the advisory data's refresh.
    EntryPoint(
        "scripts/audit.py",
        (sys.executable, str(ROOT / "scripts/audit.py")),
        "scripts.audit:main",
        "scripts/audit.py",
    ),
    EntryPoint(
        "scripts/advisories.py",
        (sys.executable, str(ROOT / "scripts/advisories.py")),
        "scripts.advisories:cli",
        "scripts/advisories.py",
    ),
]

# Files with a `__main__` that are not commands a person runs, and why.
NOT_COMMANDS = {
    "apache/logfilter.py": "Apache's piped logger: its one argument is the log file, set in the site config",
    "apache/crs_redact.py": "a generator run by hand when the CRS changes (apache/README.md)",
    "scripts/lock.py": "`make lock`'s helper: every option but --check goes to pip-compile",
    "scripts/demo_data.py": "`make run`'s helper (scripts/run-demo.sh): adds the demo's customers",
}
NOT_SCANNED = ("tests", "bench", "docs", ".venv", ".git", "var", "node_modules")

# Walks a click command's tree and prints every subcommand path as JSON: run in the empty environment.
_DISCOVER = """
import importlib, json, sys
import click

target = sys.argv[1]
if target == "flask":
    from flask.cli import ScriptInfo, cli as command

    info = ScriptInfo(app_import_path="webapp")
    ctx = click.Context(command, info_name="flask", obj=info)
    with ctx.scope(cleanup=False):  # as flask loads it: inside its command line (webapp/app.py)
        info.load_app()  # raises here, rather than flask listing only its own commands
else:
    module, attribute = target.split(":")
    command = getattr(importlib.import_module(module), attribute)
    ctx = click.Context(command, info_name="cli")


def walk(command, ctx, path):
    if not isinstance(command, click.Group):
        return []
    found = []
    for name in command.list_commands(ctx):
        sub = command.get_command(ctx, name)
        if sub is None or sub.hidden:
            continue
        found.append([*path, name])
        found += walk(sub, click.Context(sub, parent=ctx, info_name=name), [*path, name])
    return found


print(json.dumps(walk(command, ctx, [])))
"""


def _run(argv: tuple[str, ...] | list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        cwd=ROOT,
        env=EMPTY_ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_SECTION = re.compile(r"^(Options|Commands|Arguments|positional arguments|options):$", re.IGNORECASE)


def _help_problem(result: subprocess.CompletedProcess[str]) -> str | None:
    """None when `--help` answered as it should: exit 0, a usage line first, then a description."""
    if result.returncode != 0:
        return f"exit {result.returncode}: {(result.stderr or result.stdout).strip()[-600:]}"
    if result.stderr:
        return f"wrote to stderr: {result.stderr.strip()[-600:]}"
    lines = result.stdout.splitlines()
    if not lines or not re.match(r"^usage: \S", lines[0], re.IGNORECASE):
        return f"does not start with a usage line: {result.stdout[:200]!r}"
    rest = lines[1:]
    while rest and rest[0].strip() and rest[0][0].isspace():
        rest = rest[1:]  # the usage line wrapped
    first = next((line.strip() for line in rest if line.strip()), "")
    if not first or _SECTION.match(first):
        return f"no description after the usage line: {result.stdout[:300]!r}"
    return None


def _subcommands(entry: EntryPoint) -> list[list[str]]:
    if entry.click is None:
        return []
    found = _run([sys.executable, "-c", _DISCOVER, entry.click])
    assert found.returncode == 0, f"cannot list {entry.id}'s commands without settings:\n{found.stderr}"
    paths: list[list[str]] = json.loads(found.stdout)
    return paths


@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=[e.id for e in ENTRY_POINTS])
def test_help_works_everywhere_without_settings(entry: EntryPoint) -> None:
    paths = [[], *_subcommands(entry)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda path: _run([*entry.argv, *path, "--help"]), paths))
    problems = {
        " ".join([entry.id, *path, "--help"]): problem
        for path, result in zip(paths, results, strict=True)
        if (problem := _help_problem(result)) is not None
    }
    assert not problems, "\n".join(f"{cmd}: {problem}" for cmd, problem in problems.items())
    if entry.click == "flask":
        assert ["health"] in paths, "the app's own commands were not found"


def test_the_help_checker_refuses_what_it_should() -> None:
    def done(stdout: str, stderr: str = "", code: int = 0) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], code, stdout, stderr)

    good = "Usage: x [OPTIONS]\n\n  Does a thing.\n\nOptions:\n  --help  Show this message and exit.\n"
    assert _help_problem(done(good)) is None
    wrapped = "usage: x [-h] --settings SETTINGS\n                 [--check]\n\nInstalls it.\n\noptions:\n"
    assert _help_problem(done(wrapped)) is None
    assert _help_problem(done("Usage: x [OPTIONS]\n\nOptions:\n  --help  Show this.\n")) is not None
    assert _help_problem(done("# sshd_config\nPort 22\n")) is not None
    assert _help_problem(done(good, code=2)) is not None
    assert _help_problem(done(good, stderr="Traceback (most recent call last):\n")) is not None


def _scanned_entry_points() -> set[str]:
    found = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in NOT_SCANNED or rel.parts[0].startswith("."):
            continue
        if path.name == "__main__.py" or 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"):
            found.add(str(rel))
    return found


def test_every_entry_point_is_in_the_table() -> None:
    listed = {entry.source for entry in ENTRY_POINTS} | set(NOT_COMMANDS)
    assert _scanned_entry_points() - listed == set(), "add the new command line to ENTRY_POINTS"
    assert listed - _scanned_entry_points() - {"webapp"} == set(), "an entry point in the table has gone"


@dataclass(frozen=True)
class Refusal:
    id: str
    args: tuple[str, ...]  # after `python -m`
    exit_code: int
    says: str  # a fragment of the one line: what to do next


REFUSALS = [
    Refusal(
        "ca without a CA directory", ("ca", "issue", "alice"), 2, "pass --ca-dir DIR or set STRONGROOM_CA_DIR"
    ),
    Refusal(
        "keyd status, nothing listening",
        ("keyd", "status", "--socket", "/nonexistent/keyd.sock"),
        4,
        "is it running, and are --socket/--config right?",
    ),
    Refusal(
        "keyd with a bad budget",
        ("keyd", "status", "--budget", "employee.week=3"),
        2,
        "fix the flag or the config file",
    ),
    Refusal(
        "keyd unseal, nothing listening",
        ("keyd", "unseal", "--stdin", "--socket", "/nonexistent/keyd.sock"),
        4,
        "docs/runbook.md",
    ),
    Refusal(
        "watchdog without its settings file",
        ("ops.watch", "--config", "/nonexistent/watch.toml", "run"),
        1,
        "fix the settings file",
    ),
    Refusal("firewall without its address file", ("hardening.firewall", "check", "/nonexistent.toml"), 1, ""),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.id for c in REFUSALS])
def test_an_error_is_one_line_with_the_next_step(case: Refusal) -> None:
    result = _run([sys.executable, "-m", *case.args], timeout=60)
    assert result.returncode == case.exit_code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert case.says in lines[0]
