"""The trust boundary, checked on the source: the web app may reach keyd only through its client.
And common/, shared by every package, depends on none of them."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

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
