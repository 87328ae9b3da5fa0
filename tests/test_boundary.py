"""The trust boundary, checked on the source: the web app may reach keyd only through its client.
And common/, shared by every package, depends on none of them."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# keyd.client is what the web app talks through; keyd.errors holds the exceptions it raises.
ALLOWED = {"keyd.client", "keyd.errors"}


def _keyd_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "keyd"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "keyd":
            if node.module == "keyd":
                found += [f"keyd.{a.name}" for a in node.names]
            else:
                found.append(node.module)
    return found


def test_webapp_imports_only_the_keyd_client() -> None:
    sources = sorted((ROOT / "webapp").rglob("*.py"))
    assert sources, "webapp/ has no Python sources: the check would pass vacuously"
    bad = {str(p.relative_to(ROOT)): m for p in sources for m in _keyd_imports(p) if m not in ALLOWED}
    assert bad == {}


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    sneaky = tmp_path / "sneaky.py"
    sneaky.write_text("from keyd import cipher\nimport keyd.keysource\nfrom keyd.client import KeydClient\n")
    assert _keyd_imports(sneaky) == ["keyd.cipher", "keyd.keysource", "keyd.client"]


def _imports(path: Path) -> list[str]:
    """Every module `path` imports absolutely (relative imports stay inside the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_common_imports_no_project_package() -> None:
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"common"}
    sources = sorted((ROOT / "common").rglob("*.py"))
    assert sources, "common/ has no Python sources: the check would pass vacuously"
    bad = {str(p.relative_to(ROOT)): m for p in sources for m in _imports(p) if m.split(".")[0] in ours}
    assert bad == {}


def test_common_atomic_needs_only_the_standard_library() -> None:
    # deploy/server imports it from the checkout with the system python, before any virtualenv.
    found = _imports(ROOT / "common" / "atomic.py")
    assert "os" in found
    assert [m for m in found if m.split(".")[0] not in sys.stdlib_module_names] == []


LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(where)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=where, capture_output=True, text=True, check=False, env=env
    )


def test_the_import_contracts_hold() -> None:
    run = _lint_imports(ROOT)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("keyd/leak.py", "import webapp\n", "keyd, the process that holds the key"),
        ("keyd/tool.py", "from ops import watch\n", "keyd, the process that holds the key"),
        ("common/leak.py", "import keyd\n", "common is the bottom layer"),
        ("webapp/leak.py", "from keyd import barrier\n", "the web app reaches keyd only through its client"),
        ("webapp/deep.py", "import keyd.keyring\n", "the web app reaches keyd only through its client"),
        ("webapp/tool.py", "import ops\n", "the web app runs no operator tool"),
    ],
)
def test_the_import_contracts_catch_a_planted_break(
    tmp_path: Path, module: str, source: str, contract: str
) -> None:
    """The same contracts (the real pyproject.toml) on a tree of empty packages with one bad import."""
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    for package in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
        "root_packages"
    ]:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name in ("keyd/client.py", "keyd/errors.py", "keyd/barrier.py", "keyd/keyring.py", "ops/watch.py"):
        (tmp_path / name).write_text("")
    (tmp_path / "webapp" / "fine.py").write_text("from keyd import client, errors\n")  # ignored on purpose
    assert _lint_imports(tmp_path).returncode == 0
    (tmp_path / module).write_text(source)
    run = _lint_imports(tmp_path)
    assert run.returncode == 1, run.stdout[-3000:]
    assert contract in run.stdout.split("Broken contracts")[-1].replace("\n", " ")
