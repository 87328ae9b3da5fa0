"""The suite runs from a checkout in any directory, also one no other user can enter (root's home, a
0700 `mktemp -d`; see README). Code a test runs as another uid therefore never comes from the
checkout: not its sources, not its .venv, not as working directory. It runs from the installed copy
(tests.support.install_for_others, fixture python_for_others) instead.

Checked two ways: on the source of every test (a subprocess that switches uid must not name the
checkout), and on the copy itself (as nobody, from /, it imports the project and its libraries).
"""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import PACKAGES, ROOT, _readable_copy, need_binary, need_root

NOBODY = 65534
# Programs and flags that run their command as another user.
SWITCHERS = {"setpriv", "runuser", "su", "sudo", "setuidgid", "chpst", "gosu", "nsenter"}
SWITCH_FLAGS = ("--reuid", "--ruid", "--euid", "--setuid")
# subprocess keywords that switch the child's identity.
SWITCH_KEYWORDS = {"user", "group", "extra_groups", "preexec_fn"}
# In-process switches: a function calling one runs whatever it launches as another uid.
OS_SWITCHES = {"setuid", "seteuid", "setreuid", "setresuid"}
LAUNCHERS = {"run", "Popen", "call", "check_call", "check_output"}
# Names that hold the checkout's path; assignments from them (ROOT / "x", ...) are followed.
CHECKOUT_NAMES = {"ROOT", "REPO"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_launch(call: ast.Call) -> bool:
    name = _dotted(call.func)
    return (
        name in {f"subprocess.{n}" for n in LAUNCHERS}
        or name == "Popen"
        or name.startswith(("os.exec", "os.spawn", "os.posix_spawn"))
    )


def _switches(call: ast.Call) -> bool:
    if any(k.arg in SWITCH_KEYWORDS for k in call.keywords):
        return True
    for node in ast.walk(call):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            word = node.value.rsplit("/", 1)[-1]
            if word in SWITCHERS or node.value.startswith(SWITCH_FLAGS):
                return True
        elif isinstance(node, ast.Name) and node.id in SWITCHERS:
            return True
    return False


def _mentions_checkout(tree: ast.AST, names: set[str]) -> bool:
    for node in ast.walk(tree):
        if _dotted(node) == "sys.executable" or (isinstance(node, ast.Name) and node.id in names):
            return True
        if isinstance(node, ast.Name) and node.id == "__file__":
            return True
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _relative_venv(node.value):
            return True
    return False


def _relative_venv(text: str) -> bool:
    """A path word with ".venv" in it that is not absolute: it resolves against the checkout. An
    absolute one does not name it (the checkout's own absolute paths come from ROOT and its kin): an
    installed server's "/opt/strongroom/.venv/bin/python" in a documented command is not checkout code."""
    return any(".venv" in word and not word.startswith("/") for word in re.findall(r"[^\s\"'\[\],=]+", text))


def _checkout_names(tree: ast.AST) -> set[str]:
    """ROOT, REPO and every name assigned (anywhere in the module) from an expression naming them."""
    names = set(CHECKOUT_NAMES)
    assigns = [n for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None]
    grew = True
    while grew:
        grew = False
        for a in assigns:
            targets = a.targets if isinstance(a, ast.Assign) else [a.target]
            assert a.value is not None
            if not _mentions_checkout(a.value, names):
                continue
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and n.id not in names:
                        names.add(n.id)
                        grew = True
    return names


def foreign_launches_from_checkout(source: str) -> list[int]:
    """Line numbers of launches that run as another uid and name the checkout (its path, its python,
    a name derived from them)."""
    tree = ast.parse(source)
    names = _checkout_names(tree)
    switching_functions = [
        f
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(
            isinstance(c, ast.Call) and _dotted(c.func) in {f"os.{s}" for s in OS_SWITCHES}
            for c in ast.walk(f)
        )
    ]
    in_switching = {id(c) for f in switching_functions for c in ast.walk(f)}
    return sorted(
        call.lineno
        for call in ast.walk(tree)
        if isinstance(call, ast.Call)
        and _is_launch(call)
        and (_switches(call) or id(call) in in_switching)
        and _mentions_checkout(call, names)
    )


def test_no_test_runs_checkout_code_as_another_user() -> None:
    sources = sorted((ROOT / "tests").rglob("*.py"))
    assert len(sources) > 50, "too few test sources: the check would pass vacuously"
    found = {
        f"{p.relative_to(ROOT)}:{line}": "runs checkout code as another uid: use python_for_others"
        for p in sources
        for line in foreign_launches_from_checkout(p.read_text())
    }
    assert found == {}


FLAGGED = [
    pytest.param(
        "subprocess.run([setpriv, f'--reuid={NOBODY}', sys.executable, '-m', 'ops.watch'], cwd=ROOT)",
        id="setpriv-checkout-python-and-cwd",
    ),
    pytest.param(
        "subprocess.run(['setpriv', '--reuid=65534', python], cwd=ROOT)",
        id="setpriv-cwd-checkout",
    ),
    pytest.param(
        "subprocess.run(['/usr/sbin/runuser', '-u', 'nobody', '--', str(ROOT / '.venv/bin/python')])",
        id="runuser-venv-python",
    ),
    pytest.param("subprocess.Popen([sys.executable, '-m', 'x'], user='nobody')", id="user-keyword"),
    pytest.param("subprocess.run(['setpriv', '--reuid=1', '.venv/bin/python'])", id="relative-venv"),
    pytest.param("subprocess.run(argv, preexec_fn=drop, cwd=ROOT)", id="preexec-fn"),
    pytest.param(
        "PY = ROOT / '.venv/bin/python'\nBIN = PY\nsubprocess.run(['setpriv', '--reuid=1', str(BIN)])",
        id="name-derived-from-root",
    ),
    pytest.param(
        "def child():\n    os.setresuid(1, 1, 1)\n    os.execv(sys.executable, [sys.executable, '-m', 'x'])",
        id="fork-setuid-exec",
    ),
    pytest.param(
        "here = Path(__file__).parents[2]\nsubprocess.run(['su', 'nobody', '-c', 'python'], cwd=here)",
        id="su-file-derived-cwd",
    ),
]
PASSED = [
    pytest.param(
        "COMMAND = ['/opt/strongroom/.venv/bin/python', '-m', 'ca.crl_receive']\n"
        "ARGS = COMMAND[1:]\n"
        "subprocess.run(['setpriv', '--reuid=1', str(python_for_others), *ARGS], cwd='/')",
        id="an-installed-server-path-is-not-the-checkout",
    ),
    pytest.param(
        "subprocess.run([setpriv, '--reuid=65534', str(python_for_others), '-m', 'ops.watch'], cwd=work)",
        id="installed-copy",
    ),
    pytest.param("subprocess.run([sys.executable, '-m', 'keyd'], cwd=ROOT)", id="same-uid"),
    pytest.param("def child():\n    os.setuid(1)\n    client.status()", id="fork-setuid-no-launch"),
]


@pytest.mark.parametrize("source", FLAGGED)
def test_the_check_catches(source: str) -> None:
    assert foreign_launches_from_checkout(source) != []


@pytest.mark.parametrize("source", PASSED)
def test_the_check_passes(source: str) -> None:
    assert foreign_launches_from_checkout(source) == []


def test_the_installed_copy_serves_another_uid(python_for_others: Path) -> None:
    """As nobody, from /, with nothing of the checkout on its path: the project and its libraries
    import from the copy."""
    need_root()
    modules = [*PACKAGES, "ops.watch", "keyd.server", "pkcs11", "psutil", "flask", "sqlalchemy"]
    script = (
        "import importlib, json, sys\n"
        f"mods = {modules!r}\n"
        "print(json.dumps([sys.prefix] + [importlib.import_module(m).__file__ for m in mods]))\n"
    )
    proc = subprocess.run(
        [need_binary("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         str(python_for_others), "-c", script],
        cwd="/", env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    prefix, *files = json.loads(proc.stdout)
    copy = python_for_others.parent.parent
    assert Path(prefix) == copy
    assert [f for f in files if not Path(f).is_relative_to(copy)] == []
    assert [f for f in files if Path(f).is_relative_to(ROOT)] == []


@pytest.mark.parametrize(
    ("mode", "linked"),
    [
        (0o644, True),  # others may read it already: a hard link, no bytes copied
        (0o755, True),
        (0o600, False),  # a clone made under umask 077: copied, and the copy made readable
        (0o700, False),
    ],
)
def test_copies_are_readable_by_others(tmp_path: Path, mode: int, linked: bool) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_text("x = 1\n")
    src.chmod(mode)
    _readable_copy(str(src), str(dst))
    assert dst.read_text() == "x = 1\n"
    assert os.path.samefile(src, dst) is linked
    assert dst.stat().st_mode & stat.S_IROTH
    assert stat.S_IMODE(src.stat().st_mode) == mode  # the checkout's own file is never changed
